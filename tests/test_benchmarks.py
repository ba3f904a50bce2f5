"""The peer benchmarks on a handful of rows: JSON shape, agreement, and warm-up kept out of the timed rounds."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture
def timing():
    """benchmarks._timing, with this process's thread settings restored afterwards."""
    env = {v: os.environ.get(v) for v in THREAD_VARS}
    threads = torch.get_num_threads()
    from benchmarks import _timing
    yield _timing
    while _timing._LIMITS:
        _timing._LIMITS.pop().restore_original_limits()
    torch.set_num_threads(threads)
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def run_json(main, argv, capsys) -> dict:
    main(argv)
    return json.loads(capsys.readouterr().out)


def check_timings(out: dict, contestants: set[str]) -> None:
    assert list(out)[:2] == ["ratios", "absolute"] and list(out)[-1] == "machine"
    for name in contestants:
        t = out["absolute"][name]
        assert t["cpu_s_median"] > 0 and t["wall_s_median"] > 0
        assert t["stamps_per_cpu_s"] > 0 and t["stamps_per_wall_s"] > 0
        assert set(out["first_call"][name]) == {"setup", "first_call_all_rows"}
        assert {"cpu_s", "wall_s"} <= set(out["first_call"][name]["first_call_all_rows"])
    for r in out["ratios"].values():
        assert isinstance(r, str) or (r["cpu"] > 0 and r["wall"] > 0)
    assert out["machine"]["threads"]["torch_threads"] == 1


def test_injection_benchmark(timing, capsys):
    from benchmarks import injection_throughput

    out = run_json(injection_throughput.main, ["--n", "8", "--rounds", "1"], capsys)
    check_timings(out, {"engine", "engine_tile8", "lenstronomy_uniform", "lenstronomy_adaptive", "caustics"})
    assert {"engine_vs_lenstronomy_uniform", "engine_vs_lenstronomy_adaptive", "engine_vs_caustics"} <= set(out["ratios"])
    agreement = out["agreement_max_abs_diff_over_peak"]
    assert agreement["engine_vs_lenstronomy_uniform"] < 1e-3
    assert agreement["engine_vs_lenstronomy_adaptive"] < 1e-3
    assert agreement["lenstronomy_adaptive_vs_uniform"] < 1e-4
    # caustics and lenstronomy: the same uniform sampling and pixel kernels, so the same image to float32 rounding
    assert agreement["caustics_vs_lenstronomy_uniform"] < 1e-4
    assert agreement["engine_vs_caustics"] < 1e-3
    assert out["machine"]["packages"]["caustics"] != "not installed"


def test_survey_benchmark(timing, capsys):
    from benchmarks import survey_throughput

    out = run_json(survey_throughput.main, ["--n-lrg", "4", "--n-full", "2", "--rounds", "1"], capsys)
    check_timings(out, {"lrg_ours", "lrg_lenstronomy", "lrg_lenstronomy_centre32", "survey_full"})
    agreement = out["agreement_max_abs_diff_over_peak"]
    assert agreement["lrg_ours_vs_lenstronomy_centre32"] < 1e-8   # the same sampling: the same image
    assert agreement["lrg_ours_vs_lenstronomy"] < 0.1             # uniform 4x: only the cusp differs


def test_first_call_is_timed_apart(timing):
    """A slow first call (imports, caches) shows in first_call, not in the medians of the rounds."""
    calls = []

    def contestant():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)

    _, first = timing.first_call(contestant)
    rounds = timing.interleaved({"c": (1, contestant), "d": (1, lambda: None)}, rounds=3)
    assert first["wall_s"] >= 0.3
    assert rounds["c"]["wall_s_median"] < 0.1 and rounds["c"]["rounds"] == 3 and len(calls) == 4

"""Timing shared by the peer benchmarks: one thread, warm-up apart, medians of interleaved rounds.

Import this module before numpy/torch: it sets the BLAS/OpenMP thread counts
through the environment, and ``single_thread()`` then pins torch and (with
threadpoolctl) every loaded BLAS/OpenMP pool to one thread.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from importlib import metadata

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_LIMITS = []   # keeps threadpoolctl's limiter alive for the life of the process


def single_thread() -> dict:
    """Pin torch and the numpy/scipy thread pools to one thread; what was set, for the report."""
    import torch

    torch.set_num_threads(1)
    settings = {"torch_threads": torch.get_num_threads(),
                "env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        settings["threadpoolctl"] = "not installed (environment variables only)"
        return settings
    _LIMITS.append(threadpool_limits(limits=1))
    settings["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads")} for p in threadpool_info()]
    return settings


def clock() -> tuple[float, float]:
    """(process CPU seconds, wall seconds) now."""
    return time.process_time(), time.perf_counter()


def first_call(fn) -> tuple[object, dict]:
    """Run ``fn()`` once (imports, set-up, first-call caches) and time it apart from the timed rounds."""
    cpu0, wall0 = clock()
    result = fn()
    cpu1, wall1 = clock()
    return result, {"cpu_s": round(cpu1 - cpu0, 4), "wall_s": round(wall1 - wall0, 4)}


def interleaved(contestants: dict, rounds: int) -> dict:
    """Medians of ``rounds`` interleaved rounds; ``contestants`` maps name -> (stamps per call, fn).

    Every round runs each contestant once, in an order rotated by one each
    round, so all of them see the same machine load.  Per contestant: median CPU
    and wall seconds per call and the stamps per CPU second / per wall second.
    """
    names = list(contestants)
    cpu = {name: [] for name in names}
    wall = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cpu0, wall0 = clock()
            contestants[name][1]()
            cpu1, wall1 = clock()
            cpu[name].append(cpu1 - cpu0)
            wall[name].append(wall1 - wall0)
    out = {}
    for name in names:
        n = contestants[name][0]
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        out[name] = {"stamps": n, "rounds": rounds, "cpu_s_median": round(c, 4), "wall_s_median": round(w, 4),
                     "stamps_per_cpu_s": round(n / c, 1), "stamps_per_wall_s": round(n / w, 1)}
    return out


def ratio(timings: dict, ours: str, peer: str) -> dict:
    """How many times faster ``ours`` is than ``peer`` (per CPU second and per wall second)."""
    a, b = timings[ours], timings[peer]
    return {"cpu": round(a["stamps_per_cpu_s"] / b["stamps_per_cpu_s"], 3),
            "wall": round(a["stamps_per_wall_s"] / b["stamps_per_wall_s"], 3)}


def max_diff_over_peak(ours, ref) -> float:
    """Worst stamp's max |ours - ref| over that stamp's peak |ref| (all bands)."""
    import numpy as np

    return float(max(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max() for a, b in zip(ours, ref)))


def package_version(name: str) -> str:
    """Installed version of a distribution, or 'not installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(threads: dict, load_before: float, packages: tuple[str, ...]) -> dict:
    """What the figures were measured on (the load average tells how shared the machine was)."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "packages": {p: package_version(p) for p in packages},
            "threads": threads, "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "timing": "one process, one thread; medians of interleaved rounds; CPU = time.process_time, "
                      "wall = time.perf_counter; first calls (imports, set-up) timed apart"}


def emit(result: dict) -> None:
    """The report as JSON on stdout (ratios first, absolute figures next, machine last)."""
    print(json.dumps(result, indent=2))

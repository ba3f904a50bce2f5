"""`dvc repro` of the real dvc.yaml on a tiny config, in a fresh git repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import copy_project, tiny_params



def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "true", "GX_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def pipeline_params() -> dict:
    """Tiny params for the whole pipeline: few parents, defects at the survey's default rates,
    gate tolerances suited to ~100 parents (fractions move in steps of one HEALPix region)."""
    params = tiny_params(n_parents=96, n_sky_patches=24, shard_rows=48, nan_stamp_frac=0.003,
                         missing_band_frac=0.002, masked_stamp_frac=0.1)
    params["gates"].update(split_fraction_tolerance=0.2, max_quarantine_frac=0.05)
    params["hard_negatives"]["n_per_class"] = 10
    return params


def init_repo(root, message: str):
    """Make ``root`` a git + DVC repository with everything in it committed; returns ``root``."""
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.org"], root)
    run(["git", "config", "user.name", "ci"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", message], root)
    return root


def make_project(tmp_path):
    """A git+DVC repository holding this project's pipeline with tiny params."""
    root = tmp_path / "project"
    copy_project(root, pipeline_params())
    return init_repo(root, "tiny project")


def test_dvc_repro_runs_then_is_cached_and_clean(tmp_path):
    root = make_project(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    first = run(dvc + ["repro"], root)
    assert "Running stage 'survey'" in first and "Running stage 'survey_gallery'" in first
    metrics = json.loads((root / "metrics" / "survey.json").read_text())
    assert metrics["n_parents"] == 96
    assert (root / "plots" / "survey_gallery.png").stat().st_size > 10_000
    assert len(list((root / "data" / "survey").glob("part-*.parquet"))) == 2
    for gen in ("gen5", "gen5p"):
        evaluation = json.loads((root / "metrics" / gen / "evaluate.json").read_text())
        assert evaluation["benchmark_sha256"] == json.loads((root / "metrics" / "benchmark.json").read_text())["sha256"]
        assert (root / "data" / "models" / gen / "model.pt").exists()
        assert evaluation["selection_function"]["n_cells"] == 36
        assert (root / "plots" / gen / "selection_function.csv").stat().st_size > 500
    assert (root / "reports" / "remediation" / "selection_function.png").stat().st_size > 10_000
    second = run(dvc + ["repro"], root)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(dvc + ["status"], root)

    # editing the report code invalidates the report stage only (per-stage library deps)
    report_py = root / "darkhalo" / "report" / "render.py"
    report_py.write_text(report_py.read_text() + "\n# a reviewer's edit\n")
    status = run(dvc + ["status"], root)
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line[0].isspace()}
    assert changed == {"report"}, status
    report_py.write_text(report_py.read_text().removesuffix("\n# a reviewer's edit\n"))

    # train.seeds = 2: each generation trains and scores a second seed; compare's intervals take in the spread
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    exp = run(dvc + ["exp", "run", "-S", "train.seeds=2"], root)
    assert "Running stage 'data_gates@gen5p'" not in exp and "Running stage 'train@gen5p'" in exp
    import torch

    first, second = (torch.load(root / "data/models/gen5p" / name, weights_only=True)["state_dict"]
                     for name in ("model.pt", "model_seed1.pt"))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert (root / "data/eval/gen5p/scores_seed1.parquet").exists()
    assert json.loads((root / "metrics/gen5p/train.json").read_text())["best_val_auc_seed_spread"]["n"] == 2
    spread = json.loads((root / "metrics/gen5p/evaluate.json").read_text())["seed_spread"]
    assert spread["auc"]["n"] == 2 and len(spread["auc"]["per_seed"]) == 2
    compare = json.loads((root / "metrics/compare.json").read_text())
    assert compare["n_seeds"] == 2
    combined = [m for m in compare["metrics"].values() if "seed_diffs" in m]
    assert combined
    for m in combined:
        assert len(m["seed_diffs"]) == 2 and m["diff"] == pytest.approx(sum(m["seed_diffs"]) / 2, abs=1e-5)
        assert m["hi"] - m["lo"] >= m["bootstrap_hi"] - m["bootstrap_lo"] - 1e-5   # metrics rounded to 6 digits

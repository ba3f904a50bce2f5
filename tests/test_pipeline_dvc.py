"""`dvc repro` of the real dvc.yaml on a tiny config, in a fresh git repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import REPO, tiny_params, write_params

PROJECT_FILES = ["dvc.yaml", ".dvcignore", "stages", "darkhalo"]


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "true", "GX_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def make_project(tmp_path):
    """A git+DVC repository holding this project's pipeline with tiny params."""
    root = tmp_path / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    write_params(root / "params.yaml", tiny_params())
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.org"], root)
    run(["git", "config", "user.name", "ci"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


def test_dvc_repro_runs_then_is_cached_and_clean(tmp_path):
    root = make_project(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    first = run(dvc + ["repro"], root)
    assert "Running stage 'survey'" in first and "Running stage 'survey_gallery'" in first
    metrics = json.loads((root / "metrics" / "survey.json").read_text())
    assert metrics["n_parents"] == 48
    assert (root / "plots" / "survey_gallery.png").stat().st_size > 10_000
    assert len(list((root / "data" / "survey").glob("part-*.parquet"))) == 3
    second = run(dvc + ["repro"], root)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in run(dvc + ["status"], root)

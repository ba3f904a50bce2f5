"""The leave-one-out ablation: every variant becomes one queued `dvc exp run` with valid param keys."""
from __future__ import annotations

import copy

import pytest
import yaml

from conftest import DVC, REPO, init_repo, run_command
from darkhalo.eval.ablation import queue_commands
from darkhalo.core.params import ParamError


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_variant_removes_one_remediation_from_the_candidate():
    params = repo_params()
    commands = queue_commands(params, "params.yaml")
    assert len(commands) == len(params["ablation"]) >= 4
    for command in commands:
        assert command[:5] == ["dvc", "exp", "run", "--queue", "-n"] and command[5].startswith("ablation-")
        overrides = [command[i + 1] for i, a in enumerate(command) if a == "-S"]
        assert overrides and all(o.startswith("generations.gen5p.") for o in overrides)
    by_name = {c[5]: c for c in commands}
    assert "generations.gen5p.train.hard_negative_frac=0.0" in by_name["ablation-no_hard_negatives"]
    assert "generations.gen5p.arc_snr_target={log_uniform: [2, 50]}" in by_name["ablation-faint_arcs_only"]


def test_a_mistyped_key_is_refused_before_anything_is_queued():
    params = copy.deepcopy(repo_params())
    params["ablation"]["typo"] = {"generations.gen5p.trian.epochs": 2}
    with pytest.raises(ParamError, match="trian"):
        queue_commands(params, "params.yaml")


def test_collect_reads_the_finished_experiments_and_says_not_measured_for_the_rest(tmp_path, monkeypatch):
    """A real `dvc exp run` in a scratch repo: collect finds its ref and diffs it against its base commit."""
    from darkhalo.eval.ablation import collect

    params = {"gen5p_frac": 0.2, "compare": {"candidate": "gen5p"},
              "ablation": {"no_hard_negatives": {"gen5p_frac": 0.0}, "no_residual_input": {"gen5p_frac": 0.5}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "write_summary.py").write_text(
        "import json, os, yaml\nf = yaml.safe_load(open('params.yaml'))['gen5p_frac']\n"
        "os.makedirs('metrics', exist_ok=True)\n"
        "json.dump({'gen5p': {'auc': 0.7 - f, 'completeness': 0.25}}, open('metrics/summary.json', 'w'))\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"summary": {
        "cmd": "python write_summary.py", "deps": ["write_summary.py"], "params": ["gen5p_frac"],
        "metrics": [{"metrics/summary.json": {"cache": False}}]}}}))
    init_repo(tmp_path, "scratch project")
    for cmd in (DVC + ["repro", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "base"],
                DVC + ["exp", "run", "-q", "-n", "ablation-no_hard_negatives", "-S", "gen5p_frac=0.0"]):
        run_command(cmd, tmp_path)
    monkeypatch.chdir(tmp_path)
    result = collect(params, "params.yaml", "gen5p")
    measured = result["variants"]["no_hard_negatives"]
    assert measured["status"] == "measured"
    assert measured["metrics"]["auc"] == {"full": pytest.approx(0.5), "variant": pytest.approx(0.7),
                                          "delta": pytest.approx(0.2)}
    assert measured["metrics"]["completeness"]["delta"] == 0
    assert result["variants"]["no_residual_input"] == {"status": "not measured"}

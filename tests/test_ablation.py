"""The leave-one-out ablation: every variant becomes one queued `dvc exp run` with valid param keys."""
from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from darkhalo.ablation import queue_commands
from darkhalo.params import ParamError


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

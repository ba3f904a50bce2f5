"""Shared fixtures: tiny params files and a tiny survey built by the real stage."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

TINY_SURVEY = {
    "n_parents": 48,
    "n_sky_patches": 6,
    "shard_rows": 20,
    "row_group_rows": 8,
    "workers": 1,
    # enough defects that 48 stamps show each kind
    "masked_stamp_frac": 0.3,
    "nan_stamp_frac": 0.1,
    "missing_band_frac": 0.1,
    "defect_cutout_ok_frac": 0.5,
}


def tiny_params(**survey_overrides) -> dict:
    """The repository's params.yaml with the survey shrunk to a few dozen stamps."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["survey"].update(TINY_SURVEY)
    params["survey"].update(survey_overrides)
    params["survey_gallery"]["n_stamps"] = 12
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> Path:
    """A 48-stamp survey dataset written by the real `survey` stage."""
    from stages import survey

    root = tmp_path_factory.mktemp("survey")
    params = write_params(root / "params.yaml", tiny_params())
    survey.main(["--params", str(params), "--out", str(root / "data"), "--metrics", str(root / "survey.json")])
    return root / "data"

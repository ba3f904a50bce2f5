"""The data_gates stage: pipeline mode per generation, blocking, determinism, legacy and metadata-only
manifests, the survey's own defects quarantined, and the suites in sync with the code."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import gates_params, injection_table, tiny_params, write_manifest, write_params
from darkhalo.gates import suites
from darkhalo.core.params import ParamError
from darkhalo.io.stamps import PIXEL_COLUMNS, to_legacy_table
from stages import data_gates, split as split_stage


@pytest.fixture(scope="module")
def core_table(gates_project):
    return injection_table(gates_project, core_boost=0.3)


@pytest.fixture(scope="module")
def clean_table(gates_project):
    return injection_table(gates_project)


def test_pipeline_mode_blocking_per_generation_and_deterministic(gates_project, core_table, tmp_path, monkeypatch,
                                                                 capsys):
    (tmp_path / "data" / "split").mkdir(parents=True)
    shutil.copy(gates_project / "data" / "split" / "assignment.parquet", tmp_path / "data" / "split")
    params = gates_params()
    params["generations"]["gen5p"]["gates_blocking"] = True
    params["generations"]["gen5"]["gates_blocking"] = ["contracts", "split"]   # shortcut gates report only
    params["generations"]["gen5p"]["train"]["hard_negative_frac"] = 0.0      # no hard negatives in this directory
    write_params(tmp_path / "params.yaml", params)
    # as inject@<generation> writes them: train and val only (the test region is the benchmark's)
    splits = np.asarray(core_table.column("region_split").to_pylist())
    generation_rows = core_table.filter(pa.array(splits != "test"))
    for generation in ("gen5", "gen5p"):
        write_manifest(generation_rows, tmp_path / "data" / "inject" / generation)
    monkeypatch.chdir(tmp_path)
    outputs = ["metrics/gen5/data_gates.json", "reports/gen5/data_gates.md", "data/gates/gen5/quarantine.parquet"]
    assert data_gates.main(["--generation", "gen5", "--params", "params.yaml"]) == 0    # shortcuts not blocking
    err = capsys.readouterr().err
    assert "warning (gate family 'shortcuts' not blocking): GATE 1.8 FAILED [gen5] core_flux_ratio_r = 1.30" in err
    first = [(tmp_path / p).read_bytes() for p in outputs]
    assert data_gates.main(["--generation", "gen5", "--params", "params.yaml"]) == 0
    assert [(tmp_path / p).read_bytes() for p in outputs] == first                    # byte-identical
    capsys.readouterr()
    assert data_gates.main(["--generation", "gen5p", "--params", "params.yaml"]) == 1   # every family blocking
    err = capsys.readouterr().err
    # the residual model input is measured: its 1.6 blocks, the raw-pixel 1.6 is reported beside it
    assert "\nGATE 1.6 FAILED [gen5p] input_core_only_auc" in "\n" + err
    assert "warning (raw pixels; the model-input figure blocks): GATE 1.6 FAILED [gen5p] core_only_auc" in err
    metrics = json.loads((tmp_path / "metrics" / "gen5p" / "data_gates.json").read_text())
    assert metrics["verdict"] == "fail" and metrics["label"] == "Gen5' (remediated)"
    assert metrics["blocking_families"] == ["contracts", "split", "shortcuts", "priors"]
    assert "1.6:input_core_only_auc" in metrics["blocking_failed"] and "1.6:core_only_auc" not in metrics["blocking_failed"]
    report = (tmp_path / "reports" / "gen5p" / "data_gates.md").read_text()
    assert "# Data gates: gen5p — Gen5' (remediated)" in report and "**Verdict: FAIL**" in report
    with pytest.raises(ParamError, match="generations.gen9 is not defined"):
        data_gates.main(["--generation", "gen9", "--params", "params.yaml"])


def test_legacy_layout_standalone(gates_project, clean_table, tmp_path, capsys):
    legacy = to_legacy_table(clean_table)
    blobs = legacy.column("stamp_npz").to_pylist()
    blobs[5] = b"not an npz"
    legacy = legacy.set_column(legacy.column_names.index("stamp_npz"), "stamp_npz", pa.array(blobs, pa.binary()))
    manifest = write_manifest(legacy, tmp_path / "legacy")
    rc = data_gates.main(["--params", str(gates_project / "params.yaml"), "--manifest", str(manifest),
                          "--out", str(tmp_path / "audit"), "--skip", "1.1:lrg_mag_*"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "audit" / "data_gates.json").read_text())
    assert metrics["layout"] == "legacy" and metrics["verdict"] == "pass"
    gates = metrics["gates"]
    assert gates["split:assignment"]["verdict"] == "skipped" and gates["1.1:lrg_mag_r"]["verdict"] == "skipped"
    assert gates["1.6:core_only_auc"]["verdict"] == "pass" and gates["1.8:core_flux_ratio_r"]["verdict"] == "pass"
    q = pq.read_table(tmp_path / "audit" / "quarantine.parquet").to_pylist()
    bad = clean_table.column("task_id")[5].as_py()
    assert {r["task_id"] for r in q} == {bad, bad ^ 1}
    row = next(r for r in q if r["task_id"] == bad)
    assert row["reason"] == "1.2:shape" and "stamp_npz is not a readable .npz" in row["detail"]


def test_metadata_only_manifest(gates_project, clean_table, tmp_path, capsys):
    manifest = write_manifest(clean_table.drop_columns(list(PIXEL_COLUMNS)), tmp_path / "meta")
    args = ["--params", str(gates_project / "params.yaml"), "--manifest", str(manifest)]
    assert data_gates.main(args + ["--out", str(tmp_path / "a"), "--metadata-only"]) == 0
    metrics = json.loads((tmp_path / "a" / "data_gates.json").read_text())
    skipped = {k for k, v in metrics["gates"].items() if v["verdict"] == "skipped"}
    assert {"1.5:clip_frac_r", "1.6:core_only_auc", "1.8:core_flux_ratio_g", "1.2:finite", "1.4:noise"} <= skipped
    assert metrics["gates"]["1.1:psfsize_r"]["verdict"] == "pass"
    capsys.readouterr()
    assert data_gates.main(args + ["--out", str(tmp_path / "b")]) == 1           # pixels required unless asked
    err = capsys.readouterr().err
    assert "GATE contract FAILED [meta] schema" in err and "column=image_g kind=absent expected_kind=tensor" in err
    assert "GATE 1.6 FAILED [meta] core_only_auc: no pixel columns" in err


def test_survey_defects_are_quarantined_with_their_reason(tiny_survey, tmp_path):
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    shutil.copytree(tiny_survey, project / "data" / "survey")
    params = write_params(project / "params.yaml", tiny_params())
    split_stage.main(["--params", str(params), "--survey", str(project / "data" / "survey"),
                      "--out", str(project / "data" / "split" / "assignment.parquet"),
                      "--metrics", str(project / "split.json")])
    table = injection_table(project, replicates=1)
    manifest = write_manifest(table, project / "inject")
    rc = data_gates.main(["--params", str(params), "--manifest", str(manifest), "--out", str(project / "audit")])
    assert rc == 1                                              # 48 parents, ~20% defective: above 1%
    metrics = json.loads((project / "audit" / "data_gates.json").read_text())
    assert "contract:quarantine_fraction" in metrics["failed"]
    q = pq.read_table(project / "audit" / "quarantine.parquet").to_pandas()
    defect = dict(zip(table.column("task_id").to_pylist(), table.column("sim_defect").to_pylist()))
    ok = dict(zip(table.column("task_id").to_pylist(), table.column("cutout_ok").to_pylist()))
    expected = {t for t, d in defect.items() if d or ok[t] != 1}
    assert set(q["task_id"]) == expected and len(expected) > 4
    for task, reason in zip(q["task_id"], q["reason"]):
        if defect[task] == "nan_pixels":
            assert "1.2:finite" in reason
        elif defect[task] == "missing_band":
            assert "1.2:bands" in reason
        if ok[task] != 1:
            assert "contract:cutout_ok" in reason
    assert metrics["quarantine"]["n_rows"] == len(expected)


def test_suites_in_expectations_match_the_code(tmp_path):
    assert suites.main(["--check"]) == 0
    assert suites.main(["--out", str(tmp_path)]) == 0
    for name in suites.SUITE_NAMES:
        assert (tmp_path / f"{name}.json").read_text() == (suites.DEFAULT_DIR / f"{name}.json").read_text()
    doc = json.loads((suites.DEFAULT_DIR / "shortcuts.json").read_text())
    kinds = {e["type"] for e in doc["expectations"]}
    assert kinds == {"expect_column_two_group_effect_sizes_to_be_within", "expect_column_roc_auc_to_be_between",
                     "expect_column_group_mean_ratio_to_be_between"}


def test_bad_gate_params_and_usage_fail_loudly(gates_project, tmp_path):
    params = gates_params(core_auc_tolerance=0.7)
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamError, match=r"gates.core_auc_tolerance = 0.7"):
        data_gates.main(["--params", str(path), "--generation", "gen5"])
    with pytest.raises(SystemExit):
        data_gates.main(["--manifest", "x"])
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        data_gates.main(["--params", str(gates_project / "params.yaml"), "--manifest", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "o")])

"""Planted problems, each caught by the right gate; a clean dataset passes every gate.

Runs the real stage (``stages.data_gates.main``) on injection-like manifests built from a
160-parent survey (tests/conftest.py: injection_table).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import injection_table, write_manifest
from darkhalo.io.stamps import from_tensor_column, to_tensor_array
from stages import data_gates


@pytest.fixture(scope="module")
def clean_table(gates_project):
    return injection_table(gates_project)


def audit(project, table, tmp_path, name, *extra):
    """Write ``table`` as a manifest, run the stage on it; (exit code, metrics, printed lines, out dir)."""
    manifest = write_manifest(table, tmp_path / name)
    out = tmp_path / f"{name}-audit"
    rc = data_gates.main(["--params", str(project / "params.yaml"), "--manifest", str(manifest), "--out", str(out),
                          "--assignment", str(project / "data" / "split" / "assignment.parquet"),
                          "--generation", name, *extra])
    return rc, json.loads((out / "data_gates.json").read_text()), out


def set_pixels(table: pa.Table, column: str, row: int, fn) -> pa.Table:
    planes, present = from_tensor_column(table.column(column))
    planes, present = planes.copy(), present.copy()
    fn(planes, present, row)
    index = table.column_names.index(column)
    return table.set_column(index, column, to_tensor_array(planes, present))


def relabel(table: pa.Table, mask: np.ndarray, mapping: dict) -> pa.Table:
    original = np.asarray(table.column("region_split").to_pylist(), dtype=object)
    split = original.copy()
    for old, new in mapping.items():
        split[mask & (original == old)] = new
    return table.set_column(table.column_names.index("region_split"), "region_split", pa.array(split.tolist()))


def failed(metrics) -> set:
    return set(metrics["failed"])


def test_clean_dataset_passes_every_gate(gates_project, clean_table, tmp_path, capsys):
    rc, metrics, out = audit(gates_project, clean_table, tmp_path, "clean")
    assert rc == 0, capsys.readouterr().err
    verdicts = {k: v["verdict"] for k, v in metrics["gates"].items()}
    assert set(verdicts.values()) <= {"pass", "skipped"}, [k for k, v in verdicts.items() if v == "fail"]
    # skipped: only what needs a model input or hard negatives, which this audit was not given
    assert {k for k, v in verdicts.items() if v == "skipped"} == {
        "1.6:input_core_only_auc", "1.8:input_core_rms_ratio_g", "1.8:input_core_rms_ratio_r",
        "1.8:input_core_rms_ratio_z", "brightness:support"}
    assert {"1.1:psfsize_r", "1.5:outer_sigma_nmgy_r", "1.6:core_only_auc", "1.8:core_flux_ratio_r", "split:disjoint",
            "split:guard", "split:pairs", "split:fractions", "split:assignment", "1.2:finite", "1.4:noise"} <= set(verdicts)
    assert metrics["n_rows"] == 640 and metrics["quarantine"]["n_rows"] == 0
    assert pq.read_table(out / "quarantine.parquet").num_rows == 0
    assert "**Verdict: PASS**" in (out / "data_gates.md").read_text()


def test_brighter_cores_fail_1_6_and_1_8(gates_project, tmp_path, capsys):
    table = injection_table(gates_project, core_boost=0.3)
    rc, metrics, out = audit(gates_project, table, tmp_path, "core30")
    err = capsys.readouterr().err
    assert rc == 1
    assert {"1.6:core_only_auc", "1.8:core_flux_ratio_g", "1.8:core_flux_ratio_r", "1.8:core_flux_ratio_z"} == failed(metrics)
    ratio = metrics["gates"]["1.8:core_flux_ratio_r"]
    assert ratio["statistic"]["ratio"] == pytest.approx(1.3, abs=0.01)
    assert ratio["interval"]["ratio_ci95"][0] > 1.05
    assert metrics["gates"]["1.6:core_only_auc"]["statistic"]["auc"] > 0.9
    assert "GATE 1.8 FAILED [core30] core_flux_ratio_r = 1.30" in err and "outside [0.95, 1.05]" in err
    assert "GATE 1.6 FAILED [core30] core_only_auc = " in err
    assert "core-brightness shortcut" in (out / "data_gates.md").read_text()


def nan_in_row(table: pa.Table) -> tuple[pa.Table, int, int]:
    """NaN pixels in image_r of one positive whose cutout_ok = 1; returns (table, row, task_id)."""
    ok = np.flatnonzero((table.column("cutout_ok").to_numpy() == 1) & (table.column("is_control").to_numpy() == 0))
    row = int(ok[7])

    def plant(planes, present, i):
        planes[i, 30, 10:22] = np.nan
    return set_pixels(table, "image_r", row, plant), row, table.column("task_id")[row].as_py()


def test_nan_pixels_with_cutout_ok_fail_the_contract_naming_the_row(gates_project, clean_table, tmp_path, capsys):
    table, row, task_id = nan_in_row(clean_table)
    rc, metrics, _ = audit(gates_project, table, tmp_path, "nanfail", "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and "1.2:finite" in failed(metrics)
    line = next(l for l in err.splitlines() if l.startswith("GATE 1.2 FAILED [nanfail] finite"))
    assert "1 of 640 rows" in line and f"(task_id {task_id}, parent_id " in line
    assert "image_r/invvar_r: 12 non-finite px" in line
    assert "region_split=" in line and "part-0.parquet: row " in line


def test_nan_row_is_quarantined_with_its_partner_under_the_default_policy(gates_project, clean_table, tmp_path):
    table, row, task_id = nan_in_row(clean_table)
    rc, metrics, out = audit(gates_project, table, tmp_path, "nanq")
    assert rc == 0 and not failed(metrics)
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert [r["task_id"] for r in q] == [task_id - 1, task_id]          # the control shares (parent, replicate)
    assert q[1]["reason"] == "1.2:finite" and "image_r" in q[1]["detail"] and q[0]["reason"] == "pair_partner_quarantined"
    assert metrics["quarantine"]["n_rows"] == 2 and metrics["quarantine"]["by_contract"] == {"1.2:finite": 1}
    assert metrics["gates"]["split:pairs"]["verdict"] == "pass" and metrics["n_rows"] == 640
    assert metrics["gates"]["1.8:core_flux_ratio_r"]["n"]["positive"] == 319


def test_too_many_quarantined_rows_fail_even_under_quarantine(gates_project, clean_table, tmp_path):
    planes, present = from_tensor_column(clean_table.column("image_z"))
    planes = planes.copy()
    planes[:40:2, 0, 0] = np.nan                                  # 20 controls: 40 rows with partners = 6%
    table = clean_table.set_column(clean_table.column_names.index("image_z"), "image_z", to_tensor_array(planes, present))
    rc, metrics, _ = audit(gates_project, table, tmp_path, "manynan")
    assert rc == 1 and failed(metrics) == {"1.2:finite", "contract:quarantine_fraction"}
    assert metrics["quarantine"]["n_rows"] == 40


def test_missing_band_fails_the_band_contract(gates_project, clean_table, tmp_path, capsys):
    def drop(planes, present, i):
        present[i] = False
    table = set_pixels(clean_table, "image_g", 11, drop)
    rc, metrics, _ = audit(gates_project, table, tmp_path, "noband", "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and failed(metrics) == {"1.2:bands", "contract:quarantine_fraction"}   # policy fail: 0 allowed
    assert f"(task_id {clean_table.column('task_id')[11].as_py()}, parent_id " in err and "missing image_g" in err


def test_implausible_pixels_and_quality_values_fail_naming_row_and_column(gates_project, clean_table, tmp_path, capsys):
    """Pixels of 1e30 / 3e38 nmgy and psfsize_r = 1e300 are finite but corrupt: each row is named, with the
    column, its value and the allowed range (issue 13: they used to pass)."""
    def blow_up(value):
        def fn(planes, present, i):
            planes[i, 10:14, 10:14] = value
        return fn
    table = set_pixels(set_pixels(clean_table, "image_g", 7, blow_up(1e30)), "image_z", 9, blow_up(3e38))
    psf = table.column("psfsize_r").to_numpy().copy()
    psf[13] = 1e300
    table = table.set_column(table.column_names.index("psfsize_r"), "psfsize_r", pa.array(psf))
    rc, metrics, _ = audit(gates_project, table, tmp_path, "implausible", "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and {"1.2:pixel_range", "contract:quality_range"} <= failed(metrics)
    assert "Traceback" not in err
    ids = table.column("task_id").to_pylist()
    pixel = next(l for l in err.splitlines() if l.startswith("GATE 1.2 FAILED [implausible] pixel_range"))
    assert "2 of 640 rows" in pixel and f"(task_id {ids[7]}, " in pixel and f"(task_id {ids[9]}, " in pixel
    assert "image_g: max |pixel| 1e+30 nmgy > 100000" in pixel and "image_z: max |pixel| 3e+38 nmgy" in pixel
    quality = next(l for l in err.splitlines() if l.startswith("GATE contract FAILED [implausible] quality_range"))
    assert f"(task_id {ids[13]}, " in quality and "column psfsize_r = 1e+300 outside [0.3, 5]" in quality
    # the dataset-level gates run on the other rows: gate 1.1 is not blinded by the 1e300
    assert metrics["gates"]["1.1:psfsize_r"]["verdict"] == "pass"
    assert metrics["gates"]["1.1:psfsize_r"]["n"]["positive"] + metrics["gates"]["1.1:psfsize_r"]["n"]["control"] < 640


def test_inverted_split_fails_the_fraction_gate(gates_project, clean_table, tmp_path, capsys):
    table = relabel(clean_table, np.ones(clean_table.num_rows, bool), {"train": "test", "test": "train"})
    rc, metrics, _ = audit(gates_project, table, tmp_path, "inverted")
    err = capsys.readouterr().err
    assert rc == 1 and {"split:fractions", "split:assignment"} <= failed(metrics)
    assert not any(k.startswith(("1.", "contract")) for k in failed(metrics))
    line = next(l for l in err.splitlines() if l.startswith("GATE split FAILED [inverted] fractions"))
    assert "region_split=train fraction=0.15 declared_fraction=0.7" in line
    assert metrics["gates"]["split:fractions"]["verdict"] == "fail"


def test_healpix_pixel_shared_by_two_splits_fails(gates_project, clean_table, tmp_path, capsys):
    pix = clean_table.column("healpix_pixel").to_numpy()
    parent = clean_table.column("parent_id").to_numpy()
    split = np.asarray(clean_table.column("region_split").to_pylist())
    shared = next(p for p in np.unique(pix[split == "train"]) if np.unique(parent[pix == p]).size >= 2)
    moved = parent[pix == shared].min()
    table = relabel(clean_table, parent == moved, {"train": "test"})
    rc, metrics, _ = audit(gates_project, table, tmp_path, "shared")
    err = capsys.readouterr().err
    assert rc == 1 and "split:disjoint" in failed(metrics)
    assert metrics["gates"]["split:parent"]["verdict"] == "pass"
    assert f"GATE split FAILED [shared] disjoint: 1 of" in err and f"healpix_pixel={shared} splits=train,test" in err


def test_quality_mismatch_fails_1_1_and_small_samples_are_flagged(gates_project, clean_table, tmp_path, capsys):
    """Positives observed in worse seeing (psfsize_r + 0.3"): 1.1 fails on that column only."""
    seeing = clean_table.column("psfsize_r").to_numpy().copy()
    positive = clean_table.column("is_control").to_numpy() == 0
    seeing[positive] += 0.3
    table = clean_table.set_column(clean_table.column_names.index("psfsize_r"), "psfsize_r", pa.array(seeing))
    rc, metrics, _ = audit(gates_project, table, tmp_path, "seeing")
    err = capsys.readouterr().err
    assert rc == 1 and failed(metrics) == {"1.1:psfsize_r"}
    entry = metrics["gates"]["1.1:psfsize_r"]
    assert entry["statistic"]["ks_d"] > 0.5 and entry["statistic"]["smd"] > 1.0
    assert "GATE 1.1 FAILED [seeing] psfsize_r: KS D = " in err
    # 320 stamps per class cannot resolve D = 0.05 (null 95% level 0.107): such gates say so, and pass on noise
    assert entry["interval"]["ks_d_null95"] == pytest.approx(1.3581 * np.sqrt(2 / 320), rel=1e-3)
    assert metrics["gates"]["1.5:outer_median_nmgy_r"]["resolution_limited"] is True


def test_neighbouring_pixels_in_different_splits_fail_the_guard_band(gates_project, clean_table, tmp_path, capsys):
    """Move every stamp of one pixel to another split while a neighbouring pixel stays: guard band violated."""
    import healpy as hp

    pix = clean_table.column("healpix_pixel").to_numpy()
    split = np.asarray(clean_table.column("region_split").to_pylist())
    occupied = set(np.unique(pix).tolist())
    p, q = next((int(a), int(b)) for a in sorted(occupied)
                for b in hp.get_all_neighbours(32, a, nest=True) if b in occupied)
    target = next(s for s in ("train", "val", "test") if s != split[pix == q][0])
    table = relabel(clean_table, pix == q, {split[pix == q][0]: target})
    rc, metrics, _ = audit(gates_project, table, tmp_path, "guard")
    err = capsys.readouterr().err
    assert rc == 1 and "split:guard" in failed(metrics) and "split:disjoint" not in failed(metrics)
    assert f"healpix_pixel={q}" in err or f"healpix_pixel={p}" in err

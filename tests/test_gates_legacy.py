"""The users' legacy layout audited as it is (issue 12 item 1, issue 13 item 6).

Legacy manifests carry only the users' Gen5 columns (docs/domain.md): string task ids, no
``parent_id`` / ``replicate`` (controls are not linked to a positive by any key), depth in r only,
pixels in ``stamp_npz``.  Built from the injection-like manifest of tests/conftest.py
(``injection_table`` -> ``to_legacy_table``); the controls are the same LRG population as the
positives, so clean class means agree, but nothing pairs them.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import gates_params, injection_table, write_manifest, write_params
from darkhalo.io.stamps import from_tensor_column, to_legacy_table, to_tensor_array
from stages import data_gates
from test_gates_planted import failed, nan_in_row, set_pixels

# The users' legacy (Gen5) column set.
LEGACY_COLUMNS = ("task_id", "experiment_id", "region_id", "region_split", "brickname", "ra", "dec", "stamp_size",
                  "bandset", "config_id", "theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear",
                  "shear_phi_rad", "src_x_arcsec", "src_y_arcsec", "src_phi_rad", "src_gr", "src_rz", "psfsize_r",
                  "psfdepth_r", "ebv", "bad_pixel_frac", "is_control", "stamp_npz", "cutout_ok", "arc_snr",
                  "total_injected_flux_r")


def legacy_layout(native: pa.Table) -> pa.Table:
    """An injection-like native table rewritten in the users' legacy layout (LEGACY_COLUMNS only)."""
    table = to_legacy_table(native)
    n = table.num_rows
    ctrl = table.column("is_control").to_numpy() == 1
    rng = np.random.default_rng(5)

    def physics(values):
        return pa.array(np.asarray(values, np.float64), mask=ctrl)
    extra = {
        "task_id": pa.array([f"gen5-{t:06d}" for t in table.column("task_id").to_pylist()], pa.string()),
        "experiment_id": pa.array(["gen5_grid"] * n, pa.string()),
        "region_id": pa.array(table.column("healpix_pixel").to_numpy() // 16),
        "config_id": pa.array(np.where(ctrl, -1, 3).astype(np.int64)),
        "src_e": physics(rng.uniform(0.0, 0.5, n)), "src_x_arcsec": physics(rng.normal(0, 0.1, n)),
        "src_y_arcsec": physics(rng.normal(0, 0.1, n)), "src_phi_rad": physics(rng.uniform(0, np.pi, n)),
        "src_gr": physics(np.full(n, 0.4)), "src_rz": physics(np.full(n, 0.4)),
    }
    columns = {name: extra[name] if name in extra else table.column(name) for name in LEGACY_COLUMNS}
    return pa.table(columns)


@pytest.fixture(scope="module")
def native_table(gates_project):
    return injection_table(gates_project)


@pytest.fixture(scope="module")
def legacy_table(native_table):
    return legacy_layout(native_table)


def audit(params, table, tmp_path, name, *extra):
    """Write ``table`` as a manifest, run the standalone stage on it (no assignment): (exit code, metrics, out dir)."""
    manifest = write_manifest(table, tmp_path / name)
    out = tmp_path / f"{name}-audit"
    rc = data_gates.main(["--params", str(params), "--manifest", str(manifest), "--out", str(out),
                          "--generation", name, *extra])
    return rc, json.loads((out / "data_gates.json").read_text()), out


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, pa.array(values, table.schema.field(name).type))


def test_clean_legacy_manifest_passes_with_no_options(gates_project, legacy_table, tmp_path, capsys):
    rc, metrics, out = audit(gates_project / "params.yaml", legacy_table, tmp_path, "legacy")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert metrics["layout"] == "legacy" and metrics["pairing_key"] is None and metrics["verdict"] == "pass"
    gates = metrics["gates"]
    assert metrics["n_gates"]["fail"] == 0 and gates["contract:schema"]["verdict"] == "pass"
    # unpaired: 1.6 cross-fitted by sky region, 1.8 with a bootstrap interval; both measured
    assert gates["1.6:core_only_auc"]["verdict"] == "pass" and gates["1.8:core_flux_ratio_r"]["verdict"] == "pass"
    lo, hi = gates["1.8:core_flux_ratio_r"]["interval"]["ratio_ci95"]
    assert lo < gates["1.8:core_flux_ratio_r"]["statistic"]["ratio"] < hi
    for check in ("split:disjoint", "split:guard", "split:fractions", "1.1:psfsize_r", "1.1:psfdepth_r", "1.1:ebv",
                  "1.1:bad_pixel_frac", "1.2:finite", "1.4:noise", "contract:sky", "contract:task_id_unique"):
        assert gates[check]["verdict"] == "pass", check
    not_evaluated = metrics["not_evaluated"]
    assert not_evaluated["split:pairs"].startswith("not evaluated (no pairing key")
    assert not_evaluated["split:parent"].startswith("not evaluated (no pairing key")
    assert {"1.1:psfsize_g", "1.1:psfdepth_g", "1.1:psfdepth_z", "1.1:lrg_mag_r"} <= set(not_evaluated)
    assert not_evaluated["1.1:psfdepth_g"] == "not evaluated (absent): column psfdepth_g not in the manifest"
    report = (out / "data_gates.md").read_text()
    assert "**Verdict: PASS**" in report and "(legacy layout)" in report
    assert "not evaluated (absent): psfsize_g" in report and "Not evaluated (no pairing key): parent, pairs" in report
    assert "**Pairing**: no pairing key" in report


def test_brighter_cores_fail_1_6_and_1_8_unpaired(gates_project, tmp_path, capsys):
    table = legacy_layout(injection_table(gates_project, core_boost=0.3))
    rc, metrics, _ = audit(gates_project / "params.yaml", table, tmp_path, "core30")
    err = capsys.readouterr().err
    assert rc == 1
    assert failed(metrics) == {"1.6:core_only_auc", "1.8:core_flux_ratio_g", "1.8:core_flux_ratio_r",
                               "1.8:core_flux_ratio_z"}
    ratio = metrics["gates"]["1.8:core_flux_ratio_r"]
    assert ratio["statistic"]["ratio"] == pytest.approx(1.3, abs=0.01) and ratio["interval"]["ratio_ci95"][0] > 1.05
    assert "GATE 1.8 FAILED [core30] core_flux_ratio_r = 1.30" in err and "outside [0.95, 1.05]" in err
    assert "GATE 1.6 FAILED [core30] core_only_auc = " in err


def test_psf_difference_between_classes_fails_1_1(gates_project, legacy_table, tmp_path, capsys):
    seeing = legacy_table.column("psfsize_r").to_numpy().copy()
    seeing[legacy_table.column("is_control").to_numpy() == 0] += 0.3
    rc, metrics, _ = audit(gates_project / "params.yaml", set_column(legacy_table, "psfsize_r", seeing), tmp_path,
                           "seeing")
    err = capsys.readouterr().err
    assert rc == 1 and failed(metrics) == {"1.1:psfsize_r"}
    assert "GATE 1.1 FAILED [seeing] psfsize_r: KS D = " in err


def test_noise_difference_between_classes_fails_1_5(gates_project, native_table, tmp_path, capsys):
    """Positives' r band twice as noisy (extra Gaussian noise at the stamp's own level on unmasked pixels)."""
    image, present = from_tensor_column(native_table.column("image_r"))
    invvar, _ = from_tensor_column(native_table.column("invvar_r"))
    image = image.copy()
    positive = native_table.column("is_control").to_numpy() == 0
    with np.errstate(divide="ignore"):
        sigma = np.where(invvar > 0, 1.0 / np.sqrt(invvar), 0.0)
    noise = np.random.default_rng(3).normal(size=image.shape) * np.sqrt(3.0) * sigma
    image[positive] += noise[positive].astype(np.float32)
    noisy = native_table.set_column(native_table.column_names.index("image_r"), "image_r",
                                    to_tensor_array(image, present))
    rc, metrics, _ = audit(gates_project / "params.yaml", legacy_layout(noisy), tmp_path, "noisy")
    err = capsys.readouterr().err
    assert rc == 1 and "1.5:outer_sigma_nmgy_r" in failed(metrics)
    assert not {k for k in failed(metrics) if not k.startswith("1.")}            # no contract or split failure
    assert "GATE 1.5 FAILED [noisy] outer_sigma_nmgy_r: KS D = " in err


def test_nan_row_with_string_ids_is_named_without_a_traceback(gates_project, native_table, tmp_path, capsys):
    table, row, task_id = nan_in_row(native_table)
    legacy = legacy_layout(table)
    task = legacy.column("task_id")[row].as_py()
    assert task == f"gen5-{task_id:06d}"
    # default policy: the row alone is quarantined (no pairing key, no partner), the audit passes
    rc, metrics, out = audit(gates_project / "params.yaml", legacy, tmp_path, "nanq")
    assert rc == 0, capsys.readouterr().err
    q = pq.read_table(out / "quarantine.parquet")
    assert q.schema.field("task_id").type == pa.string()
    assert q.column("task_id").to_pylist() == [task] and q.column("reason").to_pylist() == ["1.2:finite"]
    assert q.column("source_file")[0].as_py().startswith("region_split=")
    assert metrics["quarantine"]["n_rows"] == 1 and f"| {task} |" in (out / "data_gates.md").read_text()
    # policy fail: the gate fails naming file, row and the row's own id
    rc, metrics, _ = audit(gates_project / "params.yaml", legacy, tmp_path, "nanfail", "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and "1.2:finite" in failed(metrics)
    line = next(l for l in err.splitlines() if l.startswith("GATE 1.2 FAILED [nanfail] finite"))
    assert "1 of 640 rows" in line and "part-0.parquet: row " in line
    assert f"(task_id {task!r}): image_r/invvar_r: 12 non-finite px" in line


def test_missing_band_fails_the_band_contract_naming_the_row(gates_project, native_table, tmp_path, capsys):
    def drop(planes, present, i):
        present[i] = False
    legacy = legacy_layout(set_pixels(native_table, "image_g", 11, drop))
    task = legacy.column("task_id")[11].as_py()
    rc, metrics, _ = audit(gates_project / "params.yaml", legacy, tmp_path, "noband", "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and failed(metrics) == {"1.2:bands", "contract:quarantine_fraction"}
    assert f"(task_id {task!r}): missing image_g" in err


def test_contract_failures_name_file_row_and_id(gates_project, legacy_table, tmp_path, capsys):
    """Duplicate task_id, is_control = 2, NaN dec: each failure names the file, the row and the row's task id."""
    ids = legacy_table.column("task_id").to_pylist()
    ids[4] = ids[3]
    is_control = legacy_table.column("is_control").to_numpy().copy()
    is_control[20] = 2
    dec = legacy_table.column("dec").to_numpy().copy()
    dec[30] = np.nan
    table = set_column(set_column(set_column(legacy_table, "task_id", ids), "is_control", is_control), "dec", dec)
    rc, metrics, _ = audit(gates_project / "params.yaml", table, tmp_path, "bad", "--metadata-only",
                           "--policy", "fail")
    err = capsys.readouterr().err
    assert rc == 1 and {"contract:task_id_unique", "contract:is_control", "contract:sky"} <= failed(metrics)
    assert "Traceback" not in err
    lines = {l.split()[4]: l for l in err.splitlines() if l.startswith("GATE contract FAILED [bad]")}
    written = {i: t for i, t in enumerate(table.column("task_id").to_pylist())}
    for check, row, text in (("task_id_unique:", 3, f"column task_id = {ids[3]!r} (duplicate)"),
                             ("is_control:", 20, "column is_control = 2"), ("sky:", 30, "column dec = nan")):
        assert re.search(rf"region_split=\w+/part-0\.parquet: row \d+ \(task_id {re.escape(repr(written[row]))}\): "
                         + re.escape(text), lines[check]), lines[check]


def test_a_pairing_key_named_in_params_is_used(gates_project, legacy_table, tmp_path, capsys):
    # one lens id per (parent, replicate): a positive and its control (conftest.injection_table's task ids)
    lens = [f"L{int(t.split('-')[1]) // 2}" for t in legacy_table.column("task_id").to_pylist()]
    table = legacy_table.append_column("lens_id", pa.array(lens))
    params = write_params(tmp_path / "params.yaml", gates_params(pairing_key="lens_id"))
    rc, metrics, _ = audit(params, table, tmp_path, "keyed")
    assert rc == 0, capsys.readouterr().err
    assert metrics["pairing_key"] == "lens_id"
    gates = metrics["gates"]
    assert gates["split:pairs"]["verdict"] == "pass" and gates["split:parent"]["verdict"] == "pass"
    missing = write_params(tmp_path / "missing.yaml", gates_params(pairing_key="pair_uid"))
    with pytest.raises(ValueError, match=r"gates.pairing_key = 'pair_uid' is not a column of the manifest"):
        audit(missing, legacy_table, tmp_path, "nokey")

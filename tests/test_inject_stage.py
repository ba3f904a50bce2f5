"""The `inject@<generation>` stage on a tiny survey: pairing, redraw from columns, rejection, determinism."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import assert_same_parquet_files, run_on_other_cpu, tiny_params, write_params
from darkhalo.io.dataset import iter_chunks, stamps_of
from darkhalo.sim.injection import engine_settings, ks_distance_to_target, render_columns
from darkhalo.physics.lensing import RenderSettings
from darkhalo.physics.lenstronomy_reference import redraw_arc
from darkhalo.core.params import ParamError
from darkhalo.sim.priors import parse_prior
from darkhalo.io.stamps import PIXEL_COLUMNS
from stages import inject

@pytest.fixture(scope="module")
def assignment(tiny_assignment):
    return tiny_assignment


def inject_params(**inject_overrides):
    params = tiny_params()
    params["inject"].update(batch_size=16, **inject_overrides)
    params["generations"]["gen5p"]["n_candidates"] = 4
    return params


def run_inject(tmp_path, tiny_survey, assignment, generation, name=None, **inject_overrides):
    name = name or generation
    params = write_params(tmp_path / f"{name}.yaml", inject_params(**inject_overrides))
    out, metrics = tmp_path / name, tmp_path / f"{name}.json"
    inject.main(["--generation", generation, "--params", str(params), "--survey", str(tiny_survey),
                 "--split", str(assignment), "--out", str(out), "--metrics", str(metrics)])
    return out, json.loads(metrics.read_text())


def rows_and_pixels(path):
    chunks = list(iter_chunks(str(path)))
    table = pa.concat_tables([c.table for c in chunks])
    image = np.concatenate([stamps_of(c, 64).image for c in chunks])
    invvar = np.concatenate([stamps_of(c, 64).invvar for c in chunks])
    return table, image, invvar


def test_noiseless_injection_is_exactly_the_arc_redrawn_from_its_columns(tmp_path, tiny_survey, assignment):
    out, metrics = run_inject(tmp_path, tiny_survey, assignment, "gen5p", noise=False)
    table, image, invvar = rows_and_pixels(out)
    meta = table.drop_columns(list(PIXEL_COLUMNS)).to_pylist()
    ctrl = {(r["parent_id"], r["replicate"]): i for i, r in enumerate(meta) if r["is_control"] == 1}
    positives = [i for i, r in enumerate(meta) if r["is_control"] == 0]
    assert positives and len(ctrl) == len(positives)
    cols = {k: [meta[i][k] for i in positives] for k in meta[positives[0]] if k.startswith(("src_", "lens_", "psf_fwhm_used", "theta_e", "shear"))}
    e = engine_settings(tiny_params(), "params.yaml")                    # the engine settings inject used
    settings = RenderSettings(64, e.supersample, e.moffat_beta, tile_pix=e.tile_pix, refine_rel=e.refine_rel)
    engine, _ = render_columns({k: np.array(v) for k, v in cols.items()}, settings)
    checked = 0
    for n, i in enumerate(positives):
        c = ctrl[(meta[i]["parent_id"], meta[i]["replicate"])]
        assert meta[c]["region_split"] == meta[i]["region_split"]
        ok = np.isfinite(image[i]) & (invvar[i] > 0)
        diff = np.where(ok, image[i] - image[c], 0.0)
        assert np.allclose(diff, np.where(ok, engine[n], 0.0), rtol=0, atol=1e-6 * np.abs(engine[n]).max() + 1e-7)
        if n < 12:  # lenstronomy from the row's columns alone
            ref = redraw_arc(meta[i])
            assert np.abs(np.where(ok, engine[n] - ref, 0)).max() <= 0.01 * ref.max()
            checked += 1
    assert checked == min(12, len(positives))


def test_pairs_controls_and_metrics(tmp_path, tiny_survey, assignment):
    out, metrics = run_inject(tmp_path, tiny_survey, assignment, "gen5")
    table, image, _ = rows_and_pixels(out)
    survey, survey_img, _ = rows_and_pixels(tiny_survey)
    survey_ids = survey.column("parent_id").to_pylist()
    is_control = table.column("is_control").to_numpy()
    ids = table.column("parent_id").to_pylist()
    for i in np.flatnonzero(is_control == 1):  # controls are the untouched parents
        assert np.array_equal(image[i], survey_img[survey_ids.index(ids[i])], equal_nan=True)
    assert metrics["priors"]["n_grid_configs"] == 12
    assert metrics["task_acceptance"]["rate"] == 1.0
    assert "guard" not in metrics["per_split"]
    assert {f.name for f in table.schema} >= {"theta_e_arcsec", "lens_q", "lens_phi_rad", "lens_x_arcsec",
        "lens_y_arcsec", "shear", "shear_phi_rad", "src_x_arcsec", "src_y_arcsec", "src_reff_arcsec", "src_n_sersic",
        "src_q", "src_phi_rad", "src_flux_nmgy_g", "src_flux_nmgy_r", "src_flux_nmgy_z", "psf_fwhm_used_g",
        "psf_fwhm_used_r", "psf_fwhm_used_z", "moffat_beta", "supersample", "task_seed64", "magnification", "arc_snr",
        "arc_snr_aperture", "total_injected_flux_g", "total_injected_flux_r", "total_injected_flux_z",
        "core_flux_ratio", "is_control", "parent_id", "task_id", "region_split"}
    assert len(set(table.column("task_id").to_pylist())) == table.num_rows


def test_arc_snr_rejection_hits_the_target(tmp_path, tiny_survey, assignment):
    _, metrics = run_inject(tmp_path, tiny_survey, assignment, "gen5p")
    target = metrics["arc_snr_target"]
    assert metrics["priors"]["n_grid_configs"] == 9 * 12 * 4
    assert 2.0 <= metrics["arc_snr"]["p5"] and metrics["arc_snr"]["p95"] <= 300.0
    assert 0 < target["candidate_acceptance"]["rate"] < 1
    assert target["candidate_acceptance"]["lo"] <= target["candidate_acceptance"]["rate"] <= target["candidate_acceptance"]["hi"]
    # tiny sample: D is loose here; the default run reports D ~ 0.03 on ~5,000 positives
    assert target["ks_distance_achieved_vs_target"] < 0.35


def test_same_params_give_byte_identical_injections(tmp_path, tiny_survey, assignment):
    a, _ = run_inject(tmp_path, tiny_survey, assignment, "gen5p", name="a")
    b, _ = run_inject(tmp_path, tiny_survey, assignment, "gen5p", name="b")
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.parquet")) and files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_another_cpu_writes_the_same_injections(tmp_path, tiny_survey, assignment):
    """numpy's dispatch limited to the x86-64-v2 baseline and MKL to SSE4.2 give this machine's bytes
    (source fluxes and magnification are rounded to float32 precision; torch runs its AVX2 kernels and
    MKL its COMPATIBLE mode on every x86-64 machine: darkhalo/__init__.py).  With ``MKL_CBWR=AVX2`` the
    FFTs differed here."""
    a, _ = run_inject(tmp_path, tiny_survey, assignment, "gen5p", name="a")
    params = write_params(tmp_path / "c.yaml", inject_params())
    run_on_other_cpu("inject", "--generation", "gen5p", "--params", params, "--survey", tiny_survey,
                     "--split", assignment, "--out", tmp_path / "c", "--metrics", tmp_path / "c.json")
    assert_same_parquet_files(a, tmp_path / "c")


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p["generations"]["gen5p"]["priors"].update(theta_e_arcsec={"uniform": [2.0, 1.0]}),
     r"generations\.gen5p\.priors.*theta_e_arcsec\.uniform.*lo < hi"),
    (lambda p: p["inject"]["default_priors"].pop("shear"), r"missing prior\(s\) shear"),
    (lambda p: p["generations"]["gen5p"]["priors"].update(theta_e={"grid": [1.0]}),
     r"generations\.gen5p\.priors: unknown key 'theta_e' \(did you mean 'theta_e_arcsec'\?\)"),
    (lambda p: p["generations"]["gen5p"].update(arc_snr_target={"normal": [10, 2]}), r"arc_snr_target: must be uniform"),
    (lambda p: p["runtime"].update(device="tpu"), r"runtime\.device = 'tpu': must be cpu, cuda or auto"),
    (lambda p: p["inject"].update(device="cuda"),
     r"inject: unknown key 'device' \(now runtime\.device: execution settings are not science params\)"),
])
def test_bad_injection_params_are_named(tmp_path, tiny_survey, assignment, mutate, message):
    params = inject_params()
    mutate(params)
    path = write_params(tmp_path / "bad.yaml", params)
    with pytest.raises(ParamError, match=message):
        inject.main(["--generation", "gen5p", "--params", str(path), "--survey", str(tiny_survey),
                     "--split", str(assignment), "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "m.json")])
    assert not (tmp_path / "o").exists()


def test_ks_distance_to_target_hand_case():
    """D = max over the sorted sample of i/n - F(x_i) and F(x_i) - (i-1)/n: 0.25 for 1, 2, 3 on U(0, 4)."""
    target = parse_prior("theta", {"uniform": [0, 4]}, "params.yaml: test")
    assert ks_distance_to_target(np.array([3.0, 1.0, 2.0]), target) == pytest.approx(0.25, abs=1e-15)
    assert ks_distance_to_target(np.array([2.0]), target) == pytest.approx(0.5, abs=1e-15)
    assert np.isnan(ks_distance_to_target(np.array([]), target))

"""The `anchors` stage on a tiny config: catalogue positions, centre checks, tiers, determinism, real mode."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cutout_fits_bytes, run_on_other_cpu, tiny_params, write_params
from darkhalo.sim.anchors import ANCHOR_PARENT_ID_BASE, select_anchors
from darkhalo.sim.anchors_catalogue import read_lenscat
from darkhalo.sim.anchors_checks import AnchorCheckError
from darkhalo.sim.anchors_config import anchors_config
from darkhalo.sim.anchors_positions import AnchorPositionError
from darkhalo.io.dataset import read_table
from darkhalo.sim.injection import arc_snr, good_pixels, render_columns
from darkhalo.core.params import ParamError
from darkhalo.sim.split import pixel_of
from darkhalo.io.stamps import stamps_from_native
from stages import anchors as stage

PATH = "/viewer/cutout.fits"
TINY_ANCHORS = {"max_per_set": 2, "gallery_per_tier": 2}


def anchor_params(**anchors) -> dict:
    params = tiny_params()
    params["anchors"].update(TINY_ANCHORS)
    params["anchors"].update(anchors)
    return params


def run_stage(root, params, assignment, name="run"):
    """Run the real stage into ``root/name``; returns (table, metrics, paths)."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    paths = {"params": write_params(out / "params.yaml", params), "data": out / "anchors",
             "metrics": out / "anchors.json", "gallery": out / "anchors_gallery.png"}
    stage.main(["--params", str(paths["params"]), "--assignment", str(assignment), "--out", str(paths["data"]),
                "--metrics", str(paths["metrics"]), "--gallery", str(paths["gallery"])])
    return read_table(str(paths["data"])), json.loads(paths["metrics"].read_text()), paths


@pytest.fixture(scope="module")
def project(tiny_survey, tmp_path_factory):
    """A split table of the tiny survey (the real `split` stage) plus two planted anchor pixels (test, train)."""
    from stages import split

    root = tmp_path_factory.mktemp("anchors")
    params = write_params(root / "params.yaml", tiny_params())
    real = root / "split.parquet"
    split.main(["--params", str(params), "--survey", str(tiny_survey), "--out", str(real),
                "--metrics", str(root / "split.json")])
    table = pq.read_table(real)
    nside = int(table.column("nside")[0].as_py())
    chosen, _ = select_anchors(anchors_config(anchor_params(), "tiny"), tiny_params()["seed"])
    planted = chosen.iloc[[0, -1]]
    pix = pixel_of(planted["ra"].to_numpy(), planted["dec"].to_numpy(), nside)
    assert not np.isin(pix, table.column("healpix_pixel").to_numpy()).any()
    extra = {name: pa.array(values, table.schema.field(name).type) for name, values in {
        "parent_id": [-1, -2], "ra": planted["ra"].tolist(), "dec": planted["dec"].tolist(), "nside": [nside] * 2,
        "healpix_pixel": pix.tolist(), "region_split": ["test", "train"]}.items()}
    for name in table.column_names:
        if name not in extra:
            extra[name] = pa.array([table.column(name)[0].as_py()] * 2, table.schema.field(name).type)
    assignment = root / "assignment.parquet"
    pq.write_table(pa.concat_tables([table, pa.table(extra).select(table.column_names)]), assignment)
    return {"root": root, "assignment": assignment, "planted": dict(zip(planted["name"], ["test", "train"]))}


@pytest.fixture(scope="module")
def stage_run(project):
    return run_stage(project["root"], anchor_params(), project["assignment"])


def test_anchors_sit_at_their_catalogue_positions_with_a_galaxy_at_the_centre(stage_run, project):
    table, metrics, _ = stage_run
    rows = table.drop_columns([c for c in table.column_names if c.startswith(("image_", "invvar_"))]).to_pandas()
    catalogue = read_lenscat()
    assert len(rows) + metrics["drops"]["n_dropped"] == 6 and len(rows) >= 5
    assert (rows.ra.to_numpy() == catalogue.ra.to_numpy()[rows.lenscat_row]).all()       # exactly the catalogue's
    assert (rows.dec.to_numpy() == catalogue.dec.to_numpy()[rows.lenscat_row]).all()
    assert (rows.parent_id == ANCHOR_PARENT_ID_BASE + rows.lenscat_row).all()
    assert rows.anchor_centre_ok.all() and (rows.anchor_centre_offset_arcsec <= 1.0).all()
    assert (rows.anchor_centre_snr >= 10).all()
    assert set(rows.anchor_source) == {"embedded"} and set(rows.anchor_theta_e_source) == {"set_default"}
    # tiers and groups follow the measured visibility S/N
    assert (rows.anchor_tier == np.where(rows.anchor_visibility_snr >= 10.0, "A", "B")).all()
    assert (rows.anchor_group == rows.anchor_set + ":tier" + rows.anchor_tier).all()
    counts = {s: {"A": int(((rows.anchor_set == s) & (rows.anchor_tier == "A")).sum()),
                  "B": int(((rows.anchor_set == s) & (rows.anchor_tier == "B")).sum()),
                  "n": int((rows.anchor_set == s).sum())} for s in ("slacs", "bells", "desi_ls")}
    assert metrics["counts"] == counts
    assert metrics["selection"]["cap"]["max_per_set"] == 2
    assert all(v["chosen"] == 2 for v in metrics["selection"]["cap"]["per_set"].values())
    # split information: planted pixels carry their split, everything else is unassigned
    split = dict(zip(rows.name, rows.region_split))
    for name, expected in project["planted"].items():
        if name in split:
            assert split[name] == expected
    assert set(split.values()) <= {"test", "train", "unassigned"}
    # every survey catalogue column is there, with the survey's meaning
    assert (rows.psfsize_r > 0.5).all() and (rows.lrg_mag_r < 24).all() and (rows.stamp_size == 64).all()


def test_rows_redraw_their_arcs_from_their_injection_columns(stage_run):
    table, _, _ = stage_run
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names
            if not name.startswith(("image_", "invvar_")) and not name.startswith("src_clump_")}
    for name in ("src_clump_dx_arcsec", "src_clump_dy_arcsec", "src_clump_sigma_arcsec",
                 "src_clump_flux_nmgy_g", "src_clump_flux_nmgy_r", "src_clump_flux_nmgy_z"):
        cols[name] = np.array(table.column(name).to_pylist())
    assert cols["src_clump_dx_arcsec"].shape == (table.num_rows, 2)
    params = anchor_params()
    engine = params["inject"]
    from darkhalo.physics.lensing import RenderSettings

    settings = RenderSettings(64, int(cols["supersample"][0]), float(cols["moffat_beta"][0]), 0.262,
                              engine["tile_pix"], engine["refine_rel"])
    arcs, _ = render_columns(cols, settings)
    for j, band in enumerate("grz"):
        np.testing.assert_allclose(arcs[:, j].sum(axis=(1, 2)), cols[f"total_injected_flux_{band}"], rtol=1e-6)
    stamps = stamps_from_native(table)
    np.testing.assert_allclose(arc_snr(arcs, stamps.invvar, good_pixels(stamps)), cols["arc_snr"], rtol=1e-6)
    assert (cols["theta_e_arcsec"] >= 0.8).all() and (cols["theta_e_arcsec"] <= 2.5).all()


def tier_params(src_dmag: float) -> dict:
    """Every set's arcs fixed in radius and brightness, the source near the caustic centre (images at ~theta_E,
    inside the measurement annulus): only src_dmag differs between two runs."""
    sim = {s: {"priors": {"theta_e_arcsec": {"value": 1.6}, "src_dmag": {"value": src_dmag},
                          "src_reff_arcsec": {"value": 0.3}, "src_offset_theta_e": {"value": 0.15}}, "n_clumps": 0}
           for s in ("slacs", "bells", "desi_ls")}
    return anchor_params(simulation=sim, default_theta_e_arcsec={"slacs": 1.6, "bells": 1.6, "desi_ls": 1.6},
                         max_dropped_fraction=0.5)


def test_a_brighter_arc_moves_the_same_anchor_from_tier_b_to_a(project):
    faint, _, _ = run_stage(project["root"], tier_params(6.0), project["assignment"], "faint")
    bright, _, _ = run_stage(project["root"], tier_params(1.5), project["assignment"], "bright")
    keys = ["name", "parent_id", "ra", "dec", "lrg_mag_r", "psfdepth_r", "theta_e_arcsec", "src_x_arcsec",
            "anchor_tier", "anchor_visibility_snr", "src_mag_r"]
    both = faint.select(keys).to_pandas().merge(bright.select(keys).to_pandas(), on="name",
                                                suffixes=("_faint", "_bright"))
    assert len(both) >= 5
    for key in ("parent_id", "ra", "dec", "lrg_mag_r", "psfdepth_r", "theta_e_arcsec", "src_x_arcsec"):
        assert (both[f"{key}_faint"] == both[f"{key}_bright"]).all(), key     # the same lens, site and noise
    np.testing.assert_allclose(both.src_mag_r_faint - both.src_mag_r_bright, 4.5)
    assert (both.anchor_tier_faint == "B").all() and (both.anchor_tier_bright == "A").all(), both.to_string()
    assert (both.anchor_visibility_snr_bright > both.anchor_visibility_snr_faint + 10).all()


def test_same_params_give_byte_identical_outputs(stage_run, project):
    _, _, first = stage_run
    _, _, second = run_stage(project["root"], anchor_params(), project["assignment"], "again")
    for key in ("metrics", "gallery"):
        assert first[key].read_bytes() == second[key].read_bytes(), key
    files = sorted(p.name for p in first["data"].iterdir())
    assert files == sorted(p.name for p in second["data"].iterdir()) == ["part-00000.parquet"]
    assert (first["data"] / files[0]).read_bytes() == (second["data"] / files[0]).read_bytes()


def test_outputs_do_not_depend_on_the_cpu_simd_paths_or_threads(stage_run, project):
    """Cross-machine determinism: the stage run with numpy's SIMD paths limited to the x86-64-v2 baseline
    and one BLAS/OpenMP thread (a subprocess) writes this machine's bytes."""
    _, _, first = stage_run
    out = project["root"] / "other_cpu"
    out.mkdir()
    params = write_params(out / "params.yaml", anchor_params())
    run_on_other_cpu("anchors", "--params", params, "--assignment", project["assignment"], "--out", out / "anchors",
                     "--metrics", out / "anchors.json", "--gallery", out / "anchors_gallery.png")
    assert first["metrics"].read_text() == (out / "anchors.json").read_text()
    assert (first["data"] / "part-00000.parquet").read_bytes() == (out / "anchors" / "part-00000.parquet").read_bytes()


def test_gallery_is_a_png_with_a_row_per_tier(stage_run):
    _, _, paths = stage_run
    data = paths["gallery"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_an_anchor_list_30_arcsec_off_fails_naming_it_and_true_positions_pass(stage_run, project, tmp_path):
    table, _, _ = stage_run
    listed = table.select(["name", "ra", "dec"]).to_pandas().head(4)
    listed["theta_e_arcsec"] = ["1.9", "", "", ""]
    good = tmp_path / "good.csv"
    listed.to_csv(good, index=False)
    rows, metrics, _ = run_stage(tmp_path, anchor_params(anchor_list=str(good)), project["assignment"], "good")
    assert sorted(rows.column("name").to_pylist()) == sorted(listed.name)
    frame = rows.select(["name", "anchor_theta_e_arcsec", "anchor_theta_e_source", "theta_e_arcsec"]).to_pandas()
    first = frame.set_index("name").loc[listed.name[0]]
    assert first.anchor_theta_e_source == "anchor_list" and first.anchor_theta_e_arcsec == 1.9
    assert abs(first.theta_e_arcsec - 1.9) < 1e-12                   # the listed radius is simulated
    assert metrics["selection"]["source"] == "anchor_list" and metrics["selection"]["theta_e_from_list"] == 1
    bad = listed.copy()
    victim = bad.loc[2, "name"]
    bad.loc[2, "dec"] += 30.0 / 3600.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(AnchorPositionError) as err:
        run_stage(tmp_path, anchor_params(anchor_list=str(tmp_path / "bad.csv")), project["assignment"], "bad")
    assert f"{victim}: 30.0\" off" in str(err.value) and "bad.csv: 1 of 4 anchors" in str(err.value)
    assert not (tmp_path / "bad" / "anchors").exists()


def real_params(base_url, cache, **anchors) -> dict:
    cutout = {"base_url": base_url + PATH, "timeout_s": 2.0, "retries": 1, "backoff_s": 0.01}
    params = anchor_params(mode="cutouts", cache_dir=str(cache), cutout=cutout, **anchors)
    params["runtime"]["cutout_workers"] = 1
    return params


def clean_stamp(table):
    meta = table.select(["sim_defect", "bad_pixel_frac", "anchor_tier"]).to_pylist()
    i = next(k for k, m in enumerate(meta) if not m["sim_defect"] and m["bad_pixel_frac"] == 0)
    stamps = stamps_from_native(table.slice(i, 1))
    return stamps.image[0], stamps.invvar[0], meta[i]["anchor_tier"]


def test_real_mode_fetches_cutouts_from_a_local_server(stage_run, project, local_http_server, tmp_path):
    table, _, _ = stage_run
    image, invvar, tier_embedded = clean_stamp(table)
    base, routes = local_http_server({PATH: [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    rows, metrics, _ = run_stage(tmp_path, real_params(base, tmp_path / "cache"), project["assignment"], "real")
    assert rows.num_rows == 6 and routes[PATH].hits == 6 and metrics["cutouts"]["fetched"] == 6
    frame = rows.drop_columns([c for c in rows.column_names if c.startswith(("image_", "invvar_"))]).to_pandas()
    assert set(frame.anchor_source) == {"cutout"} and frame.anchor_centre_ok.all()
    assert set(frame.anchor_tier) == {tier_embedded}                       # same pixels, same verdict
    assert frame.psfsize_r.isna().all() and frame.theta_e_arcsec.isna().all() and frame.arc_snr.isna().all()
    assert (frame.anchor_psf_fwhm_arcsec_r == 1.2).all()                   # the assumed DR10 median seeing
    np.testing.assert_array_equal(stamps_from_native(rows).image[0], image)
    catalogue = read_lenscat()
    assert (frame.ra.to_numpy() == catalogue.ra.to_numpy()[frame.lenscat_row]).all()
    # a failed cutout fails the stage, naming the target (max_failed_fraction 0)
    base404, _ = local_http_server({PATH: [(404, b"no such cutout", 0.0)]})
    first = frame.sort_values("parent_id").name.iloc[0]
    with pytest.raises(RuntimeError, match=r"(?s)anchors: 6 of 6 cutouts failed .*cutout '" + re.escape(first) +
                       r"': http_404"):
        run_stage(tmp_path, real_params(base404, tmp_path / "cache404"), project["assignment"], "real404")
    assert not (tmp_path / "real404" / "anchors").exists()


def test_blank_sky_cutouts_fail_the_centre_check_naming_the_anchors(project, local_http_server, tmp_path):
    rng = np.random.default_rng(3)
    invvar = np.full((3, 64, 64), 2.5e4, np.float32)
    sky = (rng.standard_normal((3, 64, 64)) / np.sqrt(invvar)).astype(np.float32)   # the users' old anchors
    base, _ = local_http_server({PATH: [(200, cutout_fits_bytes(sky, invvar), 0.0)]})
    with pytest.raises(AnchorCheckError, match=r"6 of 6 anchor stamps failed the anchor checks .*"
                                                r"max_dropped_fraction.*\n  \S+ \[slacs\]: no_centre_galaxy"):
        run_stage(tmp_path, real_params(base, tmp_path / "c1"), project["assignment"], "sky")
    with pytest.raises(AnchorCheckError, match=r"anchors\.centre_policy = fail"):
        run_stage(tmp_path, real_params(base, tmp_path / "c2", centre_policy="fail"), project["assignment"], "sky2")


@pytest.mark.parametrize("key,value,message", [
    ("mode", "real", r"anchors\.mode = 'real': must be one of \['embedded', 'cutouts'\]"),
    ("centre_policy", "warn", r"anchors\.centre_policy = 'warn': must be one of"),
    ("simulation", {"slacs": {"priors": {}}}, r"anchors\.simulation has no arc population for set\(s\) \['bells'"),
    ("simulation", {"slacs": {"replicates": 2}}, r"anchors\.simulation = .*must map set names"),
    ("cutout_psf_fwhm_arcsec", {"g": 1.0}, r"anchors\.cutout_psf_fwhm_arcsec = .*must map g, r, z"),
])
def test_bad_stage_params_name_file_and_key(key, value, message):
    params = anchor_params()
    params["anchors"][key] = value
    with pytest.raises(ParamError, match=r"params\.yaml: " + message):
        anchors_config(params, "params.yaml")


def test_bad_simulation_priors_name_the_set(project, tmp_path):
    params = anchor_params()
    params["anchors"]["simulation"]["bells"]["priors"]["src_dmag"] = {"uniform": [5.0, 2.0]}
    with pytest.raises(ParamError, match=r"anchors\.simulation\.bells\.priors.*src_dmag\.uniform .*lo < hi"):
        run_stage(tmp_path, params, project["assignment"], "badprior")

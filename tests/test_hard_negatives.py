"""The `hard_negatives` stage (embedded mode) on tiny params: classes, splits, namespace, determinism, gallery."""
from __future__ import annotations

import json

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_parquet_files, run_on_other_cpu, tiny_params, write_params
from darkhalo.io.dataset import read_table
from darkhalo.sim.hard_negatives import (CLASSES, HARD_NEGATIVE_PARENT_ID_BASE, hard_negatives_config,
                                     simulate_hard_negatives)
from darkhalo.core.params import ParamError
from darkhalo.sim.split import read_split_map
from darkhalo.sim.survey import CATALOGUE_FIELDS, sky_patches, survey_config
from stages import hard_negatives

SPLIT_OF_PATCH = ["train", "train", "val", "test", "guard", None]   # None: a pixel the split never assigned


def hn_params(workers: int = 1, **overrides):
    params = tiny_params({"workers": workers})
    params["hard_negatives"].update({"n_per_class": 6, "shard_rows": 10, "gallery_per_class": 3, **overrides})
    return params


def write_assignment(path, params, nest=True, conflict=False):
    """An assignment table in the split stage's schema over the survey's sky patches."""
    config = survey_config(params, "params")
    patches = sky_patches(config)
    rows = []
    for k, (patch, split) in enumerate(zip(patches, SPLIT_OF_PATCH)):
        if split is None:
            continue
        ra, dec = hp.pix2ang(32, int(patch), nest=True, lonlat=True)
        pixel = int(patch) if nest else int(hp.nest2ring(32, int(patch)))
        rows.append((k, float(ra), float(dec), pixel, split))
        if conflict and k == 0:
            rows.append((100, float(ra) + 1e-4, float(dec), pixel, "test"))
    table = pa.table({"parent_id": pa.array([r[0] for r in rows], pa.int64()),
                      "ra": [r[1] for r in rows], "dec": [r[2] for r in rows],
                      "nside": pa.array([32] * len(rows), pa.int32()),
                      "healpix_pixel": pa.array([r[3] for r in rows], pa.int64()),
                      "region_split": [r[4] for r in rows]})
    pq.write_table(table, path)
    return path


def run_stage(tmp_path, name, params):
    params_path = write_params(tmp_path / f"{name}.yaml", params)
    assignment = write_assignment(tmp_path / f"{name}-assignment.parquet", params)
    out = tmp_path / name
    hard_negatives.main(["--params", str(params_path), "--assignment", str(assignment), "--out", str(out),
                         "--metrics", str(tmp_path / f"{name}.json"), "--gallery", str(tmp_path / f"{name}.png")])
    return out, json.loads((tmp_path / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hn")
    out, metrics = run_stage(tmp, "a", hn_params(workers=1))
    return tmp, out, metrics


def test_rows_are_split_by_their_healpix_pixel_and_losses_are_counted(stage_run):
    tmp, out, metrics = stage_run
    assert sorted(p.name for p in out.iterdir()) <= ["region_split=test", "region_split=train", "region_split=val"]
    table = read_table(str(out))
    split_map = read_split_map(tmp / "a-assignment.parquet")
    pix, expected = split_map.lookup(table.column("ra").to_numpy(), table.column("dec").to_numpy())
    assert table.column("region_split").to_pylist() == expected.tolist()
    assert (table.column("healpix_pixel").to_numpy() == pix).all()
    assert (table.column("nside").to_numpy() == 32).all()
    written = sum(sum(v.values()) for v in metrics["counts"].values())
    assert written == table.num_rows == metrics["n_written"]
    dropped = metrics["dropped"]
    n_guard, n_unassigned = sum(dropped["guard_band"].values()), sum(dropped["unassigned_pixel"].values())
    assert n_guard > 0 and n_unassigned > 0          # both kinds of loss happen with this table ...
    assert written + n_guard + n_unassigned == 24 == metrics["n_simulated"]   # ... and nothing vanishes
    for split, by_class in metrics["counts"].items():
        got = table.filter(pa.compute.equal(table.column("region_split"), split)).column("hn_class").to_pylist()
        assert {c: got.count(c) for c in set(got)} == by_class


def test_rows_carry_survey_columns_classes_and_their_own_parent_ids(stage_run):
    _, out, metrics = stage_run
    table = read_table(str(out))
    assert set(f.name for f in CATALOGUE_FIELDS) <= set(table.column_names)
    ids = table.column("parent_id").to_numpy()
    assert (ids >= HARD_NEGATIVE_PARENT_ID_BASE).all() and len(np.unique(ids)) == len(ids)
    assert metrics["parent_id_base"] == 2**40
    assert set(table.column("hn_class").to_pylist()) <= set(CLASSES)
    assert set(table.column("hn_source").to_pylist()) == {"embedded"}
    assert set(table.column("bandset").to_pylist()) == {"grz"}
    assert table.schema.field("image_r").type.shape == [64, 64]


def test_features_are_arc_like_in_size_colour_and_brightness():
    params = hn_params(n_per_class=5)
    config, hn = survey_config(params, "p"), hard_negatives_config(params, "p")
    table = simulate_hard_negatives(config, hn, sky_patches(config), np.arange(20))
    rows = table.select(["hn_class", "hn_feature_radius_arcsec", "hn_feature_mean_radius_arcsec", "hn_feature_mag_r",
                         "lrg_mag_r", "lrg_mag_g", "hn_feature_flux_nmgy_g", "hn_feature_flux_nmgy_r",
                         "hn_annulus_snr", "sim_defect"]).to_pylist()
    for r in rows:
        assert 0.6 <= r["hn_feature_radius_arcsec"] <= 3.0
        assert 0.2 < r["hn_feature_mean_radius_arcsec"] < 5.0
        assert 18.0 < r["hn_feature_mag_r"] < 24.5 and 19.5 <= r["lrg_mag_r"] <= 21.5 + 0.2
        if r["hn_class"] in ("ring", "spiral"):   # blue-ish features around a red-ish core
            feature_gr = -2.5 * np.log10(r["hn_feature_flux_nmgy_g"] / r["hn_feature_flux_nmgy_r"])
            assert feature_gr < r["lrg_mag_g"] - r["lrg_mag_r"]
    # rings are what an arc finder sees: annulus S/N well above that of the same stamps without their ring
    faint = hn_params(n_per_class=5, feature_dmag_range={c: [5.9, 6.0] for c in CLASSES})
    bare = simulate_hard_negatives(config, hard_negatives_config(faint, "p"), sky_patches(config), np.arange(20))
    ring = [i for i, r in enumerate(rows) if r["hn_class"] == "ring" and not r["sim_defect"]]
    with_ring = np.array([rows[i]["hn_annulus_snr"] for i in ring])
    without = np.array(bare.column("hn_annulus_snr").to_pylist())[ring]
    assert np.median(with_ring) > 8 and np.median(with_ring) > np.median(without) + 6, (with_ring, without)


def test_same_params_give_byte_identical_outputs_whatever_the_worker_count(stage_run, tmp_path):
    tmp, out_a, _ = stage_run
    out_b, _ = run_stage(tmp_path, "b", hn_params(workers=2))
    files_a = sorted(p.relative_to(out_a) for p in out_a.rglob("*.parquet"))
    assert files_a == sorted(p.relative_to(out_b) for p in out_b.rglob("*.parquet")) and files_a
    for rel in files_a:
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    assert (tmp / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert (tmp / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_outputs_do_not_depend_on_the_cpu_simd_paths_or_threads(stage_run, tmp_path):
    """Cross-machine determinism: numpy's SIMD paths limited to the x86-64-v2 baseline and one
    BLAS/OpenMP thread give this machine's bytes (the visibility fit differs by ~1e-7 between them;
    its S/N is stored to 0.01)."""
    tmp, out_a, _ = stage_run
    params = write_params(tmp_path / "c.yaml", hn_params(workers=1))
    assignment = write_assignment(tmp_path / "c-assignment.parquet", hn_params(workers=1))
    run_on_other_cpu("hard_negatives", "--params", params, "--assignment", assignment, "--out", tmp_path / "c",
                     "--metrics", tmp_path / "c.json", "--gallery", tmp_path / "c.png")
    assert_same_parquet_files(out_a, tmp_path / "c")
    assert (tmp / "a.json").read_text() == (tmp_path / "c.json").read_text()


def test_gallery_is_a_png_with_a_row_per_class(stage_run):
    tmp, _, _ = stage_run
    data = (tmp / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_split_table_problems_are_errors_naming_the_file(tmp_path):
    params = hn_params()
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet: no split assignment table"):
        read_split_map(tmp_path / "missing.parquet")
    ring = write_assignment(tmp_path / "ring.parquet", params, nest=False)
    with pytest.raises(ValueError, match=r"ring\.parquet: row 0 column 'healpix_pixel' = \d+ is not the NESTED"):
        read_split_map(ring)
    both = write_assignment(tmp_path / "both.parquet", params, conflict=True)
    with pytest.raises(ValueError, match=r"both\.parquet: HEALPix pixel \d+ is in two splits \['test', 'train'\]"):
        read_split_map(both)


@pytest.mark.parametrize("key,value,message", [
    ("classes", ["ring", "donut"], r"hard_negatives\.classes = \['ring', 'donut'\]: must be a non-empty list"),
    ("feature_dmag_range", {"ring": [2.0, 1.0]}, r"hard_negatives\.feature_dmag_range = .*must map class names"),
    ("feature_radius_arcsec_range", [0.6], r"hard_negatives\.feature_radius_arcsec_range = \[0\.6\]: must be"),
    ("mode", "real", r"hard_negatives\.mode = 'real': must be 'embedded' or 'galaxy_zoo'"),
])
def test_bad_params_fail_naming_file_and_key(tmp_path, key, value, message):
    params = hn_params(**{key: value})
    path = write_params(tmp_path / "bad.yaml", params)
    assignment = write_assignment(tmp_path / "assignment.parquet", params)
    with pytest.raises(ParamError, match=r"bad\.yaml: " + message):
        hard_negatives.main(["--params", str(path), "--assignment", str(assignment), "--out", str(tmp_path / "o"),
                             "--metrics", str(tmp_path / "m.json"), "--gallery", str(tmp_path / "g.png")])
    assert not (tmp_path / "o").exists()

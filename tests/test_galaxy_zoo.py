"""Real-mode hard negatives: Galaxy Zoo DECaLS selection, `dvc import-url` of the catalogue, the stage end to end.

The fixture catalogue uses the column names of the GZ DECaLS volunteer
catalogue (gz_decals_volunteers_5.csv): iauname, ra, dec, petro_th50,
<question>_total-votes and <question>_<answer>_fraction.
"""
from __future__ import annotations

import json

import healpy as hp
import numpy as np
import pandas as pd
import pytest

from conftest import DVC, cutout_fits_bytes, run_command, write_params
from darkhalo.io import galaxy_zoo
from darkhalo.io.dataset import read_table
from darkhalo.core.params import ParamError
from darkhalo.sim.survey import sky_patches, survey_config
from stages import hard_negatives
from test_hard_negatives import hn_params, write_assignment

CSV_PATH = "/records/4196267/files/gz_decals_volunteers_5.csv"


def gz_fixture(params, n=40, seed=3) -> pd.DataFrame:
    """A GZ-DECaLS-like catalogue whose galaxies sit in the survey's sky patches (healpy NESTED NSIDE 32)."""
    rng = np.random.default_rng(seed)
    patches = sky_patches(survey_config(params, "p"))
    ra, dec = hp.pix2ang(32, patches[np.arange(n) % 4].astype(int), nest=True, lonlat=True)
    frame = pd.DataFrame({
        "iauname": [f"J{i:04d}+0000" for i in range(n)], "ra": ra + rng.uniform(-0.2, 0.2, n),
        "dec": dec + rng.uniform(-0.2, 0.2, n), "petro_th50": rng.uniform(2.0, 8.0, n),
        "smooth-or-featured_smooth_fraction": 0.1,
        "has-spiral-arms_total-votes": 20, "has-spiral-arms_yes_fraction": np.nan,
        "merging_total-votes": 20, "merging_merger_fraction": 0.0, "merging_major-disturbance_fraction": 0.0,
        "disk-edge-on_total-votes": 20, "disk-edge-on_yes_fraction": 0.1})
    frame.loc[0:9, "has-spiral-arms_yes_fraction"] = 0.9                # 10 spirals ...
    frame.loc[8:9, ["merging_merger_fraction", "merging_major-disturbance_fraction"]] = [0.4, 0.3]  # 2 also mergers
    frame.loc[10:15, ["merging_merger_fraction", "merging_major-disturbance_fraction"]] = [0.5, 0.2]  # 6 mergers
    frame.loc[16:20, "disk-edge-on_yes_fraction"] = 0.85               # 5 edge-on disks
    frame.loc[21:24, "has-spiral-arms_yes_fraction"] = 0.95            # spirals with too few votes
    frame.loc[21:24, "has-spiral-arms_total-votes"] = 2
    frame.loc[25:26, "has-spiral-arms_yes_fraction"] = 0.79            # just below the threshold
    return frame


def gz_config(**overrides):
    values = {"target_count": 20, "class_fractions": {"spiral": 0.5, "merger": 0.25, "edge_on": 0.25}, **overrides}
    return galaxy_zoo.galaxy_zoo_config(values, "params.yaml")


def test_selection_applies_thresholds_priority_and_targets(tmp_path):
    path = tmp_path / "gz.csv"
    gz_fixture(hn_params()).to_csv(path, index=False)
    frame = galaxy_zoo.read_catalogue(path)
    selection, report = galaxy_zoo.select(frame, gz_config(), seed=7)
    got = selection.to_pandas()
    assert report["spiral"] == {"candidates": 8, "target": 10, "selected": 8, "shortfall": 2}
    assert report["merger"] == {"candidates": 8, "target": 5, "selected": 5, "shortfall": 0}
    assert report["edge_on"] == {"candidates": 5, "target": 5, "selected": 5, "shortfall": 0}
    spirals = set(got.loc[got.hn_class == "spiral", "hn_source_id"])
    assert spirals == {f"J{i:04d}+0000" for i in range(8)}             # 8, 9 went to merger; 21-26 failed cuts
    assert set(got.loc[got.hn_class == "merger", "hn_source_id"]) <= {f"J{i:04d}+0000" for i in (8, 9, *range(10, 16))}
    assert (got.loc[got.hn_class == "merger", "hn_vote_fraction"] >= 0.6).all()
    again, _ = galaxy_zoo.select(frame, gz_config(), seed=7)
    assert again.equals(selection)                                      # deterministic
    # rings come from a ring catalogue
    rings = pd.DataFrame({"name": ["R1", "R2"], "ra": [10.0, 11.0], "dec": [-5.0, -6.0]})
    rings.to_csv(tmp_path / "rings.csv", index=False)
    with_rings, report = galaxy_zoo.select(frame, gz_config(class_fractions={"spiral": 0.5, "ring": 0.5}), 7,
                                           galaxy_zoo.read_ring_catalogue(tmp_path / "rings.csv"))
    assert report["ring"]["selected"] == 2 and report["ring"]["shortfall"] == 8
    assert set(with_rings.column("hn_source").to_pylist()) == {"galaxy_zoo_decals", "ring_catalogue"}


def test_bad_catalogues_fail_naming_file_row_and_column(tmp_path):
    frame = gz_fixture(hn_params())
    frame.drop(columns=["merging_total-votes"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match=r"a\.csv: missing column\(s\) \['merging_total-votes'\]"):
        galaxy_zoo.read_catalogue(tmp_path / "a.csv")
    bad = frame.copy()
    bad.loc[5, "dec"] = 123.0
    bad.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match=r"b\.csv: row 5 column 'dec' = 123\.0 is not a valid position"):
        galaxy_zoo.read_catalogue(tmp_path / "b.csv")
    bad = frame.astype({"has-spiral-arms_yes_fraction": object})
    bad.loc[3, "has-spiral-arms_yes_fraction"] = "lots"
    bad.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match=r"c\.csv: row 3 column 'has-spiral-arms_yes_fraction' = 'lots' is not"):
        galaxy_zoo.read_catalogue(tmp_path / "c.csv")
    with pytest.raises(ParamError, match=r"hard_negatives\.galaxy_zoo\.class_fractions = .*summing to 1"):
        gz_config(class_fractions={"spiral": 0.5})
    with pytest.raises(ParamError, match=r"hard_negatives\.galaxy_zoo\.cutout\.timeout_s = -1\.0: must be > 0"):
        gz_config(cutout={"timeout_s": -1.0})


def test_dvc_import_url_brings_in_and_versions_the_catalogue(local_http_server, tmp_path):
    frame = gz_fixture(hn_params())
    first = frame.to_csv(index=False).encode()
    second = frame.head(30).to_csv(index=False).encode()
    base, routes = local_http_server({CSV_PATH: [(200, first, 0.0)]})
    repo = tmp_path / "repo"
    (repo / "data" / "external").mkdir(parents=True)
    run_command(["git", "init", "-q"], repo)
    run_command(DVC + ["init", "-q"], repo)
    target = "data/external/gz_decals_volunteers_5.csv"
    run_command(DVC + ["import-url", base + CSV_PATH, target], repo)
    assert (repo / target).read_bytes() == first
    dvc_file = (repo / (target + ".dvc")).read_text()
    assert base + CSV_PATH in dvc_file and "md5:" in dvc_file
    selection, _ = galaxy_zoo.select(galaxy_zoo.read_catalogue(repo / target), gz_config(), seed=7)
    assert selection.num_rows == 18
    # a new upstream version arrives through `dvc update`, recorded in the .dvc file
    routes[CSV_PATH].answers = [(200, second, 0.0)]
    run_command(DVC + ["update", target + ".dvc"], repo)
    assert (repo / target).read_bytes() == second
    assert (repo / (target + ".dvc")).read_text() != dvc_file


def test_real_mode_stage_fetches_selected_cutouts_and_splits_them(local_http_server, tmp_path):
    params = hn_params()
    frame = gz_fixture(params)
    frame.to_csv(tmp_path / "gz.csv", index=False)
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.01, (3, 64, 64)).astype(np.float32)
    invvar = np.full((3, 64, 64), 1e4, np.float32)
    base, routes = local_http_server({"/viewer/cutout.fits": [(200, cutout_fits_bytes(image, invvar), 0.0)]})
    params["hard_negatives"].update({
        "mode": "galaxy_zoo",
        "galaxy_zoo": {"catalogue": str(tmp_path / "gz.csv"), "target_count": 20,
                       "class_fractions": {"spiral": 0.5, "merger": 0.25, "edge_on": 0.25},
                       "cache_dir": str(tmp_path / "cache"),
                       "cutout": {"base_url": base + "/viewer/cutout.fits", "timeout_s": 2.0, "retries": 1,
                                  "backoff_s": 0.01}}})
    params["runtime"]["cutout_workers"] = 2
    path = write_params(tmp_path / "params.yaml", params)
    assignment = write_assignment(tmp_path / "assignment.parquet", params)
    hard_negatives.main(["--params", str(path), "--assignment", str(assignment), "--out", str(tmp_path / "out"),
                         "--metrics", str(tmp_path / "m.json"), "--gallery", str(tmp_path / "g.png")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    table = read_table(str(tmp_path / "out"))
    assert metrics["mode"] == "galaxy_zoo" and metrics["n_written"] == table.num_rows > 0
    assert metrics["n_written"] + metrics["n_dropped"] == 18               # 8 spirals + 5 + 5 selected
    assert metrics["cutouts"]["fetched"] == table.num_rows == routes["/viewer/cutout.fits"].hits
    assert set(table.column("hn_source").to_pylist()) == {"galaxy_zoo_decals"}
    assert set(table.column("region_split").to_pylist()) <= {"train", "val", "test"}
    assert (table.column("cutout_ok").to_numpy() == 1).all()
    img = table.column("image_r").combine_chunks().storage.values.to_numpy().reshape(-1, 64, 64)
    np.testing.assert_array_equal(img[0], image[1])
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"

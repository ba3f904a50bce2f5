"""Anchors: the lenscat catalogue, set selection in the DR10 footprint, the position check, stamp measurements."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_params
from darkhalo.sim.anchors_catalogue import lenscat_csv_path, read_lenscat, select_catalogue
from darkhalo.sim.anchors_checks import CentreGalaxyError, measure_anchor, require_centre_galaxies
from darkhalo.sim.anchors_config import anchors_config
from darkhalo.sim.anchors_positions import AnchorPositionError, angular_separation_arcsec, check_positions
from darkhalo.sim.footprint import DEC_MAX_DEG, galactic_latitude_deg
from darkhalo.core.params import ParamError
from darkhalo.io.stamps import stamps_from_native
from darkhalo.sim.survey import simulate_parents, sky_patches, survey_config
from test_visibility import arc_image


@pytest.fixture(scope="module")
def catalogue():
    return read_lenscat()


@pytest.fixture(scope="module")
def config():
    return anchors_config(tiny_params(), "params.yaml")


def test_lenscat_is_read_from_the_package_folder_without_importing_it(catalogue):
    assert lenscat_csv_path().parts[-3:] == ("lenscat", "data", "catalog.csv")
    assert len(catalogue) == 32838
    assert {"name", "ra", "dec", "zlens", "grading", "lens_type", "ref"} <= set(catalogue.columns)
    assert set(catalogue["grading"]) == {"confident", "probable"}
    assert np.isfinite(catalogue["zlens"]).mean() > 0.3


def test_sets_are_selected_by_reference_and_grading_inside_the_footprint(catalogue, config):
    table, report = select_catalogue(config, catalogue)
    frame = table.to_pandas()
    assert list(report) == ["slacs", "bells", "desi_ls"]
    for name, counts in report.items():
        assert counts["selected"] == (frame.anchor_set == name).sum() > 0
    assert (frame.dec < DEC_MAX_DEG).all() and (np.abs(galactic_latitude_deg(frame.ra, frame.dec)) > 20).all()
    desi = frame[frame.anchor_set == "desi_ls"]
    assert set(desi.grading) == {"confident"}
    assert desi.ref.str.contains("2206.02764|2005.04730|1906.00970").all()
    assert frame[frame.anchor_set == "slacs"].ref.str.contains("0805.1931|0911.2471|0511453|SLACS").all()
    assert frame.lenscat_row.is_unique                         # a lens is in one set only (the first listed)
    assert report["desi_ls"]["claimed_by_earlier_set"] > 0
    assert sum(r["outside_footprint"] for r in report.values()) > 0
    assert set(frame.theta_e_arcsec) == {1.2, 1.1, 1.6}


def anchor_list(catalogue, config, n=6):
    table, _ = select_catalogue(config, catalogue)
    frame = table.to_pandas().groupby("anchor_set").head(2).head(n)
    return frame[["name", "ra", "dec"]].reset_index(drop=True)


def test_an_anchor_30_arcsec_off_fails_naming_it_and_true_positions_pass(catalogue, config, tmp_path):
    good = anchor_list(catalogue, config)
    good.to_csv(tmp_path / "good.csv", index=False)
    offsets = check_positions(tmp_path / "good.csv", catalogue, tolerance_arcsec=1.0)
    assert len(offsets) == len(good) and (offsets.offset_arcsec < 1e-6).all()
    bad = good.copy()
    victim = bad.loc[3, "name"]
    bad.loc[3, "dec"] += 30.0 / 3600.0                          # 30" north
    bad.loc[1, "ra"] += 0.5 / 3600.0 / np.cos(np.radians(bad.loc[1, "dec"]))   # 0.5": within tolerance
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(AnchorPositionError) as err:
        check_positions(tmp_path / "bad.csv", catalogue, tolerance_arcsec=1.0)
    message = str(err.value)
    assert "bad.csv: 1 of 6 anchors are more than 1\" from their catalogue positions" in message
    assert f"{victim}: 30.0\" off" in message
    assert bad.loc[1, "name"] not in message


def test_unknown_names_and_bad_rows_are_errors(catalogue, config, tmp_path):
    frame = anchor_list(catalogue, config, n=2)
    frame.loc[len(frame)] = ["NOT-A-LENS", 10.0, 10.0]
    frame.to_csv(tmp_path / "unknown.csv", index=False)
    with pytest.raises(ValueError, match=r"unknown\.csv: 1 anchor name\(s\) not in the lenscat catalogue: NOT-A-LENS"):
        check_positions(tmp_path / "unknown.csv", catalogue)
    pd.DataFrame({"name": ["a"], "ra": ["x"], "dec": [1.0]}).to_csv(tmp_path / "badra.csv", index=False)
    with pytest.raises(ValueError, match=r"badra\.csv: row 0 \('a'\) column 'ra' = 'x' is not a position"):
        check_positions(tmp_path / "badra.csv", catalogue)


def test_separation_matches_astropy():
    from astropy.coordinates import SkyCoord

    ra1, dec1, ra2, dec2 = 150.0, -30.0, 150.004, -29.997
    expected = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).arcsec
    assert abs(angular_separation_arcsec(ra1, dec1, ra2, dec2) - expected) < 1e-6


def test_measure_anchor_checks_the_centre_and_tiers_by_arc_brightness(config):
    survey = survey_config(tiny_params(n_parents=30), "tiny")
    table = simulate_parents(survey, sky_patches(survey), np.arange(30))
    batch = stamps_from_native(table)
    meta = table.select(["lrg_type", "lrg_mag_r", "sim_defect", "bad_pixel_frac", "psfsize_g", "psfsize_r",
                         "psfsize_z"]).to_pylist()
    i = next(k for k, m in enumerate(meta) if m["lrg_type"] in ("DEV", "SER") and m["lrg_mag_r"] < 21.0
             and not m["sim_defect"] and m["bad_pixel_frac"] == 0)
    image, invvar = batch.image[i].astype(float), batch.invvar[i].astype(float)
    fwhm = np.array([meta[i][f"psfsize_{b}"] for b in "grz"])
    faint = measure_anchor(image + arc_image(0.1, fwhm, 1.5), invvar, fwhm, 1.5, config)
    bright = measure_anchor(image + arc_image(3.0, fwhm, 1.5), invvar, fwhm, 1.5, config)
    assert faint["centre_ok"] and bright["centre_ok"]
    assert faint["tier"] == "B" and bright["tier"] == "A"
    assert bright["visibility_snr"] > config.tier_snr_threshold > faint["visibility_snr"]
    blank = np.random.default_rng(1).standard_normal(image.shape) / np.sqrt(invvar)
    sky = measure_anchor(blank, invvar, fwhm, 1.5, config)
    with pytest.raises(CentreGalaxyError, match=r"1 of 2 anchor stamps have no galaxy at the centre:\n  wrong-place"):
        require_centre_galaxies(["right-place", "wrong-place"], [faint, sky])


@pytest.mark.parametrize("key,value,message", [
    ("sets", {"x": {"ref_contains": []}}, r"anchors\.sets = .*must map set names"),
    ("position_tolerance_arcsec", 0.0, r"anchors\.position_tolerance_arcsec = 0\.0: must be > 0"),
    ("default_theta_e_arcsec", {"slacs": 1.0}, r"anchors\.default_theta_e_arcsec has no radius for set\(s\)"),
    ("cutout", {"retries": -1}, r"anchors\.cutout\.retries = -1: must be >= 0"),
])
def test_bad_anchor_params_name_file_and_key(key, value, message):
    params = tiny_params()
    params["anchors"][key] = value
    with pytest.raises(ParamError, match=r"params\.yaml: " + message):
        anchors_config(params, "params.yaml")

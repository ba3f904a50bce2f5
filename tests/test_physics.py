"""Physics of the embedded survey, each checked against an independent computation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import gammainc, gammaincinv

from darkhalo.io.dataset import read_table
from darkhalo.io.stamps import stamps_from_native
from darkhalo.sim.survey import SurveyConfig, simulate_parents, sky_patches
from darkhalo.core.units import PIXEL_SCALE_ARCSEC, depth_mag_from_psfdepth, psfdepth_from_depth_mag

QUIET = dict(galaxy_density_r22_per_deg2=0.0, star_density_r22_per_deg2=0.0, masked_stamp_frac=0.0,
             nan_stamp_frac=0.0, missing_band_frac=0.0)


def simulate(n, **kw):
    config = SurveyConfig(seed=7, n_parents=n, n_sky_patches=5, **{**QUIET, **kw})
    table = simulate_parents(config, sky_patches(config), np.arange(n))
    return table, stamps_from_native(table)


def test_rendered_galaxy_flux_matches_catalogue_flux():
    size = 256
    table, stamps = simulate(60, stamp_size=size, noise=False)
    cat = table.to_pydict()
    checked = 0
    for i in range(table.num_rows):
        # Independent lower bound on the flux inside the stamp: the light inside the
        # inscribed circle (radius size/2 px) of a Sersic ellipse, from the incomplete gamma.
        if cat["lrg_type"][i] == "PSF":
            inside = 1.0
        else:
            n, re, q = cat["lrg_n_sersic"][i], cat["lrg_reff_arcsec"][i], cat["lrg_q"][i]
            r_circ = (size / 2 - 2) * PIXEL_SCALE_ARCSEC * np.sqrt(q)
            inside = gammainc(2 * n, gammaincinv(2 * n, 0.5) * (r_circ / re) ** (1 / n))
        for j, band in enumerate("grz"):
            ratio = stamps.image[i, j].sum(dtype=np.float64) / cat[f"lrg_flux_nmgy_{band}"][i]
            assert inside - 0.01 < ratio < 1.01, (i, band, ratio, inside)
            if inside > 0.995:
                assert abs(ratio - 1) < 0.01, (i, band, ratio)
                checked += 1
    assert checked >= 100


def test_sky_noise_matches_depth():
    table, stamps = simulate(40)
    cat = table.to_pydict()
    beta = 3.5
    yy, xx = np.mgrid[:64, :64]
    outer = np.hypot(yy - 31.5, xx - 31.5) > 22  # far from the LRG (no neighbours here)
    for i in range(table.num_rows):
        for j, band in enumerate("grz"):
            alpha_pix = cat[f"psfsize_{band}"][i] / PIXEL_SCALE_ARCSEC / (2 * np.sqrt(2 ** (1 / beta) - 1))
            nea_analytic = np.pi * alpha_pix**2 * (2 * beta - 1) / (beta - 1) ** 2
            sigma_expected = 1 / np.sqrt(cat[f"psfdepth_{band}"][i] * nea_analytic)
            measured = stamps.image[i, j][outer].std()
            # ~1300 pixels: the std itself scatters by ~2%; 5% is the tolerance
            assert measured == pytest.approx(sigma_expected, rel=0.05)
            assert np.median(stamps.invvar[i, j]) == pytest.approx(sigma_expected**-2, rel=0.01)


def test_star_fwhm_matches_psfsize():
    # PSF-type LRGs are point sources: their image is the PSF.
    table, stamps = simulate(200, noise=False)
    cat = table.to_pydict()
    stars = [i for i in range(table.num_rows) if cat["lrg_type"][i] == "PSF"]
    assert stars, "no PSF-type LRG drawn"
    for i in stars:
        for j, band in enumerate("grz"):
            fine = ndimage.zoom(stamps.image[i, j].astype(np.float64), 8, order=3)
            area_pix = np.sum(fine >= fine.max() / 2) / 64.0
            fwhm_arcsec = 2 * np.sqrt(area_pix / np.pi) * PIXEL_SCALE_ARCSEC
            assert fwhm_arcsec == pytest.approx(cat[f"psfsize_{band}"][i], rel=0.05)


def test_depth_conversions_round_trip():
    mags = np.array([23.0, 24.2, 25.3])
    assert np.allclose(depth_mag_from_psfdepth(psfdepth_from_depth_mag(mags)), mags)
    # 5 sigma of a point source at the depth magnitude is exactly the flux there
    assert depth_mag_from_psfdepth(25.0 / 1.0**2) == pytest.approx(22.5)


def test_survey_metrics_and_population_match_design(tiny_survey):
    from darkhalo.sim.population import draw_deflector
    from darkhalo.core.units import mag_from_flux_nmgy

    rng = np.random.default_rng(3)
    rows = [draw_deflector(rng, 0.0) for _ in range(20000)]
    mags = {b: mag_from_flux_nmgy([r[f"lrg_flux_nmgy_{b}"] for r in rows]) for b in "grz"}
    design = {"z": [18.7, 19.5, 19.9, 20.2, 20.4], "r": [19.8, 20.7, 21.1, 21.5, 22.0]}
    for band, want in design.items():
        assert np.allclose(np.percentile(mags[band], [5, 25, 50, 75, 95]), want, atol=0.15)
    assert np.allclose(np.percentile(mags["g"] - mags["r"], [5, 25, 50, 75, 95]), [0.79, 1.29, 1.66, 1.90, 2.12],
                       atol=0.05)
    assert np.allclose(np.percentile(mags["r"] - mags["z"], [5, 25, 50, 75, 95]), [0.73, 1.05, 1.23, 1.44, 1.85],
                       atol=0.05)
    types = np.array([r["lrg_type"] for r in rows])
    for name, frac in {"DEV": 0.33, "SER": 0.27, "REX": 0.23, "EXP": 0.13, "PSF": 0.04}.items():
        assert np.mean(types == name) == pytest.approx(frac, abs=0.015)
    cat = read_table(str(tiny_survey), columns=["dec", "psfsize_r"])
    assert max(cat.column("dec").to_pylist()) < 32.375


@pytest.mark.parametrize("size", [64, 33, 17])
def test_convolve_moffat_equals_fftconvolve(size):
    """Real FFTs at the 5-smooth size and the DCT-I transfer give scipy's "same" convolution (17: odd fast size)."""
    from scipy.signal import fftconvolve

    from darkhalo.physics.psf import convolve_moffat, moffat_kernels

    rng = np.random.default_rng(size)
    images, fwhm = rng.random((40, size, size)), rng.uniform(0.9, 2.0, 40)
    expected = fftconvolve(images, moffat_kernels(fwhm, size), mode="same", axes=(1, 2))
    assert np.abs(convolve_moffat(images, fwhm) - expected).max() < 1e-14 * np.abs(expected).max()


@pytest.mark.parametrize("n_sersic", [1.0, 2.7, 4.0])
def test_render_sersic_is_the_pixel_mean_of_the_profile(n_sersic):
    """render_sersic's grid evaluation (quadratic form, square-root chains) is sersic_sb averaged over sub-pixels."""
    from darkhalo.physics.profiles import render_sersic, sersic_sb

    size, ss, box, box_ss = 32, 4, 3, 32
    gal = dict(flux_nmgy=3.0, reff_arcsec=0.9, n_sersic=n_sersic, q=0.6, phi_rad=2.1, x0_arcsec=0.07, y0_arcsec=-0.11)
    image = render_sersic(*([v] for v in gal.values()), size, supersample=ss, centre_supersample=box_ss,
                          centre_box_pix=box)[0]

    def pixel_mean(lo_row, lo_col, npix, factor):
        sub = (np.arange(npix * factor) + 0.5) / factor - 0.5 - (size - 1) / 2.0
        x, y = (sub + lo_col) * PIXEL_SCALE_ARCSEC, (sub + lo_row) * PIXEL_SCALE_ARCSEC
        sb = sersic_sb(x[None, :] - gal["x0_arcsec"], y[:, None] - gal["y0_arcsec"], gal["flux_nmgy"],
                       gal["reff_arcsec"], n_sersic, gal["q"], gal["phi_rad"])
        return sb.reshape(npix, factor, npix, factor).mean(axis=(1, 3)) * PIXEL_SCALE_ARCSEC**2

    expected = pixel_mean(0, 0, size, ss)
    row, col = 14, 15   # the box around the centre: pixel (row 15, column 16)
    expected[row:row + box, col:col + box] = pixel_mean(row, col, box, box_ss)
    assert np.abs(image - expected).max() < 1e-13 * expected.max()

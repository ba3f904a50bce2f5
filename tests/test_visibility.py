"""Arc visibility (lens light modelled and subtracted, annulus S/N) and the centre-galaxy check."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_params
from darkhalo.physics.profiles import pixel_coords_arcsec
from darkhalo.physics.psf import convolve_moffat
from darkhalo.io.stamps import stamps_from_native
from darkhalo.sim.survey import simulate_parents, sky_patches, survey_config
from darkhalo.physics.psf import moffat_alpha_pix
from darkhalo.core.units import PIXEL_SCALE_ARCSEC
from darkhalo.physics.visibility import (_linear_solve, _sersic_images, _varpro_jacobian, arc_visibility, arc_visibility_snr,
                                 centre_galaxy, moffat_mge, sersic_mge, tier)

THETA_E = 1.5


@pytest.fixture(scope="module")
def lens_stamps():
    """Survey LRG stamps (noise on) of a tiny embedded survey; defect-free ones only."""
    config = survey_config(tiny_params(n_parents=40), "tiny")
    table = simulate_parents(config, sky_patches(config), np.arange(40))
    batch = stamps_from_native(table)
    meta = table.select(["lrg_type", "lrg_mag_r", "sim_defect", "psfsize_g", "psfsize_r", "psfsize_z",
                         "bad_pixel_frac"]).to_pylist()
    keep = [i for i, m in enumerate(meta) if not m["sim_defect"] and m["bad_pixel_frac"] == 0]
    return [(batch.image[i].astype(float), batch.invvar[i].astype(float),
             np.array([meta[i][f"psfsize_{b}"] for b in "grz"]), meta[i]) for i in keep]


def arc_image(flux_r_nmgy, psf_fwhm, theta_e=THETA_E, angle_rad=0.7):
    """Our test arc: a Gaussian ring segment (radial sigma 0.1", angular sigma 0.5 rad), blue-ish, PSF-convolved."""
    x, y = pixel_coords_arcsec(64)
    dtheta = np.angle(np.exp(1j * (np.arctan2(y, x) - angle_rad)))
    shape = np.exp(-0.5 * ((np.hypot(x, y) - theta_e) / 0.1) ** 2) * np.exp(-0.5 * (dtheta / 0.5) ** 2)
    shape /= shape.sum()
    colour = {"g": 0.9, "r": 1.0, "z": 0.85}
    return convolve_moffat(np.stack([shape * flux_r_nmgy * colour[b] for b in "grz"]), np.asarray(psf_fwhm))


def test_tier_moves_from_b_to_a_as_the_arc_brightens(lens_stamps):
    lenses = [s for s in lens_stamps if s[3]["lrg_type"] in ("DEV", "SER")][:3]
    fluxes = [0.0, 0.3, 1.0, 3.0]   # r-band arc flux (nmgy): no arc, 23.8, 22.5, 21.3 mag
    table = np.array([[arc_visibility_snr(img + arc_image(f, fwhm, THETA_E), iv, fwhm, THETA_E) for f in fluxes]
                      for img, iv, fwhm, _ in lenses])
    for snr in table:
        tiers = [tier(s, 10.0) for s in snr]
        assert tiers[0] == "B" and tiers[-1] == "A", snr
        assert tiers == sorted(tiers, reverse=True), snr   # B ... B A ... A: one crossing
        assert snr[-1] > snr[0] + 20, snr
    median = np.median(table, axis=0)
    assert all(b > a for a, b in zip(median, median[1:])), table


def test_without_arcs_the_annulus_snr_is_noise_like(lens_stamps):
    snr = np.array([arc_visibility(img, iv, fwhm, THETA_E).snr for img, iv, fwhm, _ in lens_stamps[:12]])
    assert np.median(np.abs(snr)) < 3.0, snr
    # the lens light is modelled: its residual flux is a small fraction of the lens flux
    img, iv, fwhm, meta = lens_stamps[0]
    fit = arc_visibility(img, iv, fwhm, THETA_E).lens
    assert abs(fit.x0_arcsec) < 0.3 and abs(fit.y0_arcsec) < 0.3
    assert 0.5 < fit.chi2_per_pixel < 2.0


def test_centre_galaxy_found_on_lens_stamps_and_not_on_blank_or_offset_ones(lens_stamps):
    bright = [s for s in lens_stamps if s[3]["lrg_mag_r"] < 21.0][:3]
    for img, iv, fwhm, _ in bright:
        assert centre_galaxy(img, iv, fwhm).ok
    img, iv, fwhm, _ = bright[0]
    rng = np.random.default_rng(0)
    blank = rng.standard_normal(img.shape) / np.sqrt(iv)
    got = centre_galaxy(blank, iv, fwhm)
    assert not got.ok and got.snr < 5
    # the same galaxy 20 pixels (5.2") from the centre: an anchor at the wrong coordinates
    moved = np.roll(img, 20, axis=2)
    assert not centre_galaxy(moved, iv, fwhm).ok


def test_psf_and_sersic_expansions_are_accurate():
    weights, sigmas = moffat_mge(3.5)
    assert abs(weights.sum() - 1) < 1e-12
    r = np.linspace(0, 3, 301)
    moffat = 2.5 / np.pi * (1 + r**2) ** -3.5
    mge = (weights * np.exp(-0.5 * (r[:, None] / sigmas) ** 2) / (2 * np.pi * sigmas**2)).sum(1)
    assert np.max(np.abs(mge - moffat)) < 0.01 * moffat[0]
    for n in (1.0, 2.5, 4.0):
        assert 0.97 < sersic_mge(n).sum() < 1.01


def test_lens_light_jacobian_is_the_derivative_of_the_fitted_residual():
    """Analytic d(model)/d(e1, e2, log R_e, n) and its variable projection against central differences."""
    x, y = pixel_coords_arcsec(64)
    disc = np.hypot(x, y) < 4.0
    dx, dy = x[disc] - 0.07, y[disc] + 0.04
    quad = np.stack([dx * dx, 2 * dx * dy, dy * dy])
    weights, sig_alpha = moffat_mge(3.5)
    psf_s2 = np.array([(sig_alpha * moffat_alpha_pix(f, 3.5) * PIXEL_SCALE_ARCSEC) ** 2 for f in (1.3, 1.1)])
    rng = np.random.default_rng(3)
    sw = rng.uniform(5.0, 20.0, (2, len(dx)))
    sw[1, :40] = 0.0                                      # pixels not fitted in one band
    # round, elongated, clipped (|e| > 2/3), between the n grid nodes
    for params in ([0.0, 0.0, np.log(0.8), 3.04], [0.3, -0.2, np.log(1.5), 4.05], [0.6, 0.5, np.log(0.3), 1.33]):
        truth = _sersic_images(quad, [0.1, 0.05, np.log(0.9), 3.5], psf_s2, weights)
        data = np.array([[2.0], [5.0]]) * truth + 0.01 + rng.standard_normal(truth.shape) / sw.clip(1.0)

        def chi(p):
            units = _sersic_images(quad, p, psf_s2, weights)
            return np.where(sw > 0, (data - _linear_solve(units, data, sw)[2]) * sw, 0.0)

        units, d_units = _sersic_images(quad, params, psf_s2, weights, jacobian=True)
        flux, _, fitted = _linear_solve(units, data, sw)
        jac = _varpro_jacobian(units, d_units, sw, flux, chi(params))
        for i in range(4):
            step = np.zeros(4)
            step[i] = 1e-5
            numeric_image = (_sersic_images(quad, params + step, psf_s2, weights)
                             - _sersic_images(quad, params - step, psf_s2, weights)) / 2e-5
            numeric_chi = (chi(params + step) - chi(params - step)) / 2e-5
            assert np.allclose(d_units[..., i], numeric_image, rtol=1e-5, atol=1e-6 * np.abs(numeric_image).max())
            assert np.allclose(jac[..., i], numeric_chi, rtol=1e-4, atol=1e-5 * np.abs(numeric_chi).max())
    # the final model's float32 exponentials: relative error ~1e-7
    fast = _sersic_images(quad, [0.3, -0.2, np.log(1.5), 4.05], psf_s2, weights, exp_float32=True)
    exact = _sersic_images(quad, [0.3, -0.2, np.log(1.5), 4.05], psf_s2, weights)
    assert np.max(np.abs(fast - exact)) < 1e-6 * exact.max()


def test_bad_inputs_fail_loudly(lens_stamps):
    img, iv, fwhm, _ = lens_stamps[0]
    with pytest.raises(ValueError, match="must both be"):
        arc_visibility(img, iv[:2], fwhm, 1.0)
    with pytest.raises(ValueError, match="theta_e_arcsec must be >= 0"):
        arc_visibility(img, iv, fwhm, -1.0)
    with pytest.raises(ValueError, match="psf_fwhm_arcsec must be positive"):
        arc_visibility(img, iv, [1.2, np.nan, 1.1], 1.0)
    with pytest.raises(ValueError, match="tier of a non-finite"):
        tier(float("nan"), 10.0)

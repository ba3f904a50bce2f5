"""DR10-like observing conditions and the LRG deflector population (docs/domain.md, "Units and conventions").

Distributions are calibrated on the users' DR10 LRG parent sample: quantile
functions interpolate its 5/25/50/75/95 percentiles; a Gaussian copula ties
z mag, r-z and g-r together.  Magnitudes drawn here are extinction-corrected
(as in the LRG selection); observed fluxes include Milky Way extinction.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from darkhalo.core.units import BANDS, catalogue_precision, flux_nmgy_from_mag, mw_transmission, psfdepth_from_depth_mag

PERCENTILES = np.array([0.0, 5.0, 25.0, 50.0, 75.0, 95.0, 100.0])
# (0 and 100 are tail ends chosen by us; the inner five are the users' figures)
Z_MAG_KNOTS = np.array([17.6, 18.7, 19.5, 19.9, 20.2, 20.37, 20.40])  # selection z < 20.4
RZ_KNOTS = np.array([0.45, 0.73, 1.05, 1.23, 1.44, 1.85, 2.2])
GR_KNOTS = np.array([0.35, 0.79, 1.29, 1.66, 1.90, 2.12, 2.3])
# copula correlation of (z mag, r-z, g-r); -0.1 best reproduces the r-mag percentiles (within 0.11 mag)
COPULA_CORR = np.array([[1.0, -0.1, 0.05], [-0.1, 1.0, 0.6], [0.05, 0.6, 1.0]])

TRACTOR_TYPES = ("DEV", "SER", "REX", "EXP", "PSF")
TRACTOR_TYPE_FRACTIONS = (0.33, 0.27, 0.23, 0.13, 0.04)

PSF_FWHM_MEDIAN_ARCSEC = {"g": 1.3, "r": 1.2, "z": 1.1}
DEPTH_MAG_MEDIAN = {
    "decals": {"g": 24.8, "r": 24.2, "z": 23.35},
    "des": {"g": 25.3, "r": 25.1, "z": 23.85},
}


def quantile_draw(uniform, knots):
    """Inverse-CDF draw from a piecewise-linear quantile function through ``knots``."""
    return np.interp(100.0 * np.asarray(uniform), PERCENTILES, knots)


def draw_observing_conditions(rng: np.random.Generator, depth_mode: str, gal_b_deg: float) -> dict:
    """PSF FWHM (arcsec), psfdepth (nmgy^-2) and E(B-V) of one cutout.

    Seeing is correlated between bands (same nights); depths scatter by 0.25 mag
    with a common component; E(B-V) scales as csc|b| with log-normal scatter.
    """
    seeing_r = float(np.clip(PSF_FWHM_MEDIAN_ARCSEC["r"] * np.exp(0.15 * rng.standard_normal()), 0.8, 2.2))
    out = {}
    for band in BANDS:
        ratio = PSF_FWHM_MEDIAN_ARCSEC[band] / PSF_FWHM_MEDIAN_ARCSEC["r"]
        jitter = 1.0 if band == "r" else float(np.exp(0.04 * rng.standard_normal()))
        out[f"psfsize_{band}"] = float(np.clip(seeing_r * ratio * jitter, 0.7, 2.5))
    common = rng.standard_normal()
    for band in BANDS:
        dmag = 0.25 * (0.7 * common + np.sqrt(1 - 0.49) * rng.standard_normal())
        out[f"psfdepth_{band}"] = float(psfdepth_from_depth_mag(DEPTH_MAG_MEDIAN[depth_mode][band] + dmag))
    sin_b = max(np.sin(np.radians(abs(gal_b_deg))), 0.2)
    out["ebv"] = float(np.clip(0.016 / sin_b * np.exp(0.35 * rng.standard_normal()), 0.002, 0.4))
    return catalogue_precision(out)


def draw_deflector(rng: np.random.Generator, ebv: float) -> dict:
    """Tractor type, observed grz fluxes (nmgy) and light-profile shape of one LRG."""
    lrg_type = TRACTOR_TYPES[rng.choice(len(TRACTOR_TYPES), p=TRACTOR_TYPE_FRACTIONS)]
    gauss = np.linalg.cholesky(COPULA_CORR) @ rng.standard_normal(3)
    u = ndtr(gauss)
    z_mag = float(quantile_draw(u[0], Z_MAG_KNOTS))
    r_mag = z_mag + float(quantile_draw(u[1], RZ_KNOTS))
    g_mag = r_mag + float(quantile_draw(u[2], GR_KNOTS))
    mags = {"g": g_mag, "r": r_mag, "z": z_mag}
    out = {"lrg_type": lrg_type}
    for band in BANDS:
        out[f"lrg_flux_nmgy_{band}"] = float(flux_nmgy_from_mag(mags[band]) * mw_transmission(ebv, band))
    # size-luminosity relation (brighter LRGs are larger), scatter 0.18 dex
    log_re = np.log10(0.9) - 0.15 * (z_mag - 19.9) + 0.18 * rng.standard_normal()
    if lrg_type == "PSF":
        reff, n_sersic, q = 0.0, 0.0, 1.0
    elif lrg_type == "REX":
        reff, n_sersic, q = float(np.clip(10 ** (log_re - 0.3), 0.15, 1.5)), 1.0, 1.0
    else:
        reff = float(np.clip(10**log_re, 0.25, 5.0))
        n_sersic = {"DEV": 4.0, "EXP": 1.0}.get(lrg_type) or float(np.clip(3.5 + rng.standard_normal(), 1.0, 6.0))
        q = float(np.clip(1.0 - abs(0.25 * rng.standard_normal()), 0.3, 1.0))
    out.update(lrg_reff_arcsec=reff, lrg_n_sersic=n_sersic, lrg_q=q,
               lrg_phi_rad=float(rng.uniform(0.0, np.pi)))
    return catalogue_precision(out)


def draw_neighbours(rng: np.random.Generator, stamp_half_arcsec: float, gal_b_deg: float,
                    galaxy_density_r22_per_deg2: float, star_density_r22_per_deg2: float) -> dict:
    """Faint galaxies and stars around one LRG, at sky densities from number counts.

    Galaxies: N(<r) = density_r22 * 10^(0.4 (r - 22)) for 18 < r < 24.5.
    Stars: N(<r) = density_r22 * 10^(0.2 (r - 22)) / sin|b| for 16 < r < 23.
    Positions are uniform over the stamp plus a 1" margin, at least 1.5" from the centre.
    Returns arrays of positions (arcsec), observed grz fluxes (nmgy) and shapes.
    """
    side = 2.0 * (stamp_half_arcsec + 1.0)
    area_deg2 = (side / 3600.0) ** 2
    sin_b = max(np.sin(np.radians(abs(gal_b_deg))), 0.2)

    def n_expected(density_r22, slope, mag_lo, mag_hi):
        return density_r22 * (10 ** (slope * (mag_hi - 22)) - 10 ** (slope * (mag_lo - 22))) * area_deg2

    def power_law_mags(count, slope, mag_lo, mag_hi):
        lo, hi = 10 ** (slope * mag_lo), 10 ** (slope * mag_hi)
        return np.log10(lo + rng.uniform(size=count) * (hi - lo)) / slope

    def positions(count):
        xy = np.empty((0, 2))
        while len(xy) < count:
            cand = rng.uniform(-side / 2, side / 2, size=(2 * count, 2))
            xy = np.vstack([xy, cand[np.hypot(cand[:, 0], cand[:, 1]) > 1.5]])
        return xy[:count]

    n_gal = rng.poisson(n_expected(galaxy_density_r22_per_deg2, 0.4, 18.0, 24.5))
    r_gal = power_law_mags(n_gal, 0.4, 18.0, 24.5)
    gal = {
        "xy_arcsec": positions(n_gal),
        "mag_r": r_gal,
        "gr": rng.normal(0.7, 0.3, n_gal),
        "rz": rng.normal(0.5, 0.3, n_gal),
        "reff_arcsec": np.clip(10 ** (-0.15 - 0.1 * (r_gal - 22) + 0.15 * rng.standard_normal(n_gal)), 0.1, 3.0),
        "n_sersic": rng.uniform(0.8, 2.5, n_gal),
        "q": rng.uniform(0.2, 1.0, n_gal),
        "phi_rad": rng.uniform(0.0, np.pi, n_gal),
    }
    n_star = rng.poisson(n_expected(star_density_r22_per_deg2 / sin_b, 0.2, 16.0, 23.0))
    gr_star = rng.uniform(0.3, 1.4, n_star)
    star = {
        "xy_arcsec": positions(n_star),
        "mag_r": power_law_mags(n_star, 0.2, 16.0, 23.0),
        "gr": gr_star,
        "rz": np.clip(0.9 * gr_star - 0.2 + 0.15 * rng.standard_normal(n_star), -0.3, 2.0),
    }
    return {"galaxies": catalogue_precision(gal), "stars": catalogue_precision(star)}


def band_fluxes_nmgy(mag_r, gr, rz, ebv):
    """Observed (extincted) g, r, z fluxes (nmgy) from r magnitude and colours."""
    mag_r = np.asarray(mag_r, dtype=np.float64)
    mags = {"g": mag_r + gr, "r": mag_r, "z": mag_r - rz}
    return {band: flux_nmgy_from_mag(mags[band]) * mw_transmission(ebv, band) for band in BANDS}

"""Units and photometric conventions (docs/domain.md): the one definition of each.

Fluxes are in nanomaggies (AB zero point 22.5), angles on the sky in arcsec,
pixel scale 0.262 arcsec/px.  ``psfdepth`` is the Tractor point-source inverse
variance in nanomaggies^-2.
"""
from __future__ import annotations

import numpy as np

PIXEL_SCALE_ARCSEC = 0.262
AB_ZP_NMGY = 22.5
BANDS = ("g", "r", "z")
STAMP_SIZE_PIX = 64

# Legacy Surveys DR10 (DECam) Galactic extinction coefficients A_b / E(B-V).
EXTINCTION_COEFF = {"g": 3.214, "r": 2.165, "z": 1.211}


def mag_from_flux_nmgy(flux_nmgy):
    """AB magnitude of a flux in nanomaggies (NaN for flux <= 0)."""
    flux = np.asarray(flux_nmgy, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, AB_ZP_NMGY - 2.5 * np.log10(flux), np.nan)


def flux_nmgy_from_mag(mag):
    """Flux in nanomaggies of an AB magnitude."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - AB_ZP_NMGY))


def psfdepth_from_depth_mag(depth_mag_5sigma):
    """Tractor ``psfdepth`` (nmgy^-2) of a 5-sigma point-source depth magnitude."""
    sigma_nmgy = flux_nmgy_from_mag(depth_mag_5sigma) / 5.0
    return 1.0 / sigma_nmgy**2


def depth_mag_from_psfdepth(psfdepth):
    """5-sigma point-source depth magnitude: 22.5 - 2.5 log10(5 / sqrt(psfdepth))."""
    return AB_ZP_NMGY - 2.5 * np.log10(5.0 / np.sqrt(np.asarray(psfdepth, dtype=np.float64)))


def pixel_sigma_nmgy(psfdepth, nea_pix):
    """Per-pixel background sigma (nmgy) giving point-source inverse variance ``psfdepth``.

    For background-limited optimal (PSF-weighted) photometry
    ``psfdepth = sum(P_i^2) / sigma^2 = 1 / (NEA * sigma^2)``, with the
    noise-equivalent area NEA = 1 / sum(P_i^2) in pixels.
    """
    return 1.0 / np.sqrt(np.asarray(psfdepth, dtype=np.float64) * np.asarray(nea_pix, dtype=np.float64))


def mw_transmission(ebv, band):
    """Milky Way transmission (flux factor <= 1) in ``band`` for reddening E(B-V)."""
    return 10.0 ** (-0.4 * EXTINCTION_COEFF[band] * np.asarray(ebv, dtype=np.float64))


def pixel_area_arcsec2(pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC) -> float:
    """Solid angle of one pixel in arcsec^2."""
    return pixel_scale_arcsec**2


def catalogue_precision(value):
    """``value`` (float, array or dict of them) rounded to float32 precision (7 significant digits), as float64.

    Catalogue quantities computed with numpy's transcendental functions (exp, sin, log10, **) differ in
    their last bits between CPUs (each picks its own SIMD implementation); rounding each one where it is
    computed makes stored columns, and every stamp rendered from them, the same on any machine (a value
    changes only when the two machines straddle a float32 rounding boundary: ~2^-29 per value).
    """
    if isinstance(value, dict):
        return {k: catalogue_precision(v) if isinstance(v, (float, np.floating, np.ndarray)) else v
                for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim:
        return value.astype(np.float32).astype(np.float64) if value.dtype.kind == "f" else value
    return float(np.float32(value))


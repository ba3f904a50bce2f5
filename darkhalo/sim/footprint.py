"""A DR10-like sky footprint and positions in it (healpy).

DR10 south: Dec < +32.375 deg, here also Dec > -68 deg and |b| > 20 deg.  Parents
are clustered into ``n_patches`` random HEALPix NSIDE=32 pixels (as a real
parent sample is, a few LRGs per square degree of sky actually observed), so
region-disjoint splits have whole regions to assign.  The DES-like deep mode
covers the approximate DES wide-field area.

healpy is imported inside the functions that call it: at module level it loads matplotlib and
astropy (~1.5 s) into every stage that only needs this module's constants.
"""
from __future__ import annotations

import numpy as np

DEC_MAX_DEG = 32.375
DEC_MIN_DEG = -68.0
MIN_ABS_GAL_B_DEG = 20.0
PATCH_NSIDE = 32
_FINE_ORDER = 10  # sub-pixels per patch: 4**10 (~6.4" wide at NSIDE 32768)


def galactic_latitude_deg(ra_deg, dec_deg):
    """Galactic latitude b (deg) of equatorial (ICRS-like) positions."""
    import healpy as hp
    _, b = hp.Rotator(coord=["C", "G"])(np.asarray(ra_deg, float), np.asarray(dec_deg, float), lonlat=True)
    return b


def in_dr10_footprint(ra_deg, dec_deg) -> np.ndarray:
    """True where (ra, dec) in deg is inside the footprint: -68 < Dec < +32.375 deg and |b| > 20 deg."""
    ra_deg, dec_deg = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    gal_b = galactic_latitude_deg(ra_deg, dec_deg)
    return (dec_deg < DEC_MAX_DEG) & (dec_deg > DEC_MIN_DEG) & (np.abs(gal_b) > MIN_ABS_GAL_B_DEG)


def footprint_patches(n_patches: int, rng: np.random.Generator) -> np.ndarray:
    """``n_patches`` distinct NSIDE=32 NESTED pixel indices inside the footprint."""
    import healpy as hp
    pix = np.arange(hp.nside2npix(PATCH_NSIDE))
    ra, dec = hp.pix2ang(PATCH_NSIDE, pix, nest=True, lonlat=True)
    inside = in_dr10_footprint(ra, dec) & (dec < DEC_MAX_DEG - 1.0)   # patch centres 1 deg clear of the Dec edge
    candidates = pix[inside]
    if n_patches > len(candidates):
        raise ValueError(f"n_sky_patches = {n_patches} exceeds the {len(candidates)} NSIDE={PATCH_NSIDE} "
                         "pixels of the footprint")
    return np.sort(rng.choice(candidates, size=n_patches, replace=False))


def position_in_patch(patch_nest: int, rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly random (ra_deg, dec_deg) inside one NSIDE=32 NESTED pixel."""
    import healpy as hp
    nside_fine = PATCH_NSIDE * 2**_FINE_ORDER
    sub = int(patch_nest) * 4**_FINE_ORDER + int(rng.integers(4**_FINE_ORDER))
    ra, dec = hp.pix2ang(nside_fine, sub, nest=True, lonlat=True)
    half_deg = 0.5 * hp.nside2resol(nside_fine, arcmin=True) / 60.0
    dec = float(np.clip(dec + rng.uniform(-half_deg, half_deg), -90.0, 90.0))
    ra = float((ra + rng.uniform(-half_deg, half_deg) / max(np.cos(np.radians(dec)), 1e-3)) % 360.0)
    return ra, dec


def depth_mode(ra_deg: float, dec_deg: float) -> str:
    """'des' inside the approximate DES wide footprint, else 'decals'."""
    in_des = (dec_deg < -15.0) and (dec_deg > -65.0) and (ra_deg > 300.0 or ra_deg < 105.0)
    return "des" if in_des else "decals"


def brickname(ra_deg: float, dec_deg: float) -> str:
    """Legacy Surveys-style brick name (0.25 x 0.25 deg bricks), e.g. '1234p567'.

    Approximates the DR10 brick grid: rows every 0.25 deg in Dec, equal-width
    columns in RA per row; the name encodes the brick centre in 0.1 deg units.
    """
    dec_c = np.round(dec_deg / 0.25) * 0.25
    n_cols = max(int(np.ceil(360.0 * np.cos(np.radians(dec_c)) / 0.25)), 1)
    width = 360.0 / n_cols
    ra_c = (np.floor((ra_deg % 360.0) / width) + 0.5) * width
    sign = "p" if dec_c >= 0 else "m"
    return f"{int(round(ra_c * 10)):04d}{sign}{int(round(abs(dec_c) * 10)):03d}"

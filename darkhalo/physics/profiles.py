"""Elliptical Sersic light profiles rendered to pixels, batched over galaxies (numpy).

Conventions are lenstronomy's (stated in ARCHITECTURE.md): position angle
``phi_rad`` of the major axis counter-clockwise from the +x (column) axis,
axis ratio ``q`` = b/a, elliptical radius R = sqrt(q x'^2 + y'^2 / q), so
``reff_arcsec`` is the half-light radius of the circularised (geometric-mean)
ellipse, with lenstronomy's b_n = 1.9992 n - 0.3271 (so that any profile here
is redrawn exactly by lenstronomy's SERSIC_ELLIPSE; b_n is within 0.1% of the
exact value for n >= 1).  Amplitudes are total fluxes in nanomaggies; the conversion to
surface brightness (nmgy / arcsec^2) happens only in ``sersic_sb``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from darkhalo.core.units import PIXEL_SCALE_ARCSEC


def sersic_b(n_sersic):
    """lenstronomy's b_n = 1.9992 n - 0.3271, floored at 1e-5 (dimensionless): the one definition.

    ``n_sersic`` is a numpy array or a torch tensor (the injection engine's); the result is of the same kind.
    """
    return (1.9992 * n_sersic - 0.3271).clip(min=1e-5)


def sersic_sb_at_reff(flux_nmgy, reff_arcsec, n_sersic):
    """Surface brightness at R_e (nmgy/arcsec^2) of a Sersic profile of total flux ``flux_nmgy``."""
    n = np.asarray(n_sersic, dtype=np.float64)
    b = sersic_b(n)
    log_total_per_ie = (np.log(2.0 * np.pi * n * np.asarray(reff_arcsec, dtype=np.float64) ** 2)
                        + b + gammaln(2.0 * n) - 2.0 * n * np.log(b))
    return np.asarray(flux_nmgy, dtype=np.float64) * np.exp(-log_total_per_ie)


def elliptical_radius(dx_arcsec, dy_arcsec, q, phi_rad):
    """lenstronomy's elliptical radius sqrt(q x'^2 + y'^2/q) of offsets from the centre."""
    cos_phi, sin_phi = np.cos(phi_rad), np.sin(phi_rad)
    xp = cos_phi * dx_arcsec + sin_phi * dy_arcsec
    yp = -sin_phi * dx_arcsec + cos_phi * dy_arcsec
    return np.sqrt(q * xp**2 + yp**2 / q)


def sersic_sb(dx_arcsec, dy_arcsec, flux_nmgy, reff_arcsec, n_sersic, q, phi_rad):
    """Surface brightness (nmgy/arcsec^2) at offsets (arcsec) from the profile centre."""
    radius = elliptical_radius(dx_arcsec, dy_arcsec, q, phi_rad)
    ie = sersic_sb_at_reff(flux_nmgy, reff_arcsec, n_sersic)
    b = sersic_b(np.asarray(n_sersic, dtype=np.float64))
    return ie * np.exp(-b * ((radius / reff_arcsec) ** (1.0 / n_sersic) - 1.0))


def pixel_coords_arcsec(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arcsec of pixel centres, each (size, size); 0 at the stamp centre (size-1)/2, y along rows."""
    axis = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * PIXEL_SCALE_ARCSEC
    return np.meshgrid(axis, axis)


def _subpixel_grid(lo_pix, npix, supersample, size, pixel_scale_arcsec):
    """Sub-pixel centre coordinates (arcsec) covering pixels [lo, lo+npix) along one axis."""
    sub = (np.arange(npix * supersample, dtype=np.float64) + 0.5) / supersample - 0.5
    return (np.asarray(lo_pix)[..., None] + sub - (size - 1) / 2.0) * pixel_scale_arcsec


def _sersic_on_grid(xs, ys, flux_nmgy, reff_arcsec, n_sersic, q, phi_rad, x0_arcsec, y0_arcsec):
    """Surface brightness (ny, nx) of one Sersic profile on the grid ``xs`` (nx,) x ``ys`` (ny,) (arcsec).

    The same profile as ``sersic_sb``, in fewer passes over the grid: (R/R_e)^2 is the quadratic
    form a dx^2 + 2 h dx dy + c dy^2 (a and c terms along one axis each, one outer product), and
    (R/R_e)^(1/n) = ((R/R_e)^2)^(1/2n) is a chain of square roots (exact) for n = 1, 2, 4.
    """
    dx, dy = xs - x0_arcsec, ys - y0_arcsec
    cos_phi, sin_phi, inv_re2 = np.cos(phi_rad), np.sin(phi_rad), 1.0 / reff_arcsec**2
    a = (q * cos_phi**2 + sin_phi**2 / q) * inv_re2
    c = (q * sin_phi**2 + cos_phi**2 / q) * inv_re2
    two_h = 2.0 * cos_phi * sin_phi * (q - 1.0 / q) * inv_re2
    t = np.multiply.outer(two_h * dy, dx)
    t += a * dx**2
    t += (c * dy**2)[:, None]
    sqrt_chain = {1.0: 1, 2.0: 2, 4.0: 3}.get(float(n_sersic))
    if sqrt_chain is None:
        np.power(t, 0.5 / n_sersic, out=t)
    else:
        for _ in range(sqrt_chain):
            np.sqrt(t, out=t)
    b = sersic_b(np.float64(n_sersic))
    t -= 1.0
    t *= -b
    np.exp(t, out=t)
    t *= sersic_sb_at_reff(flux_nmgy, reff_arcsec, n_sersic)
    return t


def _pixel_flux(sb, supersample, area):
    """Flux per pixel: the mean of each ``supersample``^2 block of ``sb`` (ny * s, nx * s) times ``area``.

    Sums over the sub-rows (a reduction along a middle axis), then over the sub-columns as strided
    slices: numpy's reduction over a short innermost axis is ~6x slower.
    """
    rows = sb.reshape(sb.shape[0] // supersample, supersample, sb.shape[1]).sum(axis=1)
    total = rows[:, 0::supersample].copy()
    for k in range(1, supersample):
        total += rows[:, k::supersample]
    return total * (area / supersample**2)


def render_sersic(flux_nmgy, reff_arcsec, n_sersic, q, phi_rad, x0_arcsec, y0_arcsec, size,
                  supersample=4, centre_supersample=32, centre_box_pix=3,
                  pixel_scale_arcsec=PIXEL_SCALE_ARCSEC):
    """Flux per pixel (nmgy), shape (B, size, size), of B Sersic galaxies (no PSF).

    Each pixel is the mean of ``supersample``^2 sub-pixel samples times the pixel
    area; the ``centre_box_pix``^2 pixels around each centre, where the cusp of a
    high-n profile lives, are redone with ``centre_supersample``^2 samples.
    One galaxy at a time (its grid stays in cache).
    """
    params = [np.atleast_1d(np.asarray(p, dtype=np.float64))
              for p in (flux_nmgy, reff_arcsec, n_sersic, q, phi_rad, x0_arcsec, y0_arcsec)]
    n_gal = params[0].shape[0]
    out = np.empty((n_gal, size, size), dtype=np.float64)
    area = pixel_scale_arcsec**2
    full_axis = _subpixel_grid(0, size, supersample, size, pixel_scale_arcsec)
    half = centre_box_pix // 2
    col_c = np.rint(params[5] / pixel_scale_arcsec + (size - 1) / 2.0).astype(int)
    row_c = np.rint(params[6] / pixel_scale_arcsec + (size - 1) / 2.0).astype(int)
    lo_col = np.clip(col_c - half, 0, size - centre_box_pix)
    lo_row = np.clip(row_c - half, 0, size - centre_box_pix)
    xs = _subpixel_grid(lo_col, centre_box_pix, centre_supersample, size, pixel_scale_arcsec)
    ys = _subpixel_grid(lo_row, centre_box_pix, centre_supersample, size, pixel_scale_arcsec)
    for i in range(n_gal):
        galaxy = [float(p[i]) for p in params]
        out[i] = _pixel_flux(_sersic_on_grid(full_axis, full_axis, *galaxy), supersample, area)
        # the central box, redone with centre_supersample^2 samples per pixel
        out[i, lo_row[i]:lo_row[i] + centre_box_pix, lo_col[i]:lo_col[i] + centre_box_pix] = _pixel_flux(
            _sersic_on_grid(xs[i], ys[i], *galaxy), centre_supersample, area)
    return out

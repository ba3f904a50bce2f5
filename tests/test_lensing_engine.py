"""The torch lensing engine against lenstronomy and against analytic lensing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate

from darkhalo.sim.injection import render_columns
from darkhalo.physics.lensing import RenderSettings, sersic_unit_sb
from darkhalo.physics.lenstronomy_reference import random_arc_rows, redraw_arc, rows_to_columns
from darkhalo.physics.profiles import sersic_sb_at_reff


@pytest.mark.parametrize("n_clumps,n_rows,seed", [(0, 150, 1), (2, 60, 2)])
def test_engine_matches_lenstronomy(n_clumps, n_rows, seed):
    rows = random_arc_rows(n_rows, np.random.default_rng(seed), n_clumps)
    ours, _ = render_columns(rows_to_columns(rows), RenderSettings(supersample=4))
    worst_peak, worst_flux = 0.0, 0.0
    for row, arc in zip(rows, ours):
        ref = redraw_arc(row)
        for j in range(3):
            worst_peak = max(worst_peak, np.abs(arc[j] - ref[j]).max() / ref[j].max())
            worst_flux = max(worst_flux, abs(arc[j].sum() / ref[j].sum() - 1))
    assert worst_peak <= 0.01, worst_peak
    assert worst_flux <= 0.005, worst_flux


def test_surface_brightness_units():
    # Unlensed (theta_E ~ 0) round Sersic: the pixel at R_e holds SB(R_e) * pixel area,
    # where SB(R_e) follows from the total flux through the analytic normalisation.
    flux, reff, n = 3.0, 1.5, 1.0
    p = {k: torch.tensor([v], dtype=torch.float64)[:, None, None] for k, v in dict(
        src_x_arcsec=0.0, src_y_arcsec=0.0, src_reff_arcsec=reff, src_n_sersic=n, src_q=1.0, src_phi_rad=0.0).items()}
    sb_at_reff = float(sersic_unit_sb(torch.tensor(reff, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), p)) * flux
    assert sb_at_reff == pytest.approx(float(sersic_sb_at_reff(flux, reff, n)), rel=1e-6)  # nmgy / arcsec^2
    grid = np.linspace(-40, 40, 1601)
    xx, yy = np.meshgrid(grid, grid)
    unit = sersic_unit_sb(torch.tensor(xx), torch.tensor(yy), p).numpy()
    assert unit.sum() * (grid[1] - grid[0]) ** 2 == pytest.approx(1.0, rel=2e-3)  # integrates to the total flux
    row = dict(theta_e_arcsec=1e-6, lens_q=1.0, lens_phi_rad=0.0, lens_x_arcsec=0.0, lens_y_arcsec=0.0, shear=0.0,
               shear_phi_rad=0.0, src_x_arcsec=0.0, src_y_arcsec=0.0, src_reff_arcsec=reff, src_n_sersic=n, src_q=1.0,
               src_phi_rad=0.0, **{f"src_flux_nmgy_{b}": flux for b in "grz"},
               **{f"psf_fwhm_used_{b}": 1.0 for b in "grz"})
    settings = RenderSettings(supersample=8, refine_rel=0.0)
    arcs, lensed = render_columns(rows_to_columns([row]), settings)
    assert lensed[0] == pytest.approx([flux * 0.9999] * 3, rel=2e-3)  # all but the far wings land in the stamp


def sis_extended_magnification(theta_e, src_offset, reff, n):
    """Flux-weighted magnification of a round Sersic source behind an SIS, by quadrature.

    Point magnification: 2 theta_E / beta inside the Einstein radius, 1 + theta_E / beta
    outside; in polar coordinates about the lens the 1/beta cancels the area element.
    """
    bn = 1.9992 * n - 0.3271
    ie = float(sersic_sb_at_reff(1.0, reff, n))

    def sb(beta, phi):
        d = np.hypot(beta * np.cos(phi) - src_offset, beta * np.sin(phi))
        return ie * np.exp(-bn * ((d / reff) ** (1 / n) - 1))

    inner = integrate.dblquad(lambda b, phi: sb(b, phi) * 2 * theta_e, 0, 2 * np.pi, 0, theta_e, epsabs=1e-9)[0]
    outer = integrate.dblquad(lambda b, phi: sb(b, phi) * (b + theta_e), 0, 2 * np.pi, theta_e,
                              theta_e + src_offset + 12 * reff, epsabs=1e-9)[0]
    return inner + outer


@pytest.mark.parametrize("theta_e,offset,reff,n", [(1.0, 0.3, 0.2, 1.0), (1.5, 0.6, 0.15, 1.5),
                                                   (0.8, 0.9, 0.25, 1.0), (2.0, 0.0, 0.3, 1.0)])
def test_lensed_flux_equals_jacobian_magnification(theta_e, offset, reff, n):
    row = dict(theta_e_arcsec=theta_e, lens_q=1.0, lens_phi_rad=0.0, lens_x_arcsec=0.0, lens_y_arcsec=0.0, shear=0.0,
               shear_phi_rad=0.0, src_x_arcsec=offset, src_y_arcsec=0.0, src_reff_arcsec=reff, src_n_sersic=n,
               src_q=1.0, src_phi_rad=0.0, **{f"src_flux_nmgy_{b}": 1.0 for b in "grz"},
               **{f"psf_fwhm_used_{b}": 1.2 for b in "grz"})
    _, lensed = render_columns(rows_to_columns([row]), RenderSettings(supersample=8))
    expected = sis_extended_magnification(theta_e, offset, reff, n)
    assert lensed[0, 1] == pytest.approx(expected, rel=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu():
    rows = random_arc_rows(32, np.random.default_rng(5), 2)
    cpu, _ = render_columns(rows_to_columns(rows), RenderSettings(), device="cpu")
    gpu, _ = render_columns(rows_to_columns(rows), RenderSettings(), device="cuda")
    assert np.abs(cpu - gpu).max() <= 1e-4 * np.abs(cpu).max()


@pytest.mark.parametrize("npix,ss,lo", [(4, 4, 28), (64, 1, 0)])
def test_fused_evaluation_equals_the_reference_functions(npix, ss, lo):
    """unit_fluxes (affine source frame, folded normalisations, exp2, atan2, atanh via log1p) = sie_shear_deflection +
    sersic_unit_sb / gaussian_unit_sb, in float64, on random rows with the edge cases (q = 1, theta_E of one
    pixel, sources on the caustic)."""
    from darkhalo.physics import lensing

    rows = random_arc_rows(24, np.random.default_rng(7), n_clumps=2)
    cols = rows_to_columns(rows)
    p = {k: torch.tensor(np.asarray(cols[k], np.float64)) for k in lensing.LENS_KEYS + lensing.SOURCE_KEYS}
    p |= {k: torch.tensor(np.asarray(cols["src_" + k], np.float64)) for k in lensing.CLUMP_KEYS}
    settings = RenderSettings(supersample=ss)
    gx, gy = (g.double() for g in lensing._cell_grid(npix, ss, settings, "cpu"))
    corner = torch.full((24,), lo)
    origin_x = lensing._cell_origin(corner, settings, p["lens_x_arcsec"]).double()
    origin_y = lensing._cell_origin(corner, settings, p["lens_y_arcsec"]).double()
    cells = lensing.cell_constants(lensing.trace_coefficients(p), origin_x, origin_y,
                                   (settings.pixel_scale_arcsec / ss) ** 2)
    fused = lensing.unit_fluxes(gx, gy, cells)

    cell = {key: v.view(24, -1, 1) for key, v in p.items()}
    x = (origin_x + p["lens_x_arcsec"]).view(24, 1, 1) + gx[0, :, 0, :].T.reshape(1, 1, -1)
    y = (origin_y + p["lens_y_arcsec"]).view(24, 1, 1) + gy[:, 0, :, 0].T.reshape(1, -1, 1)
    ax, ay = lensing.sie_shear_deflection(x, y, cell)
    bx, by = x - ax, y - ay
    parts = [lensing.sersic_unit_sb(bx, by, cell)]
    for c in range(2):
        parts.append(lensing.gaussian_unit_sb(bx, by, cell["src_x_arcsec"] + cell["clump_dx_arcsec"][:, c:c + 1],
                                              cell["src_y_arcsec"] + cell["clump_dy_arcsec"][:, c:c + 1],
                                              cell["clump_sigma_arcsec"][:, c:c + 1]))
    reference = lensing._binned(torch.stack(parts, 1), ss, settings.pixel_scale_arcsec)
    assert fused.shape == reference.shape == (24, 3, npix, npix)
    # each component against its brightest pixel in the cell; the exp floors (~1e-34 nmgy) differ
    scale = reference.amax(dim=(2, 3), keepdim=True) + 1e-20
    assert float(((fused - reference).abs() / scale).max()) < 1e-9


def test_sampled_kernel_psf_for_other_beta():
    """Non-half-integer beta FFTs the sampled kernel (a real spectrum): arcs keep the lensed flux and
    stay close to the closed-form transfer of a nearby half-integer beta."""
    rows = random_arc_rows(8, np.random.default_rng(3), 2)
    arcs, lensed = render_columns(rows_to_columns(rows), RenderSettings(moffat_beta=3.49))
    closed, _ = render_columns(rows_to_columns(rows), RenderSettings(moffat_beta=3.5))
    assert np.allclose(arcs.sum(axis=(2, 3)), lensed, rtol=2e-3)
    assert np.abs(arcs - closed).max() <= 0.01 * np.abs(closed).max()

"""Redraw an injected arc with lenstronomy from its row's columns alone.

The independent reference for the torch engine (tests, benchmarks) and the
documented recipe for anyone auditing a row.  lenstronomy is imported here
only; it is a test/validation dependency, never needed by the pipeline.
"""
from __future__ import annotations

import functools

import numpy as np

from darkhalo.physics.profiles import sersic_sb_at_reff
from darkhalo.physics.psf import moffat_kernels
from darkhalo.core.units import BANDS, PIXEL_SCALE_ARCSEC


def _e1e2(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * phi), e * np.sin(2.0 * phi)


def lens_kwargs(row: dict) -> list[dict]:
    """lenstronomy kwargs for ['SIE', 'SHEAR'] from a row (shear centred on the lens)."""
    e1, e2 = _e1e2(row["lens_q"], row["lens_phi_rad"])
    g = row["shear"]
    return [{"theta_E": row["theta_e_arcsec"], "e1": e1, "e2": e2, "center_x": row["lens_x_arcsec"],
             "center_y": row["lens_y_arcsec"]},
            {"gamma1": g * np.cos(2 * row["shear_phi_rad"]), "gamma2": g * np.sin(2 * row["shear_phi_rad"]),
             "ra_0": row["lens_x_arcsec"], "dec_0": row["lens_y_arcsec"]}]


def _clump_list(row: dict, key: str) -> list:
    """A clump column as a list ([] when absent or null)."""
    value = row.get(key)
    return [] if value is None else list(value)


def source_kwargs(row: dict, band: str) -> tuple[list[str], list[dict]]:
    """(model list, kwargs) of the source in one band: SERSIC_ELLIPSE + one GAUSSIAN per clump.

    The Sersic carries ``src_flux_nmgy_<band>`` minus the clumps' flux; its
    amplitude is the surface brightness at R_sersic (nmgy/arcsec^2).
    """
    fluxes = component_fluxes(row)[:, BANDS.index(band)]
    models, kwargs = unit_source_kwargs(row)
    for kw, flux in zip(kwargs, fluxes):
        kw["amp"] *= flux
    return models, kwargs


def unit_source_kwargs(row: dict) -> tuple[list[str], list[dict]]:
    """(model list, kwargs) of the source's unit-flux components: SERSIC_ELLIPSE, then one GAUSSIAN per clump."""
    e1, e2 = _e1e2(row["src_q"], row["src_phi_rad"])
    models = ["SERSIC_ELLIPSE"]
    kwargs = [{"amp": float(sersic_sb_at_reff(1.0, row["src_reff_arcsec"], row["src_n_sersic"])),
               "R_sersic": row["src_reff_arcsec"], "n_sersic": row["src_n_sersic"], "e1": e1, "e2": e2,
               "center_x": row["src_x_arcsec"], "center_y": row["src_y_arcsec"]}]
    for dx, dy, sigma in zip(*(_clump_list(row, f"src_clump_{k}") for k in ("dx_arcsec", "dy_arcsec", "sigma_arcsec"))):
        models.append("GAUSSIAN")
        kwargs.append({"amp": 1.0, "sigma": sigma, "center_x": row["src_x_arcsec"] + dx,
                       "center_y": row["src_y_arcsec"] + dy})
    return models, kwargs


def component_fluxes(row: dict) -> np.ndarray:
    """(1 + clumps, 3) flux (nmgy) of each source component per band: Sersic = total minus clumps."""
    clumps = np.array([_clump_list(row, f"src_clump_flux_nmgy_{b}") for b in BANDS], np.float64).reshape(3, -1)
    total = np.array([row[f"src_flux_nmgy_{b}"] for b in BANDS], np.float64)
    return np.vstack([total - clumps.sum(axis=1), clumps.T])


def pixel_frame(stamp_size: int) -> tuple:
    """(transform_pix2angle, ra_at_xy_0, dec_at_xy_0) of a stamp: x along columns, y along rows, 0 at the centre."""
    corner = -(stamp_size - 1) / 2.0 * PIXEL_SCALE_ARCSEC
    return np.array([[PIXEL_SCALE_ARCSEC, 0.0], [0.0, PIXEL_SCALE_ARCSEC]]), corner, corner


class ArcRenderer:
    """lenstronomy set up once per (stamp size, supersampling, clump count), as its experts would.

    The lens and light models and the pixel grid are built once; each stamp is
    ray-shot once for its three bands (the source's unit components are drawn
    once and coloured per band) and convolved per band with its Moffat pixel
    kernel (lenstronomy's PixelKernelConvolution, FFT).  ``adaptive_tile_pix``
    switches from uniform supersampling to lenstronomy's AdaptiveGrid on the
    engine's rule: tiles of that width holding a pixel-centre sample above
    ``refine_rel`` x a component's peak, grown by one tile, are supersampled;
    the other pixels keep their pixel-centre sample.
    """

    def __init__(self, stamp_size: int = 64, supersample: int = 4, n_clumps: int = 0,
                 adaptive_tile_pix: int | None = None, refine_rel: float = 1e-3):
        from lenstronomy.ImSim.Numerics.grid import RegularGrid
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel

        self.frame = pixel_frame(stamp_size)
        self.size, self.supersample, self.n_components = stamp_size, supersample, 1 + n_clumps
        self.tile_pix, self.refine_rel = adaptive_tile_pix, refine_rel
        self.lens = LensModel(["SIE", "SHEAR"])
        self.light = LightModel(["SERSIC_ELLIPSE"] + ["GAUSSIAN"] * n_clumps)
        self.grid = RegularGrid(stamp_size, stamp_size, *self.frame,
                                supersampling_factor=1 if adaptive_tile_pix else supersample)

    def _draw(self, grid, kwargs_lens, kwargs_source) -> np.ndarray:
        """Flux per pixel (C, S, S) of each unit component on ``grid``: one ray-shoot for all of them."""
        bx, by = self.lens.ray_shooting(*grid.coordinates_evaluate, kwargs_lens)
        return np.stack([grid.flux_array2image_low_high(self.light.surface_brightness(bx, by, kwargs_source, k=c),
                                                        high_res_return=False)[0]
                         for c in range(self.n_components)]) * PIXEL_SCALE_ARCSEC**2

    def unit_components(self, row: dict) -> np.ndarray:
        """Flux per pixel (C, S, S) of the lensed unit-flux source components, before the PSF."""
        kwargs_lens, (_, kwargs_source) = lens_kwargs(row), unit_source_kwargs(row)
        units = self._draw(self.grid, kwargs_lens, kwargs_source)
        if not self.tile_pix or self.supersample == 1:
            return units
        from lenstronomy.ImSim.Numerics.grid import AdaptiveGrid
        from scipy.ndimage import binary_dilation

        n_tiles, t = self.size // self.tile_pix, self.tile_pix
        tiles = units.reshape(self.n_components, n_tiles, t, n_tiles, t).max(axis=(2, 4))
        hot = (tiles > self.refine_rel * units.max(axis=(1, 2))[:, None, None]).any(axis=0)
        if not hot.any():
            return units
        hot = binary_dilation(hot, np.ones((3, 3), bool))
        mask = np.kron(hot, np.ones((t, t), bool))
        # only the refined pixels are drawn again; the others keep their pixel-centre value
        grid = AdaptiveGrid(self.size, self.size, *self.frame, mask, self.supersample,
                            flux_evaluate_indexes=mask.ravel())
        return np.where(mask, self._draw(grid, kwargs_lens, kwargs_source), units)

    def render(self, row: dict) -> np.ndarray:
        """Noiseless PSF-convolved arc (3, S, S) in nmgy/pixel."""
        from lenstronomy.ImSim.Numerics.convolution import PixelKernelConvolution

        units = self.unit_components(row)
        fluxes = component_fluxes(row)
        out = np.empty((3, self.size, self.size))
        for j, band in enumerate(BANDS):
            kernel = moffat_kernels([row[f"psf_fwhm_used_{band}"]], self.size, row["moffat_beta"])[0]
            out[j] = PixelKernelConvolution(kernel, convolution_type="fft").convolution2d(
                np.tensordot(fluxes[:, j], units, axes=1))
        return out


@functools.lru_cache(maxsize=16)
def arc_renderer(stamp_size: int, supersample: int, n_clumps: int) -> ArcRenderer:
    """The uniform-supersampling renderer of one configuration, built once."""
    return ArcRenderer(stamp_size, supersample, n_clumps)


def redraw_arc(row: dict, stamp_size: int = 64, supersample: int | None = None) -> np.ndarray:
    """Noiseless PSF-convolved arc (3, S, S) in nmgy/pixel, drawn by lenstronomy.

    Pixel grid as ARCHITECTURE.md: x along columns, y along rows, 0 at the stamp
    centre; PSF the cutout's Moffat (``psf_fwhm_used_<band>``, ``moffat_beta``)
    sampled as a pixel kernel; uniform supersampling ``supersample``
    (default: the row's) before the convolution.  The models are built once per
    configuration (``arc_renderer``) and each row is ray-shot once for its bands.
    """
    n_clumps = len(_clump_list(row, "src_clump_dx_arcsec"))
    return arc_renderer(stamp_size, int(supersample or row["supersample"]), n_clumps).render(row)


def random_arc_rows(n: int, rng: np.random.Generator, n_clumps: int = 0) -> list[dict]:
    """Random SIE+shear+Sersic(+clumps) parameter sets, as injection rows."""
    rows = []
    for i in range(n):
        theta_e = rng.uniform(0.262, 2.5)
        row = dict(theta_e_arcsec=theta_e, lens_q=rng.uniform(0.4, 1.0), lens_phi_rad=rng.uniform(0, np.pi),
                   lens_x_arcsec=rng.uniform(-0.13, 0.13), lens_y_arcsec=rng.uniform(-0.13, 0.13),
                   shear=rng.uniform(0, 0.12), shear_phi_rad=rng.uniform(0, np.pi),
                   src_reff_arcsec=rng.uniform(0.05, 0.4), src_n_sersic=rng.uniform(0.5, 4.0),
                   src_q=rng.uniform(0.3, 1.0), src_phi_rad=rng.uniform(0, np.pi), moffat_beta=3.5, supersample=4)
        r, a = theta_e * rng.uniform(0, 0.8), rng.uniform(0, 2 * np.pi)
        row["src_x_arcsec"] = row["lens_x_arcsec"] + r * np.cos(a)
        row["src_y_arcsec"] = row["lens_y_arcsec"] + r * np.sin(a)
        for band in "grz":
            row[f"src_flux_nmgy_{band}"] = rng.uniform(0.1, 5.0)
            row[f"psf_fwhm_used_{band}"] = rng.uniform(0.9, 1.8)
            flux = rng.uniform(0, 0.1, n_clumps) * row[f"src_flux_nmgy_{band}"]
            row[f"src_clump_flux_nmgy_{band}"] = list(flux)
        row["src_clump_dx_arcsec"] = list(rng.normal(0, 0.2, n_clumps))
        row["src_clump_dy_arcsec"] = list(rng.normal(0, 0.2, n_clumps))
        row["src_clump_sigma_arcsec"] = list(rng.uniform(0.02, 0.06, n_clumps))
        rows.append(row)
    # edge cases: q -> 1 with no shear, theta_E of one pixel, source exactly on the (point) caustic,
    # large shear, tiny round source
    rows[0].update(lens_q=1.0, shear=0.0)
    rows[1].update(lens_q=0.999999, theta_e_arcsec=PIXEL_SCALE_ARCSEC)
    rows[2].update(src_x_arcsec=rows[2]["lens_x_arcsec"], src_y_arcsec=rows[2]["lens_y_arcsec"], lens_q=1.0, shear=0.0)
    rows[3].update(src_x_arcsec=rows[3]["lens_x_arcsec"], src_y_arcsec=rows[3]["lens_y_arcsec"])
    rows[4].update(shear=0.3)
    rows[5].update(src_reff_arcsec=0.05, src_q=1.0, src_n_sersic=1.0)
    return rows


def rows_to_columns(rows: list[dict]) -> dict:
    """Rows -> {column: array} as render_columns takes them."""
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}

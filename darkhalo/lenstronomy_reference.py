"""Redraw an injected arc with lenstronomy from its row's columns alone.

The independent reference for the torch engine (tests, benchmarks) and the
documented recipe for anyone auditing a row.  lenstronomy is imported here
only; it is a test/validation dependency, never needed by the pipeline.
"""
from __future__ import annotations

import numpy as np

from .profiles import sersic_sb_at_reff
from .psf import moffat_kernels
from .units import BANDS, PIXEL_SCALE_ARCSEC


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


def source_kwargs(row: dict, band: str) -> tuple[list[str], list[dict]]:
    """(model list, kwargs) of the source in one band: SERSIC_ELLIPSE + one GAUSSIAN per clump.

    The Sersic carries ``src_flux_nmgy_<band>`` minus the clumps' flux; its
    amplitude is the surface brightness at R_sersic (nmgy/arcsec^2).
    """
    clump_flux = list(row.get(f"src_clump_flux_nmgy_{band}") or [])
    sersic_flux = row[f"src_flux_nmgy_{band}"] - float(np.sum(clump_flux))
    e1, e2 = _e1e2(row["src_q"], row["src_phi_rad"])
    models = ["SERSIC_ELLIPSE"]
    kwargs = [{"amp": float(sersic_sb_at_reff(sersic_flux, row["src_reff_arcsec"], row["src_n_sersic"])),
               "R_sersic": row["src_reff_arcsec"], "n_sersic": row["src_n_sersic"], "e1": e1, "e2": e2,
               "center_x": row["src_x_arcsec"], "center_y": row["src_y_arcsec"]}]
    for k, flux in enumerate(clump_flux):
        models.append("GAUSSIAN")
        kwargs.append({"amp": flux, "sigma": row["src_clump_sigma_arcsec"][k],
                       "center_x": row["src_x_arcsec"] + row["src_clump_dx_arcsec"][k],
                       "center_y": row["src_y_arcsec"] + row["src_clump_dy_arcsec"][k]})
    return models, kwargs


def redraw_arc(row: dict, stamp_size: int = 64, supersample: int | None = None) -> np.ndarray:
    """Noiseless PSF-convolved arc (3, S, S) in nmgy/pixel, drawn by lenstronomy.

    Pixel grid as ARCHITECTURE.md: x along columns, y along rows, 0 at the stamp
    centre; PSF the cutout's Moffat (``psf_fwhm_used_<band>``, ``moffat_beta``)
    sampled as a pixel kernel; uniform supersampling ``supersample``
    (default: the row's) before the convolution.
    """
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    corner = -(stamp_size - 1) / 2.0 * PIXEL_SCALE_ARCSEC
    data = {"image_data": np.zeros((stamp_size, stamp_size)), "background_rms": 1.0, "exposure_time": 1.0,
            "ra_at_xy_0": corner, "dec_at_xy_0": corner,
            "transform_pix2angle": np.array([[PIXEL_SCALE_ARCSEC, 0.0], [0.0, PIXEL_SCALE_ARCSEC]])}
    ss = int(supersample or row["supersample"])
    lens = LensModel(["SIE", "SHEAR"])
    out = np.empty((3, stamp_size, stamp_size))
    for j, band in enumerate(BANDS):
        models, kwargs = source_kwargs(row, band)
        kernel = moffat_kernels([row[f"psf_fwhm_used_{band}"]], stamp_size, row["moffat_beta"])[0]
        model = ImageModel(ImageData(**data), PSF(psf_type="PIXEL", kernel_point_source=kernel),
                           lens_model_class=lens, source_model_class=LightModel(models),
                           kwargs_numerics={"supersampling_factor": ss, "supersampling_convolution": False})
        out[j] = model.image(kwargs_lens=lens_kwargs(row), kwargs_source=kwargs)
    return out


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

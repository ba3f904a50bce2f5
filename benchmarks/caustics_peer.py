"""caustics (a batched torch lensing library) set up as its experts would, for the injection benchmark.

The same physics as the engine: SIE + external shear (caustics' functional API,
``caustics.func``: no module/parameter-graph overhead), a Sersic source with
lenstronomy's b_n and two Gaussian clumps (caustics has no Gaussian profile: a
round n = 1/2 Sersic with k = 1/2 is one exactly), drawn at unit flux on a uniform
``supersample``^2 grid per pixel (caustics has no adaptive grid), one ray-shoot for
the three bands, batched over stamps by broadcasting; binned to pixels, coloured per
band, then convolved with each band's sampled Moffat kernel through a zero-padded
rfft2 as caustics' ``LensSource`` does (kernel transformed per stamp and band).
Conventions (checked against lenstronomy by the benchmark's agreement figures):
caustics' Rein is our product-averaged theta_E; its Sersic Re is the major-axis
radius, R_sersic / sqrt(q).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.fft import next_fast_len

from darkhalo.physics.lensing import RenderSettings, moffat_kernels_torch
from darkhalo.physics.profiles import sersic_sb_at_reff
from darkhalo.core.units import BANDS


class CausticsRenderer:
    """Renders rows (as darkhalo.physics.lenstronomy_reference.random_arc_rows) with caustics, ``batch`` stamps per call."""

    def __init__(self, settings: RenderSettings, n_clumps: int, batch: int = 16):
        import caustics.func  # noqa: F401  (imported here: the benchmark reports it as not installed otherwise)

        self.settings, self.n_clumps, self.batch = settings, n_clumps, batch
        size, ss, scale = settings.stamp_size, settings.supersample, settings.pixel_scale_arcsec
        axis = ((torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss - 0.5 - (size - 1) / 2.0) * scale
        self.x, self.y = axis[None, None, :], axis[None, :, None]   # sub-pixel centres (arcsec)
        self.sub_area_arcsec2 = (scale / ss) ** 2
        self.fft_shape = (next_fast_len(2 * size - 1),) * 2

    def columns(self, rows: list[dict]) -> dict:
        """The rows' parameters as float32 tensors (B,) / (B, K) / (B, 3), in caustics' conventions."""
        def col(key):
            return torch.tensor(np.array([r[key] for r in rows], np.float64), dtype=torch.float32)

        q_s = col("src_q")
        flux = {b: np.array([r[f"src_flux_nmgy_{b}"] for r in rows]) for b in BANDS}
        clump_flux = np.stack([[r[f"src_clump_flux_nmgy_{b}"] for r in rows] for b in BANDS], -1).reshape(
            len(rows), self.n_clumps, 3)
        sersic_flux = np.stack([flux[b] for b in BANDS], 1) - clump_flux.sum(1)
        n, reff = col("src_n_sersic"), col("src_reff_arcsec")
        out = {k: col(k) for k in ("theta_e_arcsec", "lens_q", "lens_phi_rad", "lens_x_arcsec", "lens_y_arcsec",
                                   "shear", "shear_phi_rad", "src_x_arcsec", "src_y_arcsec", "src_phi_rad")}
        out |= {"q_s": q_s, "n": n, "Re": reff / torch.sqrt(q_s),
                "Ie": torch.tensor(sersic_sb_at_reff(1.0, reff.double().numpy(), n.double().numpy()), dtype=torch.float32),
                "fluxes": torch.tensor(np.concatenate([sersic_flux[:, None], clump_flux], 1), dtype=torch.float32),
                "fwhm": torch.tensor(np.array([[r[f"psf_fwhm_used_{b}"] for b in BANDS] for r in rows]),
                                     dtype=torch.float32)}
        for key in ("dx", "dy", "sigma"):
            out[f"clump_{key}"] = torch.tensor(np.array([r[f"src_clump_{key}_arcsec"] for r in rows], np.float64)
                                               .reshape(len(rows), self.n_clumps), dtype=torch.float32)
        return out

    def _batch(self, c: dict) -> torch.Tensor:
        """(B, 3, S, S) arcs of one batch of columns."""
        from caustics import func

        def v(t):
            return t[:, None, None]

        s = self.settings
        g1 = func.gamma_phi_to_gamma1(c["shear"], c["shear_phi_rad"])
        g2 = func.gamma_phi_to_gamma2(c["shear"], c["shear_phi_rad"])
        ax, ay = func.reduced_deflection_angle_sie(v(c["lens_x_arcsec"]), v(c["lens_y_arcsec"]), v(c["lens_q"]),
                                                   v(c["lens_phi_rad"]), v(c["theta_e_arcsec"]), self.x, self.y)
        sx, sy = func.reduced_deflection_angle_external_shear(v(c["lens_x_arcsec"]), v(c["lens_y_arcsec"]), v(g1),
                                                              v(g2), self.x, self.y)
        bx, by = self.x - ax - sx, self.y - ay - sy
        parts = [func.brightness_sersic(v(c["src_x_arcsec"]), v(c["src_y_arcsec"]), v(c["q_s"]), v(c["src_phi_rad"]),
                                        v(c["n"]), v(c["Re"]), v(c["Ie"]), bx, by, func.k_lenstronomy(v(c["n"])))]
        for k in range(self.n_clumps):   # Gaussian = round (unrotated) Sersic n = 1/2, k = 1/2, Re = sigma
            sig = v(c["clump_sigma"][:, k])
            parts.append(func.brightness_sersic(v(c["src_x_arcsec"] + c["clump_dx"][:, k]),
                                                v(c["src_y_arcsec"] + c["clump_dy"][:, k]), 1.0, None, 0.5, sig,
                                                math.exp(-0.5) / (2 * math.pi * sig**2), bx, by, 0.5))
        units = torch.stack(parts, 1)   # (B, C, S*ss, S*ss) arcsec^-2
        n_b, n_c, size, ss = units.shape[0], units.shape[1], s.stamp_size, s.supersample
        units = units.view(n_b, n_c, size, ss, size, ss).sum((3, 5)) * self.sub_area_arcsec2
        bands = torch.einsum("bcyx,bcf->bfyx", units, c["fluxes"])
        kernels = moffat_kernels_torch(c["fwhm"], s)   # (B, 3, k, k), unit sum
        half = kernels.shape[-1] // 2
        spectra = torch.fft.rfft2(bands, self.fft_shape) * torch.fft.rfft2(kernels, self.fft_shape)
        return torch.fft.irfft2(spectra, self.fft_shape)[..., half:half + size, half:half + size]

    def render(self, columns: dict) -> np.ndarray:
        """(N, 3, S, S) noiseless arcs (nmgy per pixel) of prepared ``columns``."""
        n = len(columns["theta_e_arcsec"])
        with torch.no_grad():
            return np.concatenate([self._batch({k: v[lo:lo + self.batch] for k, v in columns.items()}).numpy()
                                   for lo in range(0, n, self.batch)])

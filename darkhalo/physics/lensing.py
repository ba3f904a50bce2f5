"""Batched strong-lensing image simulation in torch (CPU or CUDA, float32).

One call renders B noiseless, PSF-convolved grz arcs at once, no per-stamp
Python loop:

    SIE (+ external shear) ray shooting on a supersampled image-plane grid
    -> source surface brightness (elliptical Sersic + Gaussian clumps, or a
       pixelised source image) at the traced positions
    -> integrate over pixels -> FFT convolution with each band's Moffat PSF.

Conventions are lenstronomy's (ARCHITECTURE.md): SIE ``theta_e_arcsec`` is the
product-averaged Einstein radius, axis ratio ``q`` and position angle
``phi_rad`` (counter-clockwise from +x); shear (gamma, phi_gamma) with
gamma1 = gamma cos 2phi, gamma2 = gamma sin 2phi, deflection zero at the lens
centre; Sersic R_sersic is the product-averaged half-light radius with
lenstronomy's b_n.  Source fluxes are total fluxes in nanomaggies; the only
conversion to surface brightness (nmgy/arcsec^2) is in ``sersic_unit_sb`` /
``gaussian_unit_sb`` / ``pixelised_unit_sb``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from darkhalo.physics.profiles import sersic_b
from darkhalo.core.units import PIXEL_SCALE_ARCSEC

# Per-row parameters of a batch (each a (B,) tensor unless noted).
LENS_KEYS = ("theta_e_arcsec", "lens_q", "lens_phi_rad", "lens_x_arcsec", "lens_y_arcsec", "shear",
             "shear_phi_rad")
SOURCE_KEYS = ("src_x_arcsec", "src_y_arcsec", "src_reff_arcsec", "src_n_sersic", "src_q", "src_phi_rad")
# (B, 3) tensors: grz
BAND_KEYS = ("src_flux_nmgy", "psf_fwhm_arcsec")
# (B, K) tensors for K clumps (offsets from the source centre) and (B, K, 3) clump fluxes
CLUMP_KEYS = ("clump_dx_arcsec", "clump_dy_arcsec", "clump_sigma_arcsec")


@dataclass(frozen=True)
class RenderSettings:
    """How arcs are drawn: stamp size (px), supersampling per axis, Moffat beta, and the
    adaptive refinement (``tile_pix`` tiles brighter than ``refine_rel`` x peak are supersampled;
    ``refine_rel = 0`` supersamples everywhere)."""

    stamp_size: int = 64
    supersample: int = 4
    moffat_beta: float = 3.5
    pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC
    tile_pix: int = 8
    refine_rel: float = 1e-3


EXP_FLOOR = -80.0   # lowest exponent passed to exp (arguments below give < 1e-34: zero for our purposes)

def sie_shear_deflection(x, y, p):
    """Deflection (alpha_x, alpha_y) in arcsec of SIE + external shear at image-plane (x, y).

    ``x``, ``y`` broadcast against the (N, 1, 1) parameter tensors in ``p``.  Follows
    lenstronomy's SIE (Keeton & Kochanek 1998 with b = theta_E sqrt(q)); for
    q -> 1 the arctan/arctanh ratios use their series so float32 stays exact.
    """
    def col(key):
        return p[key]

    q = col("lens_q").clamp(max=1.0)
    phi = col("lens_phi_rad")
    dx, dy = x - col("lens_x_arcsec"), y - col("lens_y_arcsec")
    cos_p, sin_p = torch.cos(phi), torch.sin(phi)
    xm = cos_p * dx + sin_p * dy
    ym = -sin_p * dx + cos_p * dy
    psi = torch.sqrt(q * q * xm * xm + ym * ym).clamp_min(1e-12)
    # b / e with e = sqrt(1 - q^2) floored at 1e-4: atan(e u)/e -> u as e -> 0, and the
    # floor changes the deflection by < 1e-8 relative (the SIS limit is exact).
    ecc = torch.sqrt((1.0 - q * q).clamp_min(1e-8))
    b_over_e = col("theta_e_arcsec") * torch.sqrt(q) / ecc
    ax_m = b_over_e * torch.atan(ecc * xm / psi)
    ay_m = b_over_e * torch.atanh((ecc * ym / psi).clamp(-0.9999999, 0.9999999))
    ax = cos_p * ax_m - sin_p * ay_m
    ay = sin_p * ax_m + cos_p * ay_m
    g1 = col("shear") * torch.cos(2 * col("shear_phi_rad"))
    g2 = col("shear") * torch.sin(2 * col("shear_phi_rad"))
    return ax + g1 * dx + g2 * dy, ay + g2 * dx - g1 * dy


def sersic_unit_sb(bx, by, p):
    """Surface brightness (arcsec^-2) of a unit-total-flux elliptical Sersic at source-plane (bx, by)."""
    def col(key):
        return p[key]

    n, re, q, phi = col("src_n_sersic"), col("src_reff_arcsec"), col("src_q"), col("src_phi_rad")
    dx, dy = bx - col("src_x_arcsec"), by - col("src_y_arcsec")
    cos_p, sin_p = torch.cos(phi), torch.sin(phi)
    xs = cos_p * dx + sin_p * dy
    ys = -sin_p * dx + cos_p * dy
    radius = torch.sqrt(q * xs * xs + ys * ys / q).clamp_min(1e-5)
    bn = sersic_b(n)
    two_n = 2.0 * n
    log_norm = (math.log(2.0 * math.pi) + torch.log(n) + 2.0 * torch.log(re) + bn + torch.lgamma(two_n)
                - two_n * torch.log(bn))
    # the exponent is floored at EXP_FLOOR: torch's exp is ~20x slower on underflowing (denormal)
    # arguments, and exp(-80) is 1e-35 of a unit-flux profile's peak
    return torch.exp((-bn * (torch.pow(radius / re, 1.0 / n) - 1.0) - log_norm).clamp_min(EXP_FLOOR))


def gaussian_unit_sb(bx, by, cx, cy, sigma):
    """Surface brightness (arcsec^-2) of unit-flux circular Gaussians; centre/sigma (B, 1, 1)."""
    r2 = (bx - cx) ** 2 + (by - cy) ** 2
    return torch.exp((-0.5 * r2 / sigma**2).clamp_min(EXP_FLOOR)) / (2.0 * math.pi * sigma**2)


def pixelised_unit_sb(bx, by, p, images, pixel_scale_arcsec: float):
    """Surface brightness (arcsec^-2) of unit-flux pixelised sources (e.g. HST stamps).

    ``images`` (B, H, W) are normalised to unit sum here; each is centred on
    (src_x, src_y), rotated by src_phi_rad, and bilinearly interpolated; zero
    outside.  Pixel (i, j) of the image sits at y = (i - (H-1)/2) * scale.
    """
    images = images / images.sum(dim=(1, 2), keepdim=True)
    height, width = images.shape[-2:]
    phi = p["src_phi_rad"]
    dx, dy = bx - p["src_x_arcsec"], by - p["src_y_arcsec"]
    xs = torch.cos(phi) * dx + torch.sin(phi) * dy
    ys = -torch.sin(phi) * dx + torch.cos(phi) * dy
    # grid_sample wants (x, y) in [-1, 1] across pixel centres (align_corners=True)
    gx = xs / (pixel_scale_arcsec * (width - 1) / 2.0)
    gy = ys / (pixel_scale_arcsec * (height - 1) / 2.0)
    grid = torch.stack([gx, gy], dim=-1)
    sampled = torch.nn.functional.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=True)[:, 0]
    return sampled / pixel_scale_arcsec**2


def moffat_kernels_torch(fwhm_arcsec, settings: RenderSettings):
    """Unit-sum Moffat kernels (..., k, k), k the largest odd size <= stamp size (as psf.moffat_kernels)."""
    size = settings.stamp_size
    k = size if size % 2 == 1 else size - 1
    beta = settings.moffat_beta
    alpha = fwhm_arcsec / settings.pixel_scale_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    coords = torch.arange(k, device=fwhm_arcsec.device, dtype=torch.float32) - (k - 1) / 2.0
    r2 = coords[None, :] ** 2 + coords[:, None] ** 2
    kern = (1.0 + r2 / alpha[..., None, None] ** 2) ** (-beta)
    return kern / kern.sum(dim=(-2, -1), keepdim=True)


def fft_size(settings: RenderSettings) -> int:
    """Power-of-two FFT size for linear (non-wrapping) convolution of a stamp with a stamp-sized PSF."""
    return 1 << (2 * settings.stamp_size - 2).bit_length()


def moffat_transfer(fwhm_arcsec, settings: RenderSettings):
    """rfft2-layout transfer functions (..., n, n//2+1) of unit-flux Moffat PSFs (FWHM in arcsec).

    For half-integer beta the 2-d Fourier transform of a Moffat profile is closed
    form, 2 (z/2)^nu K_nu(z) / Gamma(nu) with nu = beta - 1 and z = 2 pi alpha f,
    where K_{m+1/2}(z) = sqrt(pi/2z) e^-z sum_j (m+j)!/(j!(m-j)!) (2z)^-j; this
    saves the kernel FFT.  Other beta values FFT the sampled kernel instead.
    """
    n = fft_size(settings)
    beta = settings.moffat_beta
    if (2 * beta) % 2 != 1:
        kern = moffat_kernels_torch(fwhm_arcsec, settings)
        k = kern.shape[-1]
        centred = torch.roll(torch.nn.functional.pad(kern, (0, n - k, 0, n - k)),
                             shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
        return torch.fft.rfft2(centred)
    m = int(beta - 1.5)  # nu = m + 1/2
    alpha_pix = fwhm_arcsec / settings.pixel_scale_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    fy = torch.fft.fftfreq(n, device=fwhm_arcsec.device)[:, None]
    fx = torch.fft.rfftfreq(n, device=fwhm_arcsec.device)[None, :]
    z = 2.0 * math.pi * alpha_pix[..., None, None] * torch.sqrt(fx * fx + fy * fy)
    # 2 (z/2)^nu K_nu(z) / Gamma(nu) = sqrt(pi) z^m e^-z sum_j c_j (2z)^-j / (2^(m) Gamma(nu)), in powers of z
    coeffs = [math.factorial(m + j) / (math.factorial(j) * math.factorial(m - j)) / 2**j for j in range(m + 1)]
    poly = sum(c * z ** (m - j) for j, c in enumerate(coeffs))
    norm = math.sqrt(math.pi) / (2**m * math.gamma(beta - 1.0))
    return norm * poly * torch.exp(-z)


def convolve_with_transfer(spectra, transfer, size: int):
    """Inverse FFT of image spectra x PSF transfer functions, cropped to the (size, size) stamp."""
    return torch.fft.irfft2(spectra * transfer, s=(transfer.shape[-2], transfer.shape[-2]))[..., :size, :size]


def _component_sb(x, y, cols, source_images, source_pixel_scale_arcsec):
    """Unit-flux surface brightness (arcsec^-2) of each source component at image-plane (x, y).

    ``cols`` holds (N, 1, 1) parameter tensors (one row per stamp or per tile).
    Returns (N, C, h, w): component 0 is the Sersic (or pixelised) source, 1..K the clumps.
    """
    ax, ay = sie_shear_deflection(x, y, cols)
    bx, by = x - ax, y - ay
    if source_images is None:
        parts = [sersic_unit_sb(bx, by, cols)]
    else:
        parts = [pixelised_unit_sb(bx, by, cols, source_images, source_pixel_scale_arcsec)]
    if "clump_dx_arcsec" in cols:
        cx = cols["src_x_arcsec"] + cols["clump_dx_arcsec"]  # (N, K, 1)
        cy = cols["src_y_arcsec"] + cols["clump_dy_arcsec"]
        for c in range(cx.shape[1]):
            parts.append(gaussian_unit_sb(bx, by, cx[:, c:c + 1], cy[:, c:c + 1],
                                          cols["clump_sigma_arcsec"][:, c:c + 1]))
    return torch.stack(parts, dim=1)


def _binned(sb, supersample, pixel_scale_arcsec):
    """Sub-pixel surface brightness (N, C, h*s, w*s) -> flux per pixel (N, C, h, w)."""
    n, c, hs, ws = sb.shape
    s = supersample
    return sb.reshape(n, c, hs // s, s, ws // s, s).sum(dim=(3, 5)) * (pixel_scale_arcsec / s) ** 2


def _axis(lo_pix, npix, supersample, settings, device):
    """Sub-pixel centre coordinates (arcsec) of pixels [lo, lo+npix); lo is a (N,) tensor or int."""
    sub = (torch.arange(npix * supersample, device=device, dtype=torch.float32) + 0.5) / supersample - 0.5
    centre = (settings.stamp_size - 1) / 2.0
    return (torch.as_tensor(lo_pix, device=device, dtype=torch.float32)[..., None] + sub - centre) * \
        settings.pixel_scale_arcsec


def render_unit_components(p: dict, settings: RenderSettings, source_images=None,
                           source_pixel_scale_arcsec: float = 0.03):
    """Flux per pixel (B, C, S, S) of each unit-flux source component, before the PSF.

    Adaptive supersampling: one sample per pixel everywhere, then every
    ``settings.tile_pix``-wide tile holding a pixel brighter than
    ``settings.refine_rel`` times that component's brightest pixel is redone
    with ``supersample``^2 samples per pixel (the arcs; faint wings and empty
    sky stay coarse), grown by one tile.  Matches uniform supersampling to ~2e-4 of the peak.
    """
    device = p["theta_e_arcsec"].device
    size, ss, tile_pix = settings.stamp_size, settings.supersample, settings.tile_pix
    cols = {k: v.reshape(v.shape[0], -1, 1) if v.dim() == 2 else v[:, None, None] for k, v in p.items()
            if k in LENS_KEYS + SOURCE_KEYS + CLUMP_KEYS}
    centres = _axis(0, size, 1, settings, device)
    coarse = _binned(_component_sb(centres[None, None, :], centres[None, :, None], cols, source_images,
                                   source_pixel_scale_arcsec), 1, settings.pixel_scale_arcsec)
    if ss == 1:
        return coarse
    if size % tile_pix:
        tile_pix = size
    n_tiles = size // tile_pix
    n_b, n_c = coarse.shape[:2]
    tiles = coarse.reshape(n_b, n_c, n_tiles, tile_pix, n_tiles, tile_pix)
    peak = coarse.amax(dim=(2, 3))[:, :, None, None]  # (B, C, 1, 1)
    hot = (tiles.amax(dim=(3, 5)) > settings.refine_rel * peak).any(dim=1)  # (B, n_tiles, n_tiles)
    # grow by one tile: a thin arc can slip between the coarse samples of a neighbouring tile
    hot = torch.nn.functional.max_pool2d(hot[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    b_idx, ty, tx = torch.nonzero(hot, as_tuple=True)
    if b_idx.numel() == 0:
        return coarse
    tile_cols = {k: v[b_idx] for k, v in cols.items()}
    imgs = None if source_images is None else source_images[b_idx]
    xs = _axis(tx * tile_pix, tile_pix, ss, settings, device)[:, None, :]
    ys = _axis(ty * tile_pix, tile_pix, ss, settings, device)[:, :, None]
    fine = _binned(_component_sb(xs, ys, tile_cols, imgs, source_pixel_scale_arcsec), ss,
                   settings.pixel_scale_arcsec)  # (T, C, tile, tile)
    tiles = tiles.permute(0, 2, 4, 1, 3, 5).clone()  # (B, ty, tx, C, tile, tile)
    tiles[b_idx, ty, tx] = fine
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(n_b, n_c, size, size)


def render_arcs(p: dict, settings: RenderSettings, clump_flux_nmgy=None, source_images=None,
                source_pixel_scale_arcsec: float = 0.03):
    """Noiseless lensed arcs of a batch.

    ``p`` maps LENS_KEYS and SOURCE_KEYS to (B,) tensors, ``src_flux_nmgy`` and
    ``psf_fwhm_arcsec`` to (B, 3) tensors (grz), and optionally CLUMP_KEYS to
    (B, K) tensors with ``clump_flux_nmgy`` (B, K, 3).  With ``source_images``
    (B, H, W) the source is that pixelised image instead of a Sersic.
    Returns (arcs (B, 3, S, S) nmgy/pixel after the PSF, lensed flux (B, 3)
    nmgy before the PSF, i.e. magnification x source flux within the stamp).
    """
    units = render_unit_components(p, settings, source_images, source_pixel_scale_arcsec)
    fluxes = p["src_flux_nmgy"][:, None, :]  # (B, 1, 3)
    if clump_flux_nmgy is not None and clump_flux_nmgy.shape[1] > 0:
        fluxes = torch.cat([fluxes, clump_flux_nmgy], dim=1)  # (B, C, 3)
    lensed_flux = torch.einsum("bc,bcf->bf", units.sum(dim=(2, 3)), fluxes)
    # The FFT is linear: transform each unit component once, colour in Fourier space.
    n = fft_size(settings)
    spectra = torch.einsum("bcyx,bcf->bfyx", torch.fft.rfft2(units, s=(n, n)), fluxes.to(torch.complex64))
    arcs = convolve_with_transfer(spectra, moffat_transfer(p["psf_fwhm_arcsec"], settings), settings.stamp_size)
    return arcs, lensed_flux

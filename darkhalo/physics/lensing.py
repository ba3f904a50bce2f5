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
lenstronomy's b_n.  Source fluxes are total fluxes in nanomaggies; a Sersic's
conversion to surface brightness (nmgy/arcsec^2) is ``sersic_log_norm``, used by the fused
pass (``unit_fluxes``) and by the reference functions ``sersic_unit_sb`` /
``gaussian_unit_sb`` it is tested against; pixelised sources: ``pixelised_unit_sb``.

One module because the fused pass evaluates deflection and source light in one loop over
sub-pixel chunks (per-stamp coefficients folded once): the lens, the source profiles and the
supersampling share that loop's layout, and the reference functions it is tested against live
beside it.
"""
from __future__ import annotations

import functools
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
LOG2E = 1.0 / math.log(2.0)
# the fused pass uses exp2 (and atan2): torch's own vectorised kernels, where exp, log, atan and atanh go
# through MKL's vector math, 2-6x slower under the MKL_CBWR=COMPATIBLE pin (darkhalo/__init__.py)
EXP2_FLOOR = EXP_FLOOR * LOG2E   # EXP_FLOOR for exp2

def sie_shear_deflection(x, y, p):
    """Deflection (alpha_x, alpha_y) in arcsec of SIE + external shear at image-plane (x, y).

    ``x``, ``y`` broadcast against the (N, 1, 1) parameter tensors in ``p``.  Follows
    lenstronomy's SIE (Keeton & Kochanek 1998 with b = theta_E sqrt(q)).  As q -> 1 the
    ratios atan(e u)/e and atanh(e w)/e tend to u and w (|u|, |w| <= 1/q): e is floored at
    1e-4, and atanh(z) is evaluated as log1p(2z/(1-z))/2, whose float32 error stays relative
    to z (log((1+z)/(1-z)), which compiled atanh uses, loses it as z -> 0).
    """
    q = p["lens_q"].clamp(max=1.0)
    phi = p["lens_phi_rad"]
    dx, dy = x - p["lens_x_arcsec"], y - p["lens_y_arcsec"]
    cos_p, sin_p = torch.cos(phi), torch.sin(phi)
    xm = cos_p * dx + sin_p * dy
    ym = -sin_p * dx + cos_p * dy
    psi = torch.sqrt(q * q * xm * xm + ym * ym).clamp_min(1e-12)
    # b / e with e = sqrt(1 - q^2) floored at 1e-4: atan(e u)/e -> u as e -> 0, and the
    # floor changes the deflection by < 1e-8 relative (the SIS limit is exact).
    ecc = torch.sqrt((1.0 - q * q).clamp_min(1e-8))
    b_over_e = p["theta_e_arcsec"] * torch.sqrt(q) / ecc
    ax_m = b_over_e * torch.atan(ecc * xm / psi)
    z = (ecc * ym / psi).clamp(-0.9999999, 0.9999999)
    ay_m = 0.5 * b_over_e * torch.log1p(2.0 * z / (1.0 - z))
    ax = cos_p * ax_m - sin_p * ay_m
    ay = sin_p * ax_m + cos_p * ay_m
    g1 = p["shear"] * torch.cos(2 * p["shear_phi_rad"])
    g2 = p["shear"] * torch.sin(2 * p["shear_phi_rad"])
    return ax + g1 * dx + g2 * dy, ay + g2 * dx - g1 * dy


def sersic_unit_sb(bx, by, p):
    """Surface brightness (arcsec^-2) of a unit-total-flux elliptical Sersic at source-plane (bx, by)."""
    n, re, q, phi = p["src_n_sersic"], p["src_reff_arcsec"], p["src_q"], p["src_phi_rad"]
    dx, dy = bx - p["src_x_arcsec"], by - p["src_y_arcsec"]
    cos_p, sin_p = torch.cos(phi), torch.sin(phi)
    xs = cos_p * dx + sin_p * dy
    ys = -sin_p * dx + cos_p * dy
    radius = torch.sqrt(q * xs * xs + ys * ys / q).clamp_min(1e-5)
    bn = sersic_b(n)
    log_norm = sersic_log_norm(n, re)
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
    """FFT size (px) for convolving a stamp with a stamp-sized PSF: the smallest 2^a 3^b 5^c >= stamp + kernel
    half-width, so no kernel wraps around into the stamp (96 for 64-px stamps)."""
    half = (settings.stamp_size - 1) // 2
    n = settings.stamp_size + half
    while _smooth_part(n) != 1:
        n += 1
    return n


def _smooth_part(n: int) -> int:
    """n with its factors 2, 3 and 5 divided out."""
    for f in (2, 3, 5):
        while n % f == 0:
            n //= f
    return n


def moffat_transfer(fwhm_arcsec, settings: RenderSettings):
    """rfft2-layout transfer functions (..., n, n//2+1) of unit-flux Moffat PSFs (FWHM in arcsec).

    For half-integer beta the 2-d Fourier transform of a Moffat profile is closed
    form, 2 (z/2)^nu K_nu(z) / Gamma(nu) with nu = beta - 1 and z = 2 pi alpha f,
    where K_{m+1/2}(z) = sqrt(pi/2z) e^-z sum_j (m+j)!/(j!(m-j)!) (2z)^-j; this
    saves the kernel FFT.  Other beta values FFT the sampled kernel instead (centred, so real).
    """
    n = fft_size(settings)
    beta = settings.moffat_beta
    if (2 * beta) % 2 != 1:
        kern = moffat_kernels_torch(fwhm_arcsec, settings)
        k = kern.shape[-1]
        centred = torch.roll(torch.nn.functional.pad(kern, (0, n - k, 0, n - k)),
                             shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
        return torch.fft.rfft2(centred).real   # centred and even: a real spectrum
    m = int(beta - 1.5)  # nu = m + 1/2
    alpha_pix = fwhm_arcsec / settings.pixel_scale_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    # |f| is even in f_y: evaluate the rows f_y >= 0 (0 .. n//2) and mirror them onto f_y < 0
    z = _frequency_radius(n, str(fwhm_arcsec.device))[: n // 2 + 1] * (2.0 * math.pi * alpha_pix)[..., None, None]
    # 2 (z/2)^nu K_nu(z) / Gamma(nu) = sqrt(pi) z^m e^-z sum_j c_j (2z)^-j / (2^(m) Gamma(nu)), in powers of z
    norm = math.sqrt(math.pi) / (2**m * math.gamma(beta - 1.0))
    coeffs = [norm * math.factorial(m + j) / (math.factorial(j) * math.factorial(m - j)) / 2**j for j in range(m + 1)]
    poly = torch.full_like(z, coeffs[0])
    for c in coeffs[1:]:   # Horner: ((c0 z + c1) z + c2) ...
        poly.mul_(z).add_(c)
    half = poly.mul_(z.mul_(-LOG2E).exp2_())   # e^-z as exp2 (see EXP2_FLOOR)
    return torch.cat([half, half[..., 1:(n + 1) // 2, :].flip(-2)], dim=-2)


@functools.lru_cache(maxsize=8)
def _frequency_radius(n: int, device: str):
    """|f| (cycles per pixel) on the (n, n//2+1) rfft2 grid."""
    fy = torch.fft.fftfreq(n, device=device)[:, None]
    fx = torch.fft.rfftfreq(n, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def convolve_with_transfer(images, transfer, size: int):
    """Images (..., size, size) convolved with PSFs given as rfft2 transfer functions (..., n, n//2+1)."""
    n = transfer.shape[-2]
    spectra = torch.fft.rfft2(images, s=(n, n))
    spectra.mul_(transfer)   # a real factor: torch multiplies both parts, no complex product
    # inverse along the rows first, then only the stamp's rows along the columns (a pruned irfft2)
    return torch.fft.irfft(torch.fft.ifft(spectra, dim=-2)[..., :size, :], n=n, dim=-1)[..., :size]


def _pixelised_sb(x, y, cols, source_images, source_pixel_scale_arcsec):
    """Unit-flux surface brightness (arcsec^-2) (N, 1, h, w) of pixelised sources at image-plane (x, y)."""
    ax, ay = sie_shear_deflection(x, y, cols)
    return pixelised_unit_sb(x - ax, y - ay, cols, source_images, source_pixel_scale_arcsec)[:, None]


def _binned(sb, supersample, pixel_scale_arcsec):
    """Sub-pixel surface brightness (N, C, h*s, w*s) -> flux per pixel (N, C, h, w)."""
    n, c, hs, ws = sb.shape
    s = supersample
    return sb.reshape(n, c, hs // s, s, ws // s, s).sum(dim=(3, 5)) * (pixel_scale_arcsec / s) ** 2


def sersic_log_norm(n, reff_arcsec):
    """log of a unit-flux Sersic's 1 / I_e (arcsec^2), lenstronomy's b_n: I_e = exp(-this)."""
    bn = sersic_b(n)
    return (math.log(2.0 * math.pi) + torch.log(n) + 2.0 * torch.log(reff_arcsec) + bn + torch.lgamma(2.0 * n)
            - 2.0 * n * torch.log(bn))


def trace_coefficients(p: dict) -> dict:
    """Per-stamp (B,) coefficients of the fused ray-shoot and source evaluation (``unit_fluxes``).

    The source-frame position of an image-plane offset d = (x, y) - lens centre is
    s = R_src (I - Gamma) d + R_src (lens - src) - R(phi_src - phi_lens) alpha', alpha' the SIE
    deflection in the lens frame: the two rotations, the shear and the source offset become
    per-stamp 2x2 matrices, so each sub-pixel costs one multiply-add per term.  The unit-flux
    normalisations (lenstronomy's b_n) are folded into log terms (arcsec, rad, ln arcsec^-2).
    """
    q = p["lens_q"].clamp(max=1.0)
    ecc = torch.sqrt((1.0 - q * q).clamp_min(1e-8))   # floor: see sie_shear_deflection
    cl, sl = torch.cos(p["lens_phi_rad"]), torch.sin(p["lens_phi_rad"])
    b_over_e = p["theta_e_arcsec"] * torch.sqrt(q) / ecc
    g1 = p["shear"] * torch.cos(2 * p["shear_phi_rad"])
    g2 = p["shear"] * torch.sin(2 * p["shear_phi_rad"])
    cs, ss = torch.cos(p["src_phi_rad"]), torch.sin(p["src_phi_rad"])
    cd, sd = torch.cos(p["src_phi_rad"] - p["lens_phi_rad"]), torch.sin(p["src_phi_rad"] - p["lens_phi_rad"])
    ox, oy = p["lens_x_arcsec"] - p["src_x_arcsec"], p["lens_y_arcsec"] - p["src_y_arcsec"]
    n, re, qs = p["src_n_sersic"], p["src_reff_arcsec"], p["src_q"]
    bn = sersic_b(n)
    k = {"xe_x": ecc * cl, "xe_y": ecc * sl, "ye_x": -ecc * sl, "ye_y": ecc * cl, "q2": q * q, "inv_ecc": 1.0 / ecc,
         "m00": cs * (1 - g1) - ss * g2, "m01": ss * (1 + g1) - cs * g2,
         "m10": -ss * (1 - g1) - cs * g2, "m11": cs * (1 + g1) + ss * g2,
         "off0": cs * ox + ss * oy, "off1": -ss * ox + cs * oy,
         # u = atan(e x'/psi) and v = 2 atanh(e y'/psi) enter with these weights
         "xs_u": -b_over_e * cd, "xs_v": -0.5 * b_over_e * sd, "ys_u": b_over_e * sd, "ys_v": -0.5 * b_over_e * cd,
         "q_s": qs, "inv_q_s": 1.0 / qs,
         # log2 of b_n (r / R_e)^(1/n) / ln 2 = log(r^2) / (2 n ln 2) + log2(b_n / (R_e^(1/n) ln 2))
         "sersic_slope": LOG2E * 0.5 / n, "sersic_offset": LOG2E * (torch.log(bn * LOG2E) - torch.log(re) / n),
         "sersic_log2": LOG2E * (bn - sersic_log_norm(n, re))}
    if "clump_dx_arcsec" in p:   # (B, K): clump centres in the source frame, Gaussian exponents (base 2)
        dxc, dyc, sig = p["clump_dx_arcsec"], p["clump_dy_arcsec"], p["clump_sigma_arcsec"]
        k |= {"clump_x": cs[:, None] * dxc + ss[:, None] * dyc, "clump_y": -ss[:, None] * dxc + cs[:, None] * dyc,
              "clump_a": -0.5 * LOG2E / sig**2, "clump_log2": -LOG2E * torch.log(2.0 * math.pi * sig**2)}
    return k


def unit_fluxes(gx, gy, cells: dict, out=None):
    """Flux per pixel (N, C, h, w) of each unit-flux component (Sersic, then clumps) for N cells, in ``out``
    if given.

    ``gx``, ``gy`` (s, s, h, w) are the sub-pixel offsets (arcsec) within a cell (s sub-pixels
    per pixel axis, the same for every cell; sub-pixel index first, so the per-pixel sums add
    whole (h, w) slabs); ``cells`` holds ``cell_constants`` rows shaped (N, 1, 1, 1, 1).  The
    values of sie_shear_deflection + sersic_unit_sb / gaussian_unit_sb, in ~50 in-place passes.
    """
    s, h, w = gx.shape[0], gx.shape[2], gx.shape[3]
    k = cells

    # (torch.addcmul with a broadcast first operand takes a slow path: mul_ then add_ is 5x faster)
    def affine(kx, ky, at_origin):
        """at_origin + kx gx + ky gy over the cells' sub-pixels."""
        return torch.mul(gx, kx).add_(at_origin).addcmul_(gy, ky)

    xe = affine(k["xe_x"], k["xe_y"], k["xe_0"])   # e x' in the lens frame, e = sqrt(1 - q^2)
    ye = affine(k["ye_x"], k["ye_y"], k["ye_0"])
    psi = torch.mul(xe, xe).mul_(k["q2"]).addcmul_(ye, ye).clamp_min_(1e-32).sqrt_().mul_(k["inv_ecc"])
    u = xe.atan2_(psi)   # atan(e x' / psi)
    # 2 atanh(z) = log1p(2 z / (1 - z)) = log1p(2 e y' / (psi - e y')), z = e y' / psi, |z| <= e < 1: log1p keeps
    # float32 accuracy relative to z as z -> 0 (q -> 1, where the SIE's 1/e multiplies any absolute error)
    v = ye.div_(torch.sub(psi, ye, out=psi).clamp_min_(1e-30)).mul_(2.0).log1p_()
    xs = affine(k["m00"], k["m01"], k["xs_0"]).addcmul_(u, k["xs_u"]).addcmul_(v, k["xs_v"])
    ys = affine(k["m10"], k["m11"], k["ys_0"]).addcmul_(u, k["ys_u"]).addcmul_(v, k["ys_v"])
    r2 = torch.mul(xs, xs, out=u).mul_(k["q_s"]).addcmul_(torch.mul(ys, k["inv_q_s"], out=psi), ys)
    if out is None:
        out = xs.new_empty((len(xs), 1 + k["n_clumps"], h, w))
    # log2 flux = (b_n - b_n (r / R_e)^(1/n) - ln norm + ln area) / ln 2, floored at EXP2_FLOOR (see sersic_unit_sb)
    power = r2.clamp_min_(1e-10).log_().mul_(k["sersic_slope"]).add_(k["sersic_offset"]).exp2_()
    _exp2_binned(torch.sub(k["sersic_log2"], power, out=power), out[:, 0])
    for c in range(k["n_clumps"]):
        r2 = torch.sub(xs, k[f"clump_x{c}"], out=u).square_()
        e = torch.sub(ys, k[f"clump_y{c}"], out=v)
        r2.addcmul_(e, e)
        _exp2_binned(r2.mul_(k[f"clump_a{c}"]).add_(k[f"clump_log2{c}"]), out[:, 1 + c])
    return out


def cell_constants(k: dict, origin_x, origin_y, pixel_area_arcsec2: float) -> dict:
    """``trace_coefficients`` rows of N cells (each (N, 1, 1, 1, 1)) with what depends on the cell's origin
    (offset (arcsec) of the centre of its first pixel from its lens centre, (N,)) and on the sub-pixel
    area (arcsec^2) folded in, once per cell rather than once per pass."""
    def col(t):
        return t.reshape(len(origin_x), 1, 1, 1, 1)

    out = {key: col(k[key]) for key in ("xe_x", "xe_y", "ye_x", "ye_y", "q2", "inv_ecc", "m00", "m01", "m10", "m11",
                                        "xs_u", "xs_v", "ys_u", "ys_v", "q_s", "inv_q_s", "sersic_slope",
                                        "sersic_offset")}
    log2_area = LOG2E * math.log(pixel_area_arcsec2)
    out |= {"xe_0": col(k["xe_x"] * origin_x + k["xe_y"] * origin_y),
            "ye_0": col(k["ye_x"] * origin_x + k["ye_y"] * origin_y),
            "xs_0": col(k["m00"] * origin_x + k["m01"] * origin_y + k["off0"]),
            "ys_0": col(k["m10"] * origin_x + k["m11"] * origin_y + k["off1"]),
            "sersic_log2": col(k["sersic_log2"] + log2_area), "n_clumps": k["clump_x"].shape[1] if "clump_x" in k else 0}
    for c in range(out["n_clumps"]):
        out |= {f"clump_x{c}": col(k["clump_x"][:, c]), f"clump_y{c}": col(k["clump_y"][:, c]),
                f"clump_a{c}": col(k["clump_a"][:, c]), f"clump_log2{c}": col(k["clump_log2"][:, c] + log2_area)}
    return out


def _exp2_binned(log2_flux, out):
    """2^ of sub-pixel log2-fluxes (N, s, s, h, w), floored at EXP2_FLOOR, summed over each pixel into out (N, h, w)."""
    n, h, w = out.shape
    flux = log2_flux.clamp_min_(EXP2_FLOOR)
    if flux.numel() == out.numel():   # one sample per pixel
        torch.exp2(flux.view(n, h, w), out=out)
    else:
        torch.sum(flux.exp2_().view(n, -1, h, w), 1, out=out)


CHUNK_POINTS = 1 << 16   # sub-pixels per unit_fluxes call: its ~6 live buffers stay in a core's L2 cache


def _cell_grid(npix, ss, settings, device):
    """Sub-pixel offsets (gx, gy), each (ss, ss, npix, npix) arcsec (sub-row, sub-column, row, column), from
    the centre of a cell's first pixel."""
    sub = (torch.arange(ss, device=device, dtype=torch.float32) + 0.5) / ss - 0.5
    axis = (sub[:, None] + torch.arange(npix, device=device, dtype=torch.float32)) * settings.pixel_scale_arcsec
    shape = (ss, ss, npix, npix)
    return axis[None, :, None, :].expand(shape).contiguous(), axis[:, None, :, None].expand(shape).contiguous()


def _cell_origin(lo_pix, settings, lens_arcsec):
    """Offset (arcsec) of the centre of a cell's first pixel (index ``lo_pix``) from its lens centre."""
    return (lo_pix.to(torch.float32) - (settings.stamp_size - 1) / 2.0) * settings.pixel_scale_arcsec - lens_arcsec


def _render_cells(k, p, idx, lo_x, lo_y, npix, ss, settings):
    """unit_fluxes (N, C, npix, npix) of cells (stamp ``idx``, first pixel (lo_x, lo_y)), in L2-sized chunks."""
    per_chunk = max(1, CHUNK_POINTS // (npix * ss) ** 2)
    gx, gy = _cell_grid(npix, ss, settings, idx.device)
    cells = cell_constants({key: v[idx] for key, v in k.items()}, _cell_origin(lo_x, settings, p["lens_x_arcsec"][idx]),
                           _cell_origin(lo_y, settings, p["lens_y_arcsec"][idx]), (settings.pixel_scale_arcsec / ss) ** 2)
    names = [key for key in cells if key != "n_clumps"]
    table = torch.stack([cells[key] for key in names], 1)   # (N, K, 1, 1, 1, 1): one slice per chunk
    out = table.new_empty((len(idx), 1 + cells["n_clumps"], npix, npix))
    for lo in range(0, len(idx), per_chunk):
        rows = dict(zip(names, table[lo:lo + per_chunk].unbind(1)), n_clumps=cells["n_clumps"])
        unit_fluxes(gx, gy, rows, out[lo:lo + per_chunk])
    return out


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
    n_b = p["theta_e_arcsec"].shape[0]
    if source_images is None:
        k = trace_coefficients(p)

        def draw(idx, lo_x, lo_y, npix, sub):
            return _render_cells(k, p, idx, lo_x, lo_y, npix, sub, settings)
    else:
        cols = {key: v[:, None, None] for key, v in p.items() if key in LENS_KEYS + SOURCE_KEYS}

        def draw(idx, lo_x, lo_y, npix, sub):
            axis = _cell_grid(npix, sub, settings, device)[0][0, :, 0, :].T.reshape(-1)   # (npix * sub,)
            origin = torch.zeros(len(idx), device=device)
            x = (_cell_origin(lo_x, settings, origin)[:, None] + axis)[:, None, :]
            y = (_cell_origin(lo_y, settings, origin)[:, None] + axis)[:, :, None]
            sb = _pixelised_sb(x, y, {key: v[idx] for key, v in cols.items()}, source_images[idx],
                               source_pixel_scale_arcsec)
            return _binned(sb, sub, settings.pixel_scale_arcsec)
    everyone = torch.arange(n_b, device=device)
    corner = torch.zeros(n_b, dtype=torch.long, device=device)
    coarse = draw(everyone, corner, corner, size, 1)
    if ss == 1:
        return coarse
    if size % tile_pix:
        tile_pix = size
    n_tiles = size // tile_pix
    # (B, C, n_tiles, n_tiles): over each tile's rows (whole image rows at a time), then its columns; 6x faster
    # than max_pool2d
    n_c = coarse.shape[1]
    tile_max = coarse.view(n_b, n_c, n_tiles, tile_pix, size).amax(3).view(n_b, n_c, n_tiles, n_tiles, tile_pix).amax(4)
    peak = tile_max.amax(dim=(2, 3))[:, :, None, None]  # (B, C, 1, 1)
    hot = (tile_max > settings.refine_rel * peak).any(dim=1)  # (B, n_tiles, n_tiles)
    # grow by one tile (3 x 3 neighbourhood): a thin arc can slip between the coarse samples of a neighbouring tile
    hot = torch.nn.functional.pad(hot.to(torch.uint8), (1, 1, 1, 1))
    hot = hot[:, :-2] | hot[:, 1:-1] | hot[:, 2:]
    b_idx, ty, tx = torch.nonzero(hot[:, :, :-2] | hot[:, :, 1:-1] | hot[:, :, 2:], as_tuple=True)
    if b_idx.numel():
        # the refined tiles' pixels in the flattened batch: first pixel + (component, row, column) offsets
        first = (b_idx * n_c * size + ty * tile_pix) * size + tx * tile_pix
        within = _cell_offsets(n_c, tile_pix, size, device)
        coarse.view(-1).index_copy_(0, (first[:, None] + within).view(-1),
                                    draw(b_idx, tx * tile_pix, ty * tile_pix, tile_pix, ss).view(-1))
    return coarse


@functools.lru_cache(maxsize=8)
def _cell_offsets(n_components: int, npix: int, size: int, device):
    """Offsets (C * npix * npix,) of a cell's pixels from its first pixel in a (C, size, size) stamp."""
    c, y, x = torch.meshgrid(*(torch.arange(k, device=device) for k in (n_components, npix, npix)), indexing="ij")
    return ((c * size + y) * size + x).reshape(-1)


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
    # colour the unit components per band, then one FFT, transfer product and inverse FFT per band
    bands = torch.einsum("bcyx,bcf->bfyx", units, fluxes)
    arcs = convolve_with_transfer(bands, moffat_transfer(p["psf_fwhm_arcsec"], settings), settings.stamp_size)
    return arcs, lensed_flux

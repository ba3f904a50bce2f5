"""Moffat point-spread functions (beta = 3.5 by default), batched over stamps.

The Moffat profile with FWHM = ``psfsize`` is taken as the *effective* PSF
(optics + atmosphere + pixel response, as a PSF model fitted to stars is), so a
star's pixel values are the profile sampled at pixel centres.  Kernels are cut
to at most the stamp size and normalised to unit sum.
"""
from __future__ import annotations

import numpy as np
from scipy import fft

from darkhalo.core.units import PIXEL_SCALE_ARCSEC

DEFAULT_MOFFAT_BETA = 3.5


def moffat_alpha_pix(fwhm_arcsec, beta=DEFAULT_MOFFAT_BETA, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC):
    """Moffat core width alpha (pixels) of a profile with FWHM ``fwhm_arcsec``."""
    fwhm_pix = np.asarray(fwhm_arcsec, dtype=np.float64) / pixel_scale_arcsec
    return fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_image(fwhm_arcsec, x0_pix, y0_pix, size, beta=DEFAULT_MOFFAT_BETA,
                 pixel_scale_arcsec=PIXEL_SCALE_ARCSEC):
    """Unit-flux Moffat profiles sampled at pixel centres, shape (B, size, size).

    ``x0_pix``/``y0_pix`` (shape (B,)) are the centres in pixel coordinates
    (column, row), pixel centres at integers.  Normalised to the analytic
    integral pi alpha^2 / (beta - 1), so flux falling off the stamp is lost,
    as for a real star.
    """
    alpha = np.atleast_1d(moffat_alpha_pix(fwhm_arcsec, beta, pixel_scale_arcsec))[:, None, None]
    x0 = np.atleast_1d(np.asarray(x0_pix, dtype=np.float64))[:, None, None]
    y0 = np.atleast_1d(np.asarray(y0_pix, dtype=np.float64))[:, None, None]
    coords = np.arange(size, dtype=np.float64)
    r2 = (coords[None, None, :] - x0) ** 2 + (coords[None, :, None] - y0) ** 2
    norm = (beta - 1.0) / (np.pi * alpha**2)
    return norm * (1.0 + r2 / alpha**2) ** (-beta)


def moffat_kernels(fwhm_arcsec, size, beta=DEFAULT_MOFFAT_BETA, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC):
    """Centred convolution kernels, shape (B, k, k) with k the largest odd size <= ``size``.

    Each kernel sums to 1 (the few 1e-4 of flux beyond the stamp are folded in).
    """
    k = size if size % 2 == 1 else size - 1
    centre = np.full(np.atleast_1d(fwhm_arcsec).shape, (k - 1) / 2.0)
    kern = moffat_image(fwhm_arcsec, centre, centre, k, beta, pixel_scale_arcsec)
    return kern / kern.sum(axis=(1, 2), keepdims=True)


def convolve_moffat(images, fwhm_arcsec, beta=DEFAULT_MOFFAT_BETA, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC, chunk=32):
    """Images (B, S, S) convolved with their ``moffat_kernels`` (FWHM (B,)), cropped to (B, S, S).

    The same as ``scipy.signal.fftconvolve(images, kernels, mode="same", axes=(1, 2))`` (to rounding):
    real FFTs at n = the even 5-smooth size >= S + k // 2, the smallest with no wrap-around onto
    the stamp (96 for 64-pixel stamps, where fftconvolve takes 128).  A kernel is even in x and in
    y, so its transfer function is real: a 2-D DCT-I of one quadrant (no complex FFT of the kernel).
    The image transforms skip the zero padding (forward: the data's rows only; inverse: the
    stamp's rows only).
    """
    images = np.asarray(images, dtype=np.float64)
    size = images.shape[-1]
    fwhm = np.atleast_1d(np.asarray(fwhm_arcsec, dtype=np.float64))
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):   # chunks keep the spectra in cache
        sl = slice(start, start + chunk)
        kernels = moffat_kernels(fwhm[sl], size, beta, pixel_scale_arcsec)
        half = kernels.shape[-1] // 2
        n = fft.next_fast_len(size + half, real=True)
        while n % 2:
            n = fft.next_fast_len(n + 1, real=True)
        quadrant = np.zeros(kernels.shape[:-2] + (n // 2 + 1, n // 2 + 1))
        quadrant[..., :half + 1, :half + 1] = kernels[..., half:, half:]
        transfer = fft.dct(fft.dct(quadrant, type=1, axis=-1), type=1, axis=-2)[..., None]   # rows 0..n/2
        spectra = fft.fft(fft.rfft(images[sl], n=n, axis=-1), n=n, axis=-2)
        re_im = spectra.view(np.float64).reshape(spectra.shape + (2,))   # a real transfer scales both parts
        re_im[..., :n // 2 + 1, :, :] *= transfer
        re_im[..., n // 2 + 1:, :, :] *= transfer[..., n // 2 - 1:0:-1, :, :]   # rows n-1..n/2+1 mirror 1..n/2-1
        out[sl] = fft.irfft(fft.ifft(spectra, axis=-2)[..., :size, :], n=n, axis=-1)[..., :size]
    return out


def noise_equivalent_area_pix(kernels):
    """Noise-equivalent area 1 / sum(P^2) (pixels) of unit-sum kernels (B, k, k)."""
    return 1.0 / np.sum(np.asarray(kernels, dtype=np.float64) ** 2, axis=(-2, -1))

"""The input normalisation shared by the gates (1.5, 1.6) and training/inference.

The users' robust normalisation (DESIGN §4): per stamp and band, subtract the
median and divide by 1.4826·MAD of the pixels *outside* the central circle of
radius ``outer_radius_pix`` (16 px for 64 px stamps), then clip to
``±clip``.  Radii are measured from the stamp centre ``(N-1)/2`` to pixel
centres (ARCHITECTURE.md conventions).  Outputs are in units of that robust
background sigma (dimensionless).

A normalisation is named and fully described by :class:`Normalization`;
``to_dict()`` goes into checkpoints and ``normalization_from_dict`` restores
it, so every inference path uses exactly the parameters training used.
NaN pixels in the outer region make the band's statistics NaN (and the
normalised band NaN): rows with non-finite pixels fail data contract 1.2 and
are quarantined before training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

OUTER_ANNULUS_MAD = "outer_annulus_mad"
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Normalization:
    """Parameters of the robust outer-region normalisation (store ``to_dict()`` in checkpoints)."""

    name: str = OUTER_ANNULUS_MAD
    outer_radius_pix: float = 16.0   # pixels at radius >= this feed the median/MAD
    clip: float = 10.0               # |normalised value| is clipped here (robust sigma units)
    mad_to_sigma: float = MAD_TO_SIGMA
    min_scale_nmgy: float = 1e-12    # floor on the scale (a constant band would divide by 0)

    def __post_init__(self):
        if self.name != OUTER_ANNULUS_MAD:
            raise ValueError(f"unknown normalisation {self.name!r} (known: {OUTER_ANNULUS_MAD!r})")
        if not (self.outer_radius_pix > 0 and self.clip > 0 and self.mad_to_sigma > 0 and self.min_scale_nmgy > 0):
            raise ValueError(f"normalisation parameters must be positive: {self}")

    def to_dict(self) -> dict:
        """Plain dict (JSON / checkpoint friendly)."""
        return dataclasses.asdict(self)


DEFAULT_NORMALIZATION = Normalization()


def normalization_from_dict(spec: dict) -> Normalization:
    """Rebuild a Normalization from ``to_dict()`` output; unknown keys or names fail loudly."""
    fields = {f.name for f in dataclasses.fields(Normalization)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"normalisation spec has unknown key(s) {unknown}; known: {sorted(fields)}")
    return Normalization(**spec)


@lru_cache(maxsize=16)
def radius_map_pix(size: int) -> np.ndarray:
    """(size, size) distance (px) of each pixel centre from the stamp centre (size-1)/2."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - c, xx - c)
    r.setflags(write=False)
    return r


def outer_mask(size: int, radius_pix: float) -> np.ndarray:
    """Bool (size, size): pixels at distance >= ``radius_pix`` from the centre."""
    return radius_map_pix(size) >= radius_pix


def core_mask(size: int, radius_pix: float) -> np.ndarray:
    """Bool (size, size): pixels at distance < ``radius_pix`` from the centre."""
    return radius_map_pix(size) < radius_pix


def robust_stats(images: np.ndarray, spec: Normalization = DEFAULT_NORMALIZATION) -> tuple[np.ndarray, np.ndarray]:
    """Outer median and robust sigma (1.4826·MAD, floored), in the images' units (nmgy).

    ``images``: (..., S, S); returns two arrays of shape ``images.shape[:-2]`` (float64).
    """
    images = np.asarray(images)
    size = images.shape[-1]
    if images.shape[-2] != size:
        raise ValueError(f"stamps must be square, got {images.shape[-2:]}")
    outer = images[..., outer_mask(size, spec.outer_radius_pix)].astype(np.float64)
    if outer.shape[-1] < 2:
        raise ValueError(f"outer_radius_pix = {spec.outer_radius_pix} leaves {outer.shape[-1]} pixels in a "
                         f"{size} px stamp")
    median = np.median(outer, axis=-1)
    mad = np.median(np.abs(outer - median[..., None]), axis=-1)
    scale = np.maximum(spec.mad_to_sigma * mad, spec.min_scale_nmgy)
    scale = np.where(np.isnan(mad), np.nan, scale)
    return median, scale


def normalize(images: np.ndarray, spec: Normalization = DEFAULT_NORMALIZATION, *, clip: bool = True) -> np.ndarray:
    """Normalised stamps (float32, same shape): (x - outer median) / outer robust sigma, clipped to ±clip.

    ``images``: (..., S, S) in nmgy (typically (N, 3, S, S)).  ``clip=False``
    returns the unclipped values (used by gate diagnostics only).
    """
    median, scale = robust_stats(images, spec)
    out = (np.asarray(images, np.float64) - median[..., None, None]) / scale[..., None, None]
    if clip:
        out = np.clip(out, -spec.clip, spec.clip)
    return out.astype(np.float32)


def clip_fraction(normalised_unclipped: np.ndarray, spec: Normalization = DEFAULT_NORMALIZATION) -> np.ndarray:
    """Fraction of pixels per stamp/band that ``normalize`` clips (|value| > clip); shape (...)."""
    return np.mean(np.abs(normalised_unclipped) > spec.clip, axis=(-2, -1))

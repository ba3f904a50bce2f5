"""The model input: a named, versioned preprocessing shared by the gates, training and inference.

Two preprocessings, both described fully by :class:`Normalization`:

``outer_annulus_mad`` -- the users' Gen5 input.  Per stamp and band, subtract the
median and divide by 1.4826·MAD of the pixels *outside* the central circle of
radius ``outer_radius_pix`` (16 px for 64 px stamps), then clip to
``±clip``.  Radii are measured from the stamp centre ``(N-1)/2`` to pixel
centres (ARCHITECTURE.md conventions).  Outputs are in units of that robust
background sigma (dimensionless).

``residual`` -- the lens light removed (docs/domain.md, "The residual input").
After the same outer normalisation (unclipped), per stamp: the light centre is
the flux-weighted centroid of the band sum inside ``centroid_radius_pix``
(iterated about the current estimate, at most ``max_centre_shift_pix`` from
the stamp centre); per band, the azimuthal *median* in 1-pixel annuli about
that centre is the lens galaxy's radial profile, linearly interpolated in
radius and subtracted; then clip to ``±clip`` and keep the central
``crop_pix`` x ``crop_pix`` (0 keeps the stamp).  A symmetric lens leaves
noise; an arc covering a minority of its annulus survives; a complete Einstein
ring is (partly) subtracted with the lens: the fraction of arc S/N that
survives is measured per θ_E bin by ``arc_snr_survival``.

A normalisation is named and fully described by :class:`Normalization`;
``to_dict()`` goes into checkpoints and ``normalization_from_dict`` restores
it, so every inference path uses exactly the parameters training used.
NaN pixels in the outer region make the band's statistics NaN (and the
normalised band NaN): rows with non-finite pixels fail data contract 1.2 and
are quarantined before training.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

THREAD_BLOCK_STAMPS = 64   # stamps per block of threaded normalisation (a stamp's bytes do not depend on its batch)

OUTER_ANNULUS_MAD = "outer_annulus_mad"
RESIDUAL = "residual"
PREPROCESSINGS = (OUTER_ANNULUS_MAD, RESIDUAL)
PREPROCESSING_VERSION = 2            # 1: outer_annulus_mad only (no version key stored)
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Normalization:
    """A model-input preprocessing: name + every parameter (store ``to_dict()`` in checkpoints)."""

    name: str = OUTER_ANNULUS_MAD
    outer_radius_pix: float = 16.0   # pixels at radius >= this feed the median/MAD
    clip: float = 10.0               # |normalised value| is clipped here (robust sigma units)
    mad_to_sigma: float = MAD_TO_SIGMA
    min_scale_nmgy: float = 1e-12    # floor on the scale (a constant band would divide by 0)
    crop_pix: int = 0                # > 0: the model sees the central crop_pix x crop_pix pixels
    centroid_radius_pix: float = 5.0     # residual: light centre measured inside this radius (px)
    max_centre_shift_pix: float = 3.0    # residual: the light centre stays this close to the stamp centre
    version: int = PREPROCESSING_VERSION

    def __post_init__(self):
        if self.name not in PREPROCESSINGS:
            raise ValueError(f"unknown preprocessing {self.name!r} (known: {', '.join(PREPROCESSINGS)})")
        if self.version not in (1, PREPROCESSING_VERSION):
            raise ValueError(f"preprocessing version {self.version} is not supported by this code "
                             f"(known: 1, {PREPROCESSING_VERSION})")
        if not (self.outer_radius_pix > 0 and self.clip > 0 and self.mad_to_sigma > 0 and self.min_scale_nmgy > 0
                and self.centroid_radius_pix > 0 and self.max_centre_shift_pix >= 0):
            raise ValueError(f"preprocessing parameters must be positive: {self}")
        if self.crop_pix < 0 or self.crop_pix % 2:
            raise ValueError(f"crop_pix = {self.crop_pix}: must be 0 (no crop) or a positive even number of pixels")

    def to_dict(self) -> dict:
        """Plain dict (JSON / checkpoint friendly)."""
        return dataclasses.asdict(self)


DEFAULT_NORMALIZATION = Normalization()


def normalization_from_dict(spec: dict) -> Normalization:
    """Rebuild a Normalization from ``to_dict()`` output; unknown keys or names fail loudly.

    A dict without ``version`` was written before versioning (version 1: the outer-annulus input).
    """
    fields = {f.name for f in dataclasses.fields(Normalization)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"preprocessing spec has unknown key(s) {unknown}; known: {sorted(fields)}")
    return Normalization(**{"version": 1, **spec})


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
    # medians in the stamps' own precision (float32 stamps: twice as fast; a median picks stored values)
    outer = images[..., outer_mask(size, spec.outer_radius_pix)]
    if not np.issubdtype(outer.dtype, np.floating):
        outer = outer.astype(np.float64)
    if outer.shape[-1] < 2:
        raise ValueError(f"outer_radius_pix = {spec.outer_radius_pix} leaves {outer.shape[-1]} pixels in a "
                         f"{size} px stamp")
    median = np.median(outer, axis=-1)
    mad = np.median(np.abs(outer - median[..., None]), axis=-1).astype(np.float64)
    median = median.astype(np.float64)
    scale = np.maximum(spec.mad_to_sigma * mad, spec.min_scale_nmgy)
    scale = np.where(np.isnan(mad), np.nan, scale)
    return median, scale


def normalize(images: np.ndarray, spec: Normalization = DEFAULT_NORMALIZATION, *, clip: bool = True,
              threads: int = 1) -> np.ndarray:
    """The model input of ``spec`` (float32): (N, 3, S, S) stamps in nmgy -> (N, 3, C, C), C = crop_pix or S.

    ``outer_annulus_mad``: (x - outer median) / outer robust sigma, clipped to ±clip; accepts any
    (..., S, S).  ``residual``: the same minus each band's azimuthal-median profile about the light
    centre (module doc).  ``clip=False`` returns unclipped values (gate diagnostics only).
    ``threads`` > 1 normalises blocks of ``THREAD_BLOCK_STAMPS`` stamps in that many threads (numpy
    releases the GIL); every stamp's bytes are the same as with one thread.
    """
    images = np.asarray(images)
    if threads > 1 and images.ndim == 4 and len(images) > THREAD_BLOCK_STAMPS:
        blocks = [images[start:start + THREAD_BLOCK_STAMPS]
                  for start in range(0, len(images), THREAD_BLOCK_STAMPS)]
        with ThreadPoolExecutor(threads) as pool:
            return np.concatenate(list(pool.map(lambda block: normalize(block, spec, clip=clip), blocks)))
    median, scale = robust_stats(images, spec)
    out = (np.asarray(images, np.float64) - median[..., None, None]) / scale[..., None, None]
    if spec.name == RESIDUAL:
        out = subtract_radial_profile(out, spec)
    if clip:
        out = np.clip(out, -spec.clip, spec.clip)
    return crop(out, spec.crop_pix).astype(np.float32)


def crop(images: np.ndarray, crop_pix: int) -> np.ndarray:
    """The central ``crop_pix`` x ``crop_pix`` pixels of (..., S, S) stamps (``crop_pix`` 0: unchanged)."""
    size = images.shape[-1]
    if not crop_pix or crop_pix == size:
        return images
    if crop_pix > size:
        raise ValueError(f"crop_pix = {crop_pix} is larger than the {size} px stamps")
    lo = (size - crop_pix) // 2
    return images[..., lo:lo + crop_pix, lo:lo + crop_pix]


def light_centres(images: np.ndarray, spec: Normalization) -> np.ndarray:
    """(N, 2) light centre (y, x) in pixels of (N, B, S, S) normalised stamps: iterated centroid of the band sum."""
    n, _, size, _ = images.shape
    half = int(np.ceil(spec.centroid_radius_pix + spec.max_centre_shift_pix)) + 1
    lo = max(0, size // 2 - half)
    box = np.clip(np.nansum(images[..., lo:size - lo, lo:size - lo], axis=1), 0.0, None)  # negative noise ignored
    yy, xx = np.mgrid[lo:size - lo, lo:size - lo].astype(np.float64)
    middle = (size - 1) / 2.0
    centre = np.full((n, 2), middle)
    for _ in range(3):
        w = box * (np.hypot(yy - centre[:, :1, None], xx - centre[:, 1:, None]) < spec.centroid_radius_pix)
        norm = w.sum(axis=(1, 2))
        safe = np.where(norm > 0, norm, 1.0)
        shift = np.where((norm > 0)[:, None], np.stack([(w * yy).sum(axis=(1, 2)), (w * xx).sum(axis=(1, 2))], 1)
                         / safe[:, None], middle) - middle
        shift *= np.minimum(1.0, spec.max_centre_shift_pix / np.maximum(np.hypot(*shift.T), 1e-12))[:, None]
        centre = middle + shift
    return centre


def subtract_radial_profile(images: np.ndarray, spec: Normalization, chunk: int = 256) -> np.ndarray:
    """(N, B, S, S) minus each band's azimuthal-median radial profile (1-px annuli) about its light centre.

    The profile is evaluated at every pixel by linear interpolation between annulus medians (at
    the annuli's mean radii).  With ``crop_pix`` only the box the crop needs (plus the centre
    shift) is computed; pixels outside it are returned unchanged.  Non-finite pixels stay
    non-finite (they fail contract 1.2 upstream).
    """
    images = np.asarray(images, np.float64)
    if images.ndim != 4:
        raise ValueError(f"residual preprocessing needs (N, bands, S, S) stamps, got shape {images.shape}")
    size = images.shape[-1]
    box = min(size, spec.crop_pix + 2 * int(np.ceil(spec.max_centre_shift_pix)) + 2) if spec.crop_pix else size
    lo = (size - box) // 2
    out = images.copy()
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        centre = light_centres(part, spec) - lo
        out[start:start + chunk, :, lo:lo + box, lo:lo + box] = _residual_box(part[..., lo:lo + box, lo:lo + box],
                                                                               centre)
    return out


def _residual_box(images: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(N, B, S, S) minus the azimuthal-median profile about ``centre`` ((N, 2) y, x in pixels of this box)."""
    n, n_bands, size, _ = images.shape
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    radius = np.hypot(yy - centre[:, :1, None], xx - centre[:, 1:, None]).reshape(n, -1)   # (N, P)
    n_bins = int(np.floor(radius.max())) + 1
    ring = np.floor(radius).astype(np.int64)                                            # (N, P)
    stamp_ring = (np.arange(n)[:, None] * n_bins + ring).ravel()
    group = (np.arange(n)[:, None, None] * n_bands + np.arange(n_bands)[None, :, None]) * n_bins + ring[:, None, :]
    values = images.reshape(n, n_bands, -1)
    flat_group, flat_values = group.ravel(), values.ravel()
    # sort by (group, value) with one float key: arctan maps each value monotonically into its group's
    # unit interval (ten times faster than lexsort); the medians are then read from the exact values
    key = flat_group + 0.5 + np.arctan(np.nan_to_num(flat_values, nan=np.inf)) * (0.999 / np.pi)
    sorted_values = flat_values[np.argsort(key)]
    counts = np.bincount(flat_group, minlength=n * n_bands * n_bins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    filled = counts > 0
    lo = np.where(filled, starts + np.maximum(counts - 1, 0) // 2, 0)
    hi = np.where(filled, starts + counts // 2, 0)
    medians = (0.5 * (sorted_values[lo] + sorted_values[hi])).reshape(n, n_bands, n_bins)
    ring_n = np.bincount(stamp_ring, minlength=n * n_bins).reshape(n, n_bins)
    ring_radius = (np.bincount(stamp_ring, weights=radius.ravel(), minlength=n * n_bins).reshape(n, n_bins)
                   / np.maximum(ring_n, 1))
    # an empty annulus (possible only beyond the box's inscribed circle) borrows its inner neighbour
    for k in range(1, n_bins):
        empty = ring_n[:, k] == 0
        medians[empty, :, k] = medians[empty, :, k - 1]
        ring_radius[empty, k] = ring_radius[empty, k - 1] + 1.0
    # linear interpolation in radius between the annuli's mean radii (flat inside the innermost)
    below = np.take_along_axis(ring_radius, ring, 1) > radius
    k0 = np.clip(ring - below, 0, n_bins - 2)
    r0, r1 = np.take_along_axis(ring_radius, k0, 1), np.take_along_axis(ring_radius, k0 + 1, 1)
    w = np.clip((radius - r0) / np.maximum(r1 - r0, 1e-9), 0.0, 1.0)[:, None, :]
    m0 = np.take_along_axis(medians, np.broadcast_to(k0[:, None, :], values.shape), 2)
    m1 = np.take_along_axis(medians, np.broadcast_to(k0[:, None, :] + 1, values.shape), 2)
    profile = (1 - w) * m0 + w * m1
    return (values - profile).reshape(images.shape)


def clip_fraction(normalised_unclipped: np.ndarray, spec: Normalization = DEFAULT_NORMALIZATION) -> np.ndarray:
    """Fraction of pixels per stamp/band that ``normalize`` clips (|value| > clip); shape (...)."""
    return np.mean(np.abs(normalised_unclipped) > spec.clip, axis=(-2, -1))


def arc_snr_survival(background_nmgy: np.ndarray, arcs_nmgy: np.ndarray, spec: Normalization) -> np.ndarray:
    """Fraction of each arc's matched-filter S/N that survives the preprocessing ``spec`` (N,).

    ``background_nmgy``: (N, 3, S, S) stamps without the arc; ``arcs_nmgy``: the noiseless arcs.
    The arc as the model sees it is input(background + arc) - input(background) (unclipped); its
    root-sum-square (S/N in units of the outer robust sigma) is divided by that of the arc under
    the plain outer normalisation on the whole stamp.  1 for ``outer_annulus_mad`` without a crop;
    a residual input loses the azimuthally symmetric part of the arc (all of a complete ring).
    """
    reference = dataclasses.replace(spec, name=OUTER_ANNULUS_MAD, crop_pix=0)
    lensed = np.asarray(background_nmgy, np.float64) + arcs_nmgy

    def arc_snr(s: Normalization) -> np.ndarray:
        seen = normalize(lensed, s, clip=False).astype(np.float64) - normalize(background_nmgy, s, clip=False)
        return np.sqrt(np.sum(seen ** 2, axis=(1, 2, 3)))

    full = arc_snr(reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(full > 0, arc_snr(spec) / full, np.nan)

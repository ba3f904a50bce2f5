"""The shared robust normalisation (darkhalo/physics/normalize.py): definition, parameters, checkpoint round trip."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from darkhalo.physics.normalize import (DEFAULT_NORMALIZATION, RESIDUAL, Normalization, core_mask, normalization_from_dict,
                                normalize, outer_mask, robust_stats)


def reference(stamp: np.ndarray, radius: float, clip: float) -> np.ndarray:
    """Direct per-band computation of the users' definition (docs/domain.md), written without the library."""
    size = stamp.shape[-1]
    out = np.empty_like(stamp, dtype=np.float64)
    for b in range(stamp.shape[0]):
        outer = [stamp[b, i, j] for i in range(size) for j in range(size)
                 if np.hypot(i - (size - 1) / 2, j - (size - 1) / 2) >= radius]
        med = np.median(outer)
        sigma = 1.4826 * np.median(np.abs(np.array(outer) - med))
        out[b] = np.clip((stamp[b] - med) / sigma, -clip, clip)
    return out


def test_matches_the_definition_and_recovers_sky_and_noise():
    rng = np.random.default_rng(0)
    sky, sigma = np.array([0.01, 0.02, 0.05]), np.array([0.004, 0.006, 0.02])
    stamps = sky[None, :, None, None] + sigma[None, :, None, None] * rng.standard_normal((4, 3, 64, 64))
    stamps[:, :, 28:36, 28:36] += 5.0                       # a bright core, inside r < 16 px
    median, scale = robust_stats(stamps)
    assert np.allclose(median, sky[None], atol=4 * sigma.max() / np.sqrt(3000))
    assert np.allclose(scale / sigma[None], 1.0, atol=0.06)
    out = normalize(stamps)
    assert out.dtype == np.float32 and out.shape == stamps.shape
    assert np.abs(out).max() == pytest.approx(10.0) and (out[:, :, 30, 30] == 10.0).all()
    assert np.allclose(out[1], reference(stamps[1], 16.0, 10.0), atol=1e-5)


def test_geometry_of_the_masks():
    outer, core = outer_mask(64, 16.0), core_mask(64, 4.0)
    assert outer.sum() == 4096 - core_mask(64, 16.0).sum()
    assert not outer[31, 31] and outer[0, 0] and core[31, 32] and not core[31, 36]
    assert np.array_equal(core, core[::-1, ::-1]) and core.sum() == 52   # symmetric about (N-1)/2


def test_parameters_round_trip_through_a_checkpoint():
    spec = Normalization(outer_radius_pix=12.0, clip=5.0)
    restored = normalization_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec and restored.name == "outer_annulus_mad"
    assert normalization_from_dict(DEFAULT_NORMALIZATION.to_dict()) == DEFAULT_NORMALIZATION
    with pytest.raises(ValueError, match="unknown preprocessing"):
        Normalization(name="zscale")
    with pytest.raises(ValueError, match="unknown key"):
        normalization_from_dict({**spec.to_dict(), "gain": 2.0})


def test_nan_pixels_propagate_and_constant_bands_do_not_divide_by_zero():
    stamps = np.zeros((2, 3, 64, 64), np.float32)
    stamps[0, 1, 0, 0] = np.nan
    out = normalize(stamps)
    assert np.isnan(out[0, 1]).all() and np.isfinite(out[0, [0, 2]]).all() and (out[1] == 0).all()


def test_threaded_normalisation_is_byte_identical():
    """Threads split the batch into blocks; a stamp's model input does not depend on its batch."""
    rng = np.random.default_rng(5)
    images = rng.normal(0.0, 0.01, (150, 3, 64, 64)) + 0.5 * np.exp(-np.hypot(*np.mgrid[-32:32, -32:32]) / 3.0)
    spec = dataclasses.replace(DEFAULT_NORMALIZATION, name=RESIDUAL, crop_pix=32)
    one = normalize(images, spec)
    assert np.array_equal(one, normalize(images, spec, threads=2))
    assert np.array_equal(one[17:18], normalize(images[17:18], spec))

"""Deterministic random streams.

Every random draw descends from (global seed, stream name, key), so a row's
values depend only on its own key (e.g. ``parent_id``) and never on batching,
sharding, worker count or engine.
"""
from __future__ import annotations

import zlib

import numpy as np


def stream_id(name: str) -> int:
    """Stable 32-bit integer for a stream name."""
    return zlib.crc32(name.encode("utf-8"))


def keyed_rng(seed: int, stream: str, key: int = 0) -> np.random.Generator:
    """Generator for one (seed, stream, key) triple; keys are non-negative ints."""
    if key < 0:
        raise ValueError(f"random-stream key must be >= 0, got {key}")
    return np.random.default_rng([int(seed), stream_id(stream), int(key)])


def uniform_hash(values: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer value (splitmix64 of value ^ seed)."""
    z = np.asarray(values).astype(np.uint64) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def parent_sample_mask(parent_id: np.ndarray, n_rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Rows whose parent is in a deterministic sample of about ``max_rows`` of ``n_rows`` rows (whole parents)."""
    p = min(1.0, max_rows / max(n_rows, 1))
    return uniform_hash(parent_id, seed) < p

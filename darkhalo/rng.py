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

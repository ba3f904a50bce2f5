"""Split-integrity tables: HEALPix pixels, parents, pairs, fractions, agreement with the assignment.

Pixels are recomputed from ``ra``/``dec`` (NESTED, the assignment's NSIDE) so
the disjointness check does not trust a stored ``healpix_pixel``; a stored
``healpix_pixel`` is checked against the recomputed one.  All tables are small
pandas frames (one row per pixel, parent, pair or split) except the per-row
agreement flags.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from darkhalo.sim.split import SPLITS, dilate, pixel_of


def split_codes(region_split: np.ndarray) -> np.ndarray:
    """int8 code per row: index in SPLITS, or -1 for anything else (including 'guard' and null)."""
    codes = np.full(region_split.size, -1, np.int8)
    for i, name in enumerate(SPLITS):
        codes[region_split == name] = i
    return codes


def pixel_table(pixels: np.ndarray, codes: np.ndarray, nside: int, guard_rings: int) -> pd.DataFrame:
    """One row per occupied pixel: splits present, and how many other splits lie within the guard band."""
    valid = codes >= 0
    key = np.unique(pixels[valid].astype(np.int64) * 4 + codes[valid])
    pix_k, code_k = key >> 2, key & 3
    pix_u, first, n_splits = np.unique(pix_k, return_index=True, return_counts=True)
    names = [",".join(SPLITS[c] for c in code_k[f:f + k]) for f, k in zip(first, n_splits)]
    conflicts = np.zeros(pix_u.size, np.int64)
    if guard_rings > 0:
        for c in range(len(SPLITS)):
            zone = dilate(nside, pix_k[code_k == c], guard_rings)
            other = np.unique(pix_k[code_k != c])
            hit = other[np.isin(other, zone)]
            conflicts[np.searchsorted(pix_u, hit)] += 1
    return pd.DataFrame({"healpix_pixel": pix_u, "n_splits": n_splits, "splits": names,
                         "n_other_splits_within_guard": conflicts})


def group_table(keys: list[np.ndarray], values: dict[str, np.ndarray], names: list[str]) -> pd.DataFrame:
    """Sum of ``values`` per unique combination of integer ``keys`` (columns ``names``)."""
    order = np.lexsort(keys[::-1])
    sorted_keys = [k[order] for k in keys]
    change = np.zeros(order.size, bool)
    if order.size:
        change[0] = True
        for k in sorted_keys:
            change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    out = {name: k[starts] for name, k in zip(names, sorted_keys)}
    for name, v in values.items():
        out[name] = np.add.reduceat(v[order], starts) if starts.size else np.zeros(0, v.dtype)
    return pd.DataFrame(out)


def _packable(keys: np.ndarray, width: int) -> bool:
    """True when non-negative ``keys`` times ``width`` fits in int64."""
    return keys.size == 0 or (keys.min() >= 0 and keys.max() < (1 << 62) // max(width, 1))


def _runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal values in a sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.append(True, sorted_keys[1:] != sorted_keys[:-1]))


def parent_table(parent_id: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    """One row per parent: number of distinct splits its stamps are in."""
    parent_id = parent_id.astype(np.int64)
    if _packable(parent_id, 4):
        key = np.sort(parent_id * 4 + (codes.astype(np.int64) + 1))
        distinct = key[_runs(key)] >> 2                # one entry per (parent, split), sorted by parent
        starts = _runs(distinct)
        return pd.DataFrame({"parent_id": distinct[starts], "n_splits": np.diff(np.append(starts, distinct.size))})
    per = group_table([parent_id, codes.astype(np.int64)], {"n_rows": np.ones(parent_id.size, np.int64)},
                      ["parent_id", "split_code"])
    counts = per.groupby("parent_id", sort=True).size()
    return pd.DataFrame({"parent_id": counts.index.to_numpy(), "n_splits": counts.to_numpy()})


def pair_table(parent_id: np.ndarray, replicate: np.ndarray, is_control: np.ndarray) -> pd.DataFrame:
    """One row per (parent_id, replicate): positives and controls in it, and whether it is 1 + 1."""
    parent_id, replicate = parent_id.astype(np.int64), replicate.astype(np.int64)
    ctrl = (is_control == 1).astype(np.int64)
    width = int(replicate.max()) + 1 if replicate.size else 1
    if _packable(parent_id, width) and (replicate.size == 0 or replicate.min() >= 0):
        key = parent_id * width + replicate
        order = np.argsort(key)
        key = key[order]
        starts = _runs(key)
        n_all = np.diff(np.append(starts, key.size))
        n_ctrl = np.add.reduceat(ctrl[order], starts) if starts.size else np.zeros(0, np.int64)
        table = pd.DataFrame({"parent_id": key[starts] // width, "replicate": key[starts] % width,
                              "n_positive": n_all - n_ctrl, "n_control": n_ctrl})
    else:
        table = group_table([parent_id, replicate], {"n_positive": 1 - ctrl, "n_control": ctrl},
                            ["parent_id", "replicate"])
    table["unpaired"] = ((table["n_positive"] != 1) | (table["n_control"] != 1)).astype(np.int8)
    return table


def fraction_table(codes: np.ndarray, declared: dict[str, float]) -> pd.DataFrame:
    """One row per declared split: rows, fraction of rows, declared fraction, |deviation|, Wilson interval."""
    from darkhalo.core.stats import wilson_interval

    n = int((codes >= 0).sum())
    records = []
    for i, name in enumerate(SPLITS):
        k = int((codes == i).sum())
        lo, hi = map(float, wilson_interval(k, n))
        frac = k / n if n else 0.0
        records.append({"region_split": name, "n_rows": k, "fraction": frac, "fraction_ci95_low": lo,
                        "fraction_ci95_high": hi, "declared_fraction": float(declared[name]),
                        "abs_fraction_deviation": abs(frac - float(declared[name]))})
    return pd.DataFrame.from_records(records)


def assignment_agreement(parent_id: np.ndarray, codes: np.ndarray, pixels: np.ndarray,
                         assignment: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (split agrees with the assignment table, pixel agrees with the assignment's pixel).

    ``codes`` are the rows' split codes (split_codes); parents missing from the
    assignment, or assigned to the guard band, disagree.
    """
    if assignment is None:
        return np.ones(parent_id.size, bool), np.ones(parent_id.size, bool)
    a_pid = assignment["parent_id"].to_numpy()
    order = np.argsort(a_pid)
    a_pid = a_pid[order]
    pos = np.clip(np.searchsorted(a_pid, parent_id), 0, max(a_pid.size - 1, 0))
    found = a_pid[pos] == parent_id if a_pid.size else np.zeros(parent_id.size, bool)
    a_codes = split_codes(assignment["region_split"].to_numpy(dtype=object))[order][pos]
    a_pix = assignment["healpix_pixel"].to_numpy()[order][pos]
    return found & (a_codes == codes) & (codes >= 0), found & (a_pix == pixels)


def recompute_pixels(ra: np.ndarray, dec: np.ndarray, nside: int) -> np.ndarray:
    """NESTED pixel per row from (ra, dec) in degrees."""
    return pixel_of(ra, dec, nside)

"""Row-level data contracts (gates 1.2, 1.4 and metadata), the schema table and the quarantine list.

Row contracts (one bool per row, True = satisfied):

=================  =====================================================================
``1.2:bandset``    ``bandset`` is "grz"
``1.2:shape``      ``stamp_size`` equals the declared size and the pixels decode at that shape
``1.2:bands``      image planes of g, r and z are all present
``1.2:finite``     every image pixel (and stored invvar pixel) is finite
``1.4:noise``      per band: a valid invvar plane (finite, >= 0, > 0 on unmasked pixels,
                   not all zero), or -- if allowed -- ``psfdepth_<band>`` > 0 when no plane is stored
``contract:cutout_ok``  ``cutout_ok`` is 1
``contract:sky``   ``ra`` and ``dec`` (deg) finite, |dec| <= 90 (the row has a HEALPix pixel)
``1.2:pixel_range``  every finite image pixel within +/- ``gates.max_abs_pixel_nmgy`` (plausible flux)
``contract:quality_range``  every observing-quality column present within its ``gates.quality_ranges``
                   interval (null or NaN = not measured, passes: gate 1.1 counts it; an infinity fails)
=================  =====================================================================

Under policy ``quarantine`` a row failing any contract, and the other rows of
its (pairing key, replicate) pair, go to the quarantine list; every dataset-level
gate then runs on the surviving rows.  Without a pairing key (the users' legacy
layout) only the failing row is quarantined.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from darkhalo.core.units import BANDS
from darkhalo.gates.columns import OPTIONAL_COLUMNS, PAIR_COLUMNS, REQUIRED_COLUMNS, kind_of
from darkhalo.gates.scan import Scan, read_column

ROW_CONTRACTS = ("1.2:bandset", "1.2:shape", "1.2:bands", "1.2:finite", "1.2:pixel_range", "1.4:noise",
                 "contract:cutout_ok", "contract:sky", "contract:quality_range")
PIXEL_CONTRACTS = ("1.2:bands", "1.2:finite", "1.2:pixel_range", "1.4:noise")
PARTNER = "pair_partner_quarantined"


def flag_column(contract: str) -> str:
    """Column name of a contract's flag in the ``rows`` table, e.g. '1.2:finite' -> 'ok_finite'."""
    return "ok_" + contract.split(":")[1]


@dataclass
class RowContracts:
    """Per-row contract flags, per-row explanation and the quarantine selection."""

    flags: dict[str, np.ndarray]        # contract -> bool (N,) ; pixel contracts absent without pixels
    details: dict[str, dict[int, str]]  # contract -> {row: message} for the failing rows only
    primary: np.ndarray                 # bool (N,): fails some row contract
    quarantined: np.ndarray             # bool (N,): primary or pair partner of a primary row


def _column(meta: pa.Table, name: str):
    return meta.column(name) if name in meta.column_names else None


def _lazy(column):
    """Zero-argument function returning the column as a list-like of Python values (converted once, on first use)."""
    return functools.cache(lambda: None if column is None else _PyValues(column.to_numpy(zero_copy_only=False)))


class _PyValues:
    """Index a numpy array, returning Python scalars (so messages read 0, not np.int8(0))."""

    def __init__(self, values: np.ndarray):
        self.values = values

    def __getitem__(self, i):
        value = self.values[i]
        return value.item() if hasattr(value, "item") else value


def _eq(column, value, n: int) -> np.ndarray:
    if column is None:
        return np.zeros(n, bool)
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def evaluate_rows(scan: Scan, stamp_size_pix: int, noise_from_psfdepth: bool, max_abs_pixel_nmgy: float = np.inf,
                  quality_ranges: dict | None = None) -> RowContracts:
    """Evaluate every row contract that the manifest's content allows (plausibility bounds in nmgy / column units)."""
    meta, n = scan.meta, scan.meta.num_rows
    flags, details = {}, {}
    bandset = _column(meta, "bandset")
    flags["1.2:bandset"] = _eq(bandset, "grz", n)
    details["1.2:bandset"] = _explain(~flags["1.2:bandset"], lambda i, v=_lazy(bandset): f"bandset = {v()[i]!r}"
                                      if bandset is not None else "bandset column missing")
    size_col = _column(meta, "stamp_size")
    size_ok = _eq(size_col, stamp_size_pix, n)
    px = scan.pixels
    shape_ok = size_ok & (px.shape_ok if px is not None else True)

    sizes = _lazy(size_col)

    def shape_msg(i):
        if not size_ok[i]:
            return (f"stamp_size = {sizes()[i]!r}, declared {stamp_size_pix}" if size_col is not None
                    else "stamp_size column missing")
        if i in px.decode_errors:
            return px.decode_errors[i]
        return f"pixel columns are {scan.pixel_size}x{scan.pixel_size}, declared {stamp_size_pix}"
    flags["1.2:shape"] = shape_ok
    details["1.2:shape"] = _explain(~shape_ok, shape_msg)
    cutout = _column(meta, "cutout_ok")
    flags["contract:cutout_ok"] = _eq(cutout.cast(pa.int64()) if cutout is not None else None, 1, n)
    details["contract:cutout_ok"] = _explain(~flags["contract:cutout_ok"], lambda i, v=_lazy(cutout):
                                             f"cutout_ok = {v()[i]!r}" if cutout is not None else "cutout_ok column missing")
    flags["contract:sky"], details["contract:sky"] = _sky(meta, n)
    flags["contract:quality_range"], details["contract:quality_range"] = _quality_range(scan, n, quality_ranges or {})
    if px is not None:
        decodable = px.shape_ok
        flags["1.2:bands"] = px.present.all(axis=1) | ~decodable
        details["1.2:bands"] = _explain(~flags["1.2:bands"], lambda i: "missing " + ", ".join(
            f"image_{b}" for j, b in enumerate(BANDS) if not px.present[i, j]))
        flags["1.2:finite"] = (px.n_nonfinite == 0).all(axis=1) | ~decodable
        flags["1.2:pixel_range"] = (px.max_abs_nmgy <= max_abs_pixel_nmgy).all(axis=1) | ~decodable
        details["1.2:pixel_range"] = _explain(~flags["1.2:pixel_range"], lambda i: ", ".join(
            f"image_{b}: max |pixel| {float(px.max_abs_nmgy[i, j]):.3g} nmgy > {max_abs_pixel_nmgy:g}"
            for j, b in enumerate(BANDS) if px.max_abs_nmgy[i, j] > max_abs_pixel_nmgy))
        details["1.2:finite"] = _explain(~flags["1.2:finite"], lambda i: ", ".join(
            f"image_{b}/invvar_{b}: {px.n_nonfinite[i, j]} non-finite px" for j, b in enumerate(BANDS)
            if px.n_nonfinite[i, j]))
        depth_ok = np.stack([(np.nan_to_num(_column(meta, f"psfdepth_{b}").to_numpy(zero_copy_only=False).astype(float))
                              > 0) if noise_from_psfdepth and f"psfdepth_{b}" in meta.column_names
                             else np.zeros(n, bool) for b in BANDS], axis=1)
        band_noise_ok = np.where(px.has_invvar, px.n_bad_invvar == 0, depth_ok) | ~px.present
        flags["1.4:noise"] = band_noise_ok.all(axis=1) | ~decodable

        def noise_msg(i):
            parts = []
            for j, b in enumerate(BANDS):
                if band_noise_ok[i, j]:
                    continue
                parts.append(f"invvar_{b}: {px.n_bad_invvar[i, j]} px non-finite/negative/zero on unmasked pixels"
                             if px.has_invvar[i, j] else f"invvar_{b} missing" +
                             (" and psfdepth_" + b + " not > 0" if noise_from_psfdepth else ""))
            return "; ".join(parts)
        details["1.4:noise"] = _explain(~flags["1.4:noise"], noise_msg)
    primary = np.zeros(n, bool)
    for ok in flags.values():
        primary |= ~ok
    quarantined = primary | _pair_partners(meta, primary, scan.pair_key)
    return RowContracts(flags, details, primary, quarantined)


def _sky(meta: pa.Table, n: int) -> tuple[np.ndarray, dict[int, str]]:
    """Contract ``contract:sky``: ra/dec (deg) finite and |dec| <= 90; absent columns are the schema's concern."""
    ok = np.ones(n, bool)
    values = {}
    for name in ("ra", "dec"):
        column = _column(meta, name)
        if column is None:
            continue
        values[name] = pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(values[name]) & ((name == "ra") | (np.abs(values[name]) <= 90.0))

    def message(i):
        return "; ".join(f"column {name} = {float(v[i])!r}" for name, v in values.items()
                         if not np.isfinite(v[i]) or (name == "dec" and abs(v[i]) > 90.0))
    return ok, _explain(~ok, message)


def _quality_range(scan: Scan, n: int, ranges: dict) -> tuple[np.ndarray, dict[int, str]]:
    """Contract ``contract:quality_range``: each present column of ``ranges`` ({name: (low, high)}) within
    [low, high]; null or NaN is "not measured" (gate 1.1 counts it), an infinity fails."""
    ok = np.ones(n, bool)
    values = {}
    for name, (low, high) in ranges.items():
        if name not in scan.schema.names:
            continue
        if kind_of(scan.schema.field(name).type) not in ("int", "float"):
            values[name] = (None, np.ones(n, bool), f"column {name} is {scan.schema.field(name).type}, not a number")
            ok[:] = False
            continue
        v = read_column(scan.uri, name, n, np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(v) & ~((v >= low) & (v <= high))
        if bad.any():
            values[name] = (v, bad, f"outside [{low:g}, {high:g}]")
            ok &= ~bad

    def message(i):
        return "; ".join(text if v is None else f"column {name} = {float(v[i])!r} {text}"
                         for name, (v, bad, text) in values.items() if bad[i])
    return ok, _explain(~ok, message)


def _explain(bad: np.ndarray, message) -> dict[int, str]:
    """{row: message(row)} for the failing rows (messages are only built for failures)."""
    return {int(i): message(int(i)) for i in np.flatnonzero(bad)}


def id_codes(meta: pa.Table, key: str) -> np.ndarray:
    """int64 per row of an id column (pairing key, brickname): its own values when integer, else codes of its
    distinct values; null -> -1."""
    column = meta.column(key)
    if not pa.types.is_integer(column.type):
        column = pc.dictionary_encode(column.combine_chunks()).indices
    return pc.fill_null(column.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)


def _pair_partners(meta: pa.Table, primary: np.ndarray, pair_key: str | None) -> np.ndarray:
    """Rows sharing (pairing key, replicate) with a primary-quarantined row (null ids form their own group)."""
    if not primary.any() or pair_key is None:
        return np.zeros(primary.size, bool)

    def ids(name):
        if name not in meta.column_names:
            return np.zeros(primary.size, np.int64)
        values = id_codes(meta, name)
        return values - values.min()                  # non-negative
    parent, rep = ids(pair_key), ids("replicate")
    width = int(rep.max()) + 1
    if parent.max() < (1 << 62) // width:
        key = parent * width + rep
    else:                                             # ids too large to pack: label the pairs instead
        key = np.unique(np.stack([parent, rep], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    bad_keys = np.unique(key[primary])
    return np.isin(key, bad_keys) & ~primary


def quarantine_table(scan: Scan, rows: RowContracts) -> pa.Table:
    """The quarantine list: one row per quarantined stamp, sorted by task_id.

    Columns: task_id, parent_id, replicate, is_control, reason (contract ids,
    '; '-joined, or 'pair_partner_quarantined'), detail (columns and counts),
    source_file, row_in_file.  Integer ids are int64; string ids keep their type.
    """
    idx = np.flatnonzero(rows.quarantined)
    meta = scan.meta

    def col(name, dtype):
        if name not in meta.column_names:
            return pa.nulls(idx.size, dtype)
        column = meta.column(name).take(pa.array(idx))
        return column.cast(dtype) if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type) else column
    reasons, details = [], []
    for i in idx:
        failed = [c for c in ROW_CONTRACTS if c in rows.flags and not rows.flags[c][i]]
        reasons.append("; ".join(failed) if failed else PARTNER)
        details.append("; ".join(f"{c}: {rows.details[c][i]}" for c in failed) if failed
                       else "its (parent_id, replicate) pair partner failed a row contract")
    table = pa.table({
        "task_id": col("task_id", pa.int64()), "parent_id": col("parent_id", pa.int64()),
        "replicate": col("replicate", pa.int32()), "is_control": col("is_control", pa.int8()),
        "reason": pa.array(reasons, pa.string()), "detail": pa.array(details, pa.string()),
        "source_file": pa.array([scan.files[scan.file_index[i]] for i in idx], pa.string()),
        "row_in_file": pa.array(scan.row_in_file[idx], pa.int64()),
    })
    return table.sort_by([("task_id", "ascending"), ("source_file", "ascending"), ("row_in_file", "ascending")])


def schema_table(scan: Scan, stamp_size_pix: int, need_pixels: bool):
    """One row per expected column: column, present, kind, expected_kind, ok (pandas DataFrame)."""
    import pandas as pd

    schema = scan.schema
    expected = dict(REQUIRED_COLUMNS)
    optional = dict(OPTIONAL_COLUMNS)
    (optional if scan.layout == "legacy" else expected).update(PAIR_COLUMNS)
    if need_pixels:
        if scan.layout == "legacy":
            expected["stamp_npz"] = "binary"
        else:
            expected.update({f"image_{b}": "tensor" for b in BANDS})
    records = []
    for name, want in expected.items():
        present = name in schema.names
        kind = kind_of(schema.field(name).type) if present else "absent"
        ok = present and (kind in want.split("|") or (want == "int" and kind == "bool"))
        note = ""
        if ok and kind == "tensor":
            shape = list(schema.field(name).type.shape)
            ok = shape == [stamp_size_pix, stamp_size_pix]
            note = f"shape {shape}"
        records.append({"column": name, "present": present, "kind": kind, "expected_kind": want,
                        "note": note, "ok": bool(ok)})
    for name, want in optional.items():
        if name in schema.names:
            kind = kind_of(schema.field(name).type)
            records.append({"column": name, "present": True, "kind": kind, "expected_kind": want, "note": "optional",
                            "ok": kind == want})
    return pd.DataFrame.from_records(records)

"""The two generations' benchmark rows, matched: each generation's scores, its exact threshold, the pairing.

Both generations' scores tables (``evaluate@<generation>``) hold the same benchmark rows;
``align`` matches them by (part, task_id) for injections and (part, parent_id) for hard
negatives and anchors, and refuses tables built on different benchmarks (hash) or rows.
``resolve_threshold`` finds the operating threshold (a score) that reproduces evaluate.json's
selected counts; ``bootstrap_groups`` gives the resampling unit of each row (its HEALPix pixel,
else the row itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

PARTS = ("injection", "hard_negative", "anchor")
STATIC_COLUMNS = ("label", "healpix_pixel", "theta_e_arcsec", "arc_snr", "src_mag_r", "group",
                  "arc_snr_core")


class BenchmarkMismatch(ValueError):
    """The two generations were evaluated on different benchmarks (or different rows of it)."""


@dataclass
class Generation:
    """One generation's evaluation: its name, scores table columns and evaluate.json summary."""

    name: str
    columns: dict
    summary: dict
    source: str = ""
    exact_threshold: float | None = None    # set by resolve_threshold

    @property
    def recorded_threshold(self) -> float:
        value = self.summary.get("operating_threshold")
        if value is None:
            raise ValueError(f"{self.source or self.name}: evaluate metrics have no operating_threshold")
        return float(value)

    @property
    def threshold(self) -> float:
        return self.recorded_threshold if self.exact_threshold is None else self.exact_threshold


def _selected_counts(cols: dict, threshold: float) -> tuple[int, int, int]:
    """(positives, controls, hard negatives) with score >= threshold."""
    part, label = cols["part"], np.asarray(cols["label"])
    sel = np.asarray(cols["score"], dtype=np.float64) >= threshold
    inj = part == "injection"
    return (int(np.count_nonzero(sel & inj & (label == 1))), int(np.count_nonzero(sel & inj & (label == 0))),
            int(np.count_nonzero(sel & (part == "hard_negative"))))


def resolve_threshold(gen: Generation) -> float:
    """The operating threshold that reproduces evaluate.json's selected counts.

    evaluate.json stores the threshold to 6 significant digits; a benchmark score inside that
    rounding window would be selected differently by the rounded value. Candidates are the
    recorded value and the scores in the window; the one giving the recorded counts of selected
    positives, controls and hard negatives is used. ValueError when none does (stale scores).
    """
    t = gen.recorded_threshold
    s = np.asarray(gen.columns["score"], dtype=np.float64)
    rec = gen.summary
    want = (rec.get("completeness_at_threshold", {}).get("k"),
            rec.get("gate_1_3_null_injection", {}).get("fraction_above", {}).get("k"),
            (rec.get("hard_negative_fpr") or {}).get("k", 0))
    window = np.unique(s[np.abs(s - t) <= 1e-5 * max(abs(t), 1e-30)])
    candidates = [t] + [float(v) for v in window] + ([float(np.nextafter(window.max(), np.inf))] if window.size else [])
    for c in candidates:
        if all(w is None or w == got for w, got in zip(want, _selected_counts(gen.columns, c))):
            gen.exact_threshold = c
            return c
    raise ValueError(f"{gen.source or gen.name}: no threshold near the recorded operating_threshold {t!r} selects "
                     f"the recorded (positives, controls, hard negatives) = {want}; at {t!r} the scores table selects "
                     f"{_selected_counts(gen.columns, t)}: the scores table and evaluate.json disagree (stale scores?)")


def _columns(table: pa.Table) -> dict:
    cols = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            cols[name] = np.array(column.to_pylist(), dtype=object)
        else:
            cols[name] = column.to_numpy(zero_copy_only=False)
    return cols


def generation(name: str, scores: pa.Table, summary: dict, source: str = "") -> Generation:
    """A Generation from its scores table and evaluate summary (checks the columns it needs)."""
    need = {"part", "label", "score", "task_id", "parent_id"}
    missing = sorted(need - set(scores.column_names))
    if missing:
        raise ValueError(f"{source or name}: scores table lacks column(s) {', '.join(missing)}")
    return Generation(name, _columns(scores), summary, source)


def check_same_benchmark(a: Generation, b: Generation) -> str:
    """The shared benchmark hash; BenchmarkMismatch naming both hashes when they differ."""
    ha, hb = a.summary.get("benchmark_sha256"), b.summary.get("benchmark_sha256")
    if not ha or not hb:
        raise BenchmarkMismatch(f"no benchmark_sha256 in the evaluate metrics of "
                                f"{a.name if not ha else b.name} ({a.source if not ha else b.source})")
    if ha != hb:
        raise BenchmarkMismatch(
            f"refusing to compare {a.name} and {b.name}: they were evaluated on different benchmarks "
            f"({a.name}: benchmark_sha256 {ha}, {a.source}; {b.name}: benchmark_sha256 {hb}, {b.source}). "
            "Re-run evaluate@<generation> for both on the same frozen benchmark.")
    return ha


def _row_keys(cols: dict, who: str) -> np.ndarray:
    """Structured (part code, id) keys: task_id for injections, parent_id for the other parts."""
    part = cols["part"]
    unknown = sorted(set(part.tolist()) - set(PARTS))
    if unknown:
        raise ValueError(f"{who}: unknown part value(s) {unknown}")
    code = np.array([PARTS.index(p) for p in part], dtype=np.int64)
    task = np.asarray(cols["task_id"], dtype=np.float64)
    parent = np.asarray(cols["parent_id"], dtype=np.float64)
    is_inj = code == 0
    if np.isnan(task[is_inj]).any():
        raise ValueError(f"{who}: {int(np.isnan(task[is_inj]).sum())} injection rows without task_id")
    ident = np.where(is_inj, np.nan_to_num(task), parent).astype(np.int64)
    keys = np.empty(part.size, dtype=[("part", np.int64), ("id", np.int64)])
    keys["part"], keys["id"] = code, ident
    if np.unique(keys).size != keys.size:
        raise ValueError(f"{who}: duplicate benchmark rows (part, task_id/parent_id)")
    return keys


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    if x.dtype == object or y.dtype == object:
        return bool(np.all(x.astype(str) == y.astype(str)))
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))


def align(a: Generation, b: Generation) -> tuple[dict, dict, dict]:
    """(shared row columns, baseline columns, candidate columns), both sorted by benchmark row.

    BenchmarkMismatch when the two tables do not hold exactly the same rows with the same
    labels and row descriptors (theta_E, arc S/N, pixel, group, ...).
    """
    ka, kb = _row_keys(a.columns, a.name), _row_keys(b.columns, b.name)
    oa, ob = np.argsort(ka, order=("part", "id")), np.argsort(kb, order=("part", "id"))
    if ka.size != kb.size or not np.array_equal(ka[oa], kb[ob]):
        only_a = np.setdiff1d(ka, kb).size
        only_b = np.setdiff1d(kb, ka).size
        raise BenchmarkMismatch(f"scores tables of {a.name} ({ka.size} rows) and {b.name} ({kb.size} rows) hold "
                                f"different benchmark rows: {only_a} only in {a.name}, {only_b} only in {b.name}")
    ca = {k: v[oa] for k, v in a.columns.items()}
    cb = {k: v[ob] for k, v in b.columns.items()}
    shared = {"part": ca["part"], "key_id": ka[oa]["id"]}
    for name in STATIC_COLUMNS:
        if name in ca and name in cb:
            if not _same(ca[name], cb[name]):
                raise BenchmarkMismatch(f"scores tables of {a.name} and {b.name} disagree on column '{name}' "
                                        "for the same benchmark rows")
            shared[name] = ca[name]
    return shared, ca, cb


def bootstrap_groups(shared: dict) -> np.ndarray:
    """Resampling unit per row: the HEALPix pixel where known, else the row itself (negative ids)."""
    n = shared["part"].size
    pix = np.asarray(shared.get("healpix_pixel", np.full(n, np.nan)), dtype=np.float64)
    own = -(np.arange(n, dtype=np.int64) + 1)
    return np.where(np.isfinite(pix), np.nan_to_num(pix, nan=0.0).astype(np.int64), own)

"""Audit one manifest: scan, row contracts and quarantine, gate tables, GX suites, verdicts.

``run_audit`` is the library entry point shared by the DVC stage
(``data_gates@<generation>``) and the standalone command
(``python -m stages.data_gates --manifest PATH --out DIR``).  Tables validated
by the suites (``meta.table`` of each expectation):

=============  ===========================================================================
schema         one row per expected column (present, kind, tensor shape)
rows           every row: ids, row-contract flags ``ok_*``
quarantine     one row: rows, quarantined rows, quarantined fraction
survivors      rows that survive quarantine: ids, quality columns (1.1), assignment agreement
physics_*      survivors' injection physics columns, positives (value ranges, set) and controls (null)
split_values   one row per distinct region_split value (only train, val, test allowed)
stamps         survivors' per-stamp pixel statistics (1.5, 1.8) and ``pair_key`` (1.8's clusters; NaN unpaired)
core_scores    out-of-fold core-only classifier scores of the sampled survivors (1.6)
core_scores_input  the same on the generation's model input (1.6, what the network sees)
pixels         one row per occupied HEALPix pixel (disjointness, guard band)
parents        one row per parent (one split each)
pairs          one row per (parent_id, replicate) (pairs intact)
fractions      one row per split (declared fractions)
=============  ===========================================================================

Pairing: the pairing key is ``gates.pairing_key`` or, when that is "", ``parent_id`` if the
manifest has it.  Without one (the users' legacy layout: controls are other LRG cutouts)
the gates run unpaired: 1.6 cross-fits with folds grouped by sky region (the HEALPix
pixel of ra/dec, else ``brickname``), 1.8's interval is a bootstrap within each class,
and the split checks that need pairs (parents, pairs, assignment) are not evaluated.

One module because ``run_audit`` and ``build_tables`` fill one set of gate tables from the same
scan, row contracts and pairing (the gates' statistics, contracts and suites have their own modules).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from darkhalo.io.dataset import parquet_bytes, read_table
from darkhalo.physics.normalize import Normalization
from darkhalo.core.outputs import atomic_write_bytes, write_json
from darkhalo.sim.split import SPLITS
from darkhalo.core.units import BANDS
from darkhalo.gates import report
from darkhalo.gates.report import MODEL_INPUT_GATES
from darkhalo.gates.columns import PHYSICS_RANGES, QUALITY_COLUMNS
from darkhalo.gates.config import GATE_FAMILIES, GatesConfig
from darkhalo.gates.contracts import (ROW_CONTRACTS, RowContracts, evaluate_rows, flag_column, id_codes, quarantine_table,
                        schema_table)
from darkhalo.gates.core_baseline import NotEnoughData, out_of_fold_scores
from darkhalo.gates.scan import Scan, read_column, scan_manifest
from darkhalo.gates.splits import assignment_agreement, fraction_table, pair_table, parent_table, pixel_table, recompute_pixels
from darkhalo.core.stats import wilson_interval
from darkhalo.gates.suites import DEFAULT_DIR, NORM_STATS, load_suite_docs
from darkhalo.gates.validate import NOT_EVALUATED_ABSENT, GateResult, TableSpec, run_suites

NO_PAIRING = "not evaluated (no pairing key: no parent_id column and gates.pairing_key unset)"

# Columns shown for an offending row of the tables kept as frames (failure lines, report).
REPORT_COLUMNS = {"schema": ["column", "kind", "expected_kind", "note"],
                  "pixels": ["healpix_pixel", "splits", "n_other_splits_within_guard"],
                  "parents": ["parent_id", "n_splits"], "pairs": ["parent_id", "replicate", "n_positive", "n_control"],
                  "fractions": ["region_split", "fraction", "declared_fraction", "n_rows"],
                  "split_values": ["region_split", "n_rows"],
                  "brightness_support": ["frac_above_positive_quantile", "positive_arc_snr_quantile",
                                         "hard_negative_snr_p95", "n_hard_negatives"]}


@dataclass(frozen=True)
class SplitSpec:
    """What the split gates check against: HEALPix NSIDE (NESTED), guard rings, declared fractions."""

    nside: int
    guard_rings: int
    declared: dict


@dataclass
class Audit:
    """Outcome of auditing one manifest."""

    generation: str
    label: str
    uri: str
    layout: str
    config: GatesConfig
    split: SplitSpec
    blocking: tuple
    results: list[GateResult]
    quarantine: pa.Table
    n_rows: int
    n_positive: int
    n_control: int
    balance: dict
    rows: RowContracts
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if r.verdict == "fail"]

    def stops(self, result: GateResult) -> bool:
        """Whether a failed gate stops the run: its family blocks, and for 1.6 / 1.8 the figure is
        the model input's when that was measured (raw-pixel figures are then reported beside it)."""
        if result.family not in self.blocking:
            return False
        measured_input = self.extra.get("input_spec") is not None
        return not (measured_input and result.gate in MODEL_INPUT_GATES and not result.on_model_input)

    @property
    def stopping(self) -> list[GateResult]:
        return [r for r in self.failed if self.stops(r)]

    @property
    def passed(self) -> bool:
        return not self.failed

    def counts(self) -> dict:
        out = {"pass": 0, "fail": 0, "skipped": 0}
        for r in self.results:
            out[r.verdict] += 1
        return out

    def class_balance(self) -> dict:
        return self.balance

    def quarantine_summary(self) -> dict:
        n_q = int(self.rows.quarantined.sum())
        lo, hi = map(float, wilson_interval(n_q, self.n_rows))
        by_contract = {c: int((~ok).sum()) for c, ok in self.rows.flags.items() if (~ok).any()}
        return {"policy": self.config.row_contract_policy, "n_rows": n_q,
                "fraction": n_q / self.n_rows if self.n_rows else 0.0, "fraction_ci95": [lo, hi],
                "n_primary": int(self.rows.primary.sum()),
                "n_pair_partner": int((self.rows.quarantined & ~self.rows.primary).sum()),
                "by_contract": by_contract}

    def failure_lines(self) -> list[str]:
        return [report.failure_line(r, self.generation) for r in self.failed]

    def findings(self) -> list[str]:
        """One sentence per gate family: what the gates found on this manifest."""
        by_gate: dict[str, list[GateResult]] = {}
        for r in self.results:
            by_gate.setdefault(r.gate, []).append(r)
        out = []
        q = self.quarantine_summary()
        contract_fails = [r.check for r in by_gate.get("contract", []) + by_gate.get("1.2", []) + by_gate.get("1.4", [])
                          if r.verdict == "fail"]
        out.append(f"**Contracts (1.2, 1.4, schema, ranges)**: {q['n_rows']} of {self.n_rows} rows quarantined "
                   f"({q['fraction']:.2%})" + (f", by contract: {q['by_contract']}" if q["by_contract"] else "") + "; "
                   + (f"failed: {', '.join(contract_fails)}." if contract_fails else "all contracts hold."))
        for gate, name in (("1.1", "Quality matched (1.1)"), ("1.5", "Normalisation statistics (1.5)")):
            rs = [r for r in by_gate.get(gate, []) if r.verdict != "skipped" and r.observed]
            if not rs:
                skipped = [r for r in by_gate.get(gate, []) if r.verdict != "pass"]
                out.append(f"**{name}**: not evaluated" + (f" ({skipped[0].reason})" if skipped else "") + ".")
                continue
            worst_d = max(rs, key=lambda r: _num(report.summary(r)["statistic"].get("ks_d")))
            worst_s = max(rs, key=lambda r: abs(_num(report.summary(r)["statistic"].get("smd"))))
            bad = [r.check for r in by_gate[gate] if r.verdict == "fail"]
            absent = [r.check for r in by_gate[gate] if r.reason.startswith(NOT_EVALUATED_ABSENT)]
            out.append(f"**{name}**: largest KS D = {_num(report.summary(worst_d)['statistic']['ks_d']):.3f} "
                       f"({worst_d.check}), largest |SMD| = {abs(_num(report.summary(worst_s)['statistic']['smd'])):.3f} "
                       f"({worst_s.check}); " + (f"outside tolerance: {', '.join(bad)}." if bad else
                                                  "every column within tolerance.")
                       + (f" {NOT_EVALUATED_ABSENT}: {', '.join(absent)}." if absent else ""))
        if self.extra.get("pairing_key") is None and self.layout != "metadata":
            out.append("**Pairing**: no pairing key (no parent_id, gates.pairing_key unset): 1.6 cross-fitted with "
                       "folds grouped by sky region, 1.8's interval a bootstrap within each class; the split checks "
                       "that need pairs are not evaluated.")
        for r in by_gate.get("1.6", []):
            if r.verdict == "pass":
                out.append(f"**Core-only baseline (1.6)**: {report.describe(r)} — no core shortcut detected within "
                           f"r < {self.config.core_radius_pix:g} px.")
            elif r.verdict == "fail" and r.observed:
                out.append(f"**Core-only baseline (1.6)**: {report.describe(r)} — the central r < "
                           f"{self.config.core_radius_pix:g} px alone separates positives from controls: a model can "
                           "learn a core-brightness shortcut instead of arcs.")
            else:
                out.append(f"**Core-only baseline (1.6)**: {r.verdict} — {r.reason}.")
        ratios = [r for r in by_gate.get("1.8", []) if r.observed]
        if ratios:
            text = ", ".join(f"{r.check.rsplit('_', 1)[1]} {report.summary(r)['statistic']['ratio']:.3f}" for r in ratios)
            bad = [r for r in ratios if r.verdict == "fail"]
            out.append(f"**Core brightness (1.8)**: mean core flux positives/controls {text} "
                       f"(tolerance ±{self.config.core_flux_ratio_eps:g})" +
                       (" — positives' cores are brighter: injected light overlaps the lens core." if bad else "."))
        elif by_gate.get("1.8"):
            out.append(f"**Core brightness (1.8)**: not evaluated ({by_gate['1.8'][0].reason}).")
        fr = self.extra.get("fractions")
        split_bad = [r.check for r in by_gate.get("split", []) if r.verdict == "fail"]
        if fr is not None:
            achieved = "/".join(f"{f:.3f}" for f in fr["fraction"])
            declared = "/".join(f"{f:.3f}" for f in fr["declared_fraction"])
            unpaired = [r.check for r in by_gate.get("split", []) if r.reason == NO_PAIRING]
            out.append(f"**Split (region-disjoint)**: train/val/test fractions {achieved} (declared {declared}), "
                       f"{self.extra.get('n_pixels', 0)} occupied NSIDE={self.split.nside} pixels; "
                       + (f"failed: {', '.join(split_bad)}." if split_bad else "every split check holds.")
                       + (f" Not evaluated (no pairing key): {', '.join(unpaired)}." if unpaired else ""))
        else:
            out.append(f"**Split**: not evaluated ({self.extra.get('split_error', 'no split columns')}).")
        return out

    def metrics(self) -> dict:
        """The metrics JSON document: every gate's statistic, tolerance, interval and verdict."""
        return {
            "generation": self.generation, "label": self.label, "manifest": self.uri, "layout": self.layout,
            "blocking_families": list(self.blocking), "verdict": "pass" if self.passed else "fail",
            "stops_pipeline": bool(self.stopping), "n_gates": self.counts(),
            "failed": [r.id for r in self.failed], "blocking_failed": [r.id for r in self.stopping],
            "pairing_key": self.extra.get("pairing_key"),
            "not_evaluated": {r.id: r.reason for r in self.results
                              if r.verdict == "skipped" and r.reason.startswith("not evaluated")},
            "model_input": self.extra.get("input_spec"), "n_rows": self.n_rows, "n_positive": self.n_positive,
            "n_control": self.n_control, "class_balance": self.balance, "quarantine": self.quarantine_summary(),
            "normalization": self.config.normalization.to_dict(), "core_radius_pix": self.config.core_radius_pix,
            "split": {"nside": self.split.nside, "healpix_scheme": "NESTED", "guard_rings": self.split.guard_rings,
                      "declared_fractions": self.split.declared},
            "gates": {r.id: report.gate_entry(r) for r in self.results},
        }

    def write(self, metrics_path: str | Path, report_path: str | Path, quarantine_path: str | Path) -> None:
        """Write the metrics JSON, the markdown report and the quarantine parquet (each atomically)."""
        write_json(metrics_path, self.metrics())
        atomic_write_bytes(report_path, report.markdown(self).encode("utf-8"))
        atomic_write_bytes(quarantine_path, parquet_bytes(self.quarantine, 65536))


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and np.isfinite(x) else float("-inf")


def _np(meta: pa.Table, name: str, dtype=None):
    """Column as numpy (nulls -> NaN for floats); None if absent."""
    if name not in meta.column_names:
        return None
    column = meta.column(name)
    if dtype is not None and pa.types.is_integer(column.type) and column.null_count:
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(dtype) if dtype is not None else values


def _split_names(meta: pa.Table) -> pa.Array | None:
    if "region_split" not in meta.column_names:
        return None
    column = meta.column("region_split")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.combine_chunks().cast(pa.string())


def _codes(names: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.index_in(names, value_set=pa.array(list(SPLITS))), -1).to_numpy(
        zero_copy_only=False).astype(np.int8)


def read_assignment(path: str | Path):
    """The split stage's assignment table as a pandas frame (parent_id, healpix_pixel, nside, region_split)."""
    table = read_table(str(path), columns=["parent_id", "healpix_pixel", "nside", "region_split"])
    return table.to_pandas()


def run_audit(uri: str, config: GatesConfig, split: SplitSpec, *, assignment=None, generation: str = "manifest",
              label: str = "", blocking: tuple = GATE_FAMILIES, metadata_only: bool = False, skip: tuple = (),
              suites_dir: str | Path = DEFAULT_DIR, input_spec: Normalization | None = None,
              hard_negatives: str | None = None) -> Audit:
    """Audit the manifest at ``uri``; see module doc.  ``assignment``: frame from ``read_assignment`` or None.

    ``input_spec``: the generation's model input; gates 1.6 and 1.8 are then also measured on it
    (checks named ``input_*``) and those figures, not the raw-pixel ones, block (1.5's statistics
    are the model input's own normalisation statistics).
    ``hard_negatives``: the hard negatives this generation trains on; the brightness-support gate
    then checks their feature S/N lies inside the positives' arc-S/N support (train split).
    """
    docs = load_suite_docs(suites_dir)
    if assignment is not None:
        nsides = np.unique(assignment["nside"].to_numpy())
        if nsides.size != 1:
            raise ValueError(f"assignment table has several nside values {nsides.tolist()}")
        split = SplitSpec(int(nsides[0]), split.guard_rings, split.declared)
    scan = scan_manifest(uri, config.normalization, stamp_size_pix=config.stamp_size_pix,
                         core_radius_pix=config.core_radius_pix, core_max_stamps=config.core_max_stamps,
                         seed=config.seed, batch_rows=config.batch_rows, read_pixels=not metadata_only,
                         input_spec=input_spec, pairing=config.pairing_key)
    rows = evaluate_rows(scan, config.stamp_size_pix, config.noise_from_psfdepth, config.max_abs_pixel_nmgy,
                         config.quality_ranges)
    unmet = {}
    if metadata_only:
        unmet["pixels"] = ("skipped", "metadata-only audit (--metadata-only)")
    elif scan.pixels is None:
        unmet["pixels"] = ("fail", "no pixel columns (image_g/r/z or stamp_npz) in the manifest; "
                                   "use --metadata-only to audit metadata alone")
    if assignment is None:
        unmet["assignment"] = ("skipped", "no split assignment table given")
    elif "parent_id" not in scan.meta.column_names:
        unmet["assignment"] = ("skipped", "not evaluated (the assignment table is keyed by parent_id, which the "
                                          "manifest lacks)")
    if scan.pair_key is None:
        unmet["pairing"] = ("skipped", NO_PAIRING)
    if input_spec is None:
        unmet["model_input"] = ("skipped", "no model-input preprocessing given (raw-pixel figures only)")
    tables, errors, extra = build_tables(scan, rows, config, split, assignment, need_pixels=not metadata_only)
    if hard_negatives is None:
        unmet["hard_negatives"] = ("skipped", "this generation trains on no hard negatives")
    else:
        frame = brightness_support(scan, rows, hard_negatives, config)
        extra["brightness_support"] = frame
        tables["brightness_support"] = TableSpec.from_frame(frame)
    parameters = config.suite_parameters()
    results = run_suites(docs, tables, parameters, table_errors=errors, unmet=unmet, skip_patterns=list(skip))
    _add_examples(results, scan, rows, extra)
    meta = scan.meta
    is_control = _np(meta, "is_control", np.float64)
    survive = ~rows.quarantined
    n_pos = int(((is_control == 0) & survive).sum()) if is_control is not None else 0
    n_ctrl = int(((is_control == 1) & survive).sum()) if is_control is not None else 0
    balance = {}
    names = _split_names(meta)
    if names is not None and is_control is not None:
        codes = _codes(names)
        for i, name in enumerate(SPLITS):
            sel = (codes == i) & survive
            balance[name] = {"n_positive": int((sel & (is_control == 0)).sum()),
                             "n_control": int((sel & (is_control == 1)).sum())}
    extra["input_spec"] = input_spec.to_dict() if input_spec is not None else None
    extra["pairing_key"] = scan.pair_key
    return Audit(generation, label, uri, scan.layout, config, split, blocking, results, quarantine_table(scan, rows),
                 meta.num_rows, n_pos, n_ctrl, balance, rows, extra)


def build_tables(scan: Scan, rows: RowContracts, config: GatesConfig, split: SplitSpec, assignment, *,
                 need_pixels: bool = True):
    """TableSpecs for every table (columns built lazily), errors for tables that cannot be built, extras."""
    import pandas as pd

    meta = scan.meta
    present = set(meta.column_names)
    survive = ~rows.quarantined
    all_survive = bool(survive.all())
    errors: dict[str, str] = {}
    extra: dict = {}
    tables: dict[str, TableSpec] = {}
    memo: dict = {}

    def col(name, dtype=None):
        """Column as numpy (converted once)."""
        key = (name, dtype)
        if key not in memo:
            memo[key] = _np(meta, name, dtype)
        return memo[key]

    def surv(name, dtype=None, fresh=False):
        """Surviving rows of a column; ``fresh`` converts without keeping it (table builders)."""
        values = _np(meta, name, dtype) if fresh else col(name, dtype)
        return values if all_survive else values[survive]

    schema_frame = schema_table(scan, config.stamp_size_pix, need_pixels=need_pixels)
    extra["schema"] = schema_frame
    tables["schema"] = TableSpec.from_frame(schema_frame)
    ids = [c for c in dict.fromkeys(("task_id", "parent_id", scan.pair_key, "replicate", "is_control"))
           if c in present]
    row_columns = {c: (lambda c=c: _np(meta, c)) for c in ids}
    row_columns.update({flag_column(c): (lambda ok=ok: ok) for c, ok in rows.flags.items()})
    tables["rows"] = TableSpec(row_columns)
    n_quarantined = int(rows.quarantined.sum())
    tables["quarantine"] = TableSpec.from_frame(pd.DataFrame({
        "n_rows": [meta.num_rows], "n_quarantined": [n_quarantined],
        "quarantined_frac": [n_quarantined / meta.num_rows if meta.num_rows else 0.0]}))
    names = _split_names(meta)
    if names is not None:
        counts = pc.value_counts(names).to_pylist()
        values_frame = pd.DataFrame({"region_split": [str(c["values"]) for c in counts],
                                     "n_rows": [int(c["counts"]) for c in counts]})
        extra["split_values"] = values_frame
        tables["split_values"] = TableSpec.from_frame(values_frame)
    else:
        tables["split_values"] = TableSpec({})

    # split tables and agreement flags (on survivors); parents and pairs need the pairing key
    split_needs = [c for c in ("is_control", "ra", "dec") if c not in present]
    if names is None:
        split_needs.append("region_split")
    agree_split = agree_pixel = None
    if split_needs:
        msg = f"needs column(s) {', '.join(split_needs)}"
        extra["split_error"] = msg
        for t in ("pixels", "parents", "pairs", "fractions"):
            errors[t] = msg
    else:
        codes = _codes(names)
        codes = codes if all_survive else codes[survive]
        pix = recompute_pixels(surv("ra", np.float64), surv("dec", np.float64), split.nside)
        frames = {"pixels": pixel_table(pix, codes, split.nside, split.guard_rings),
                  "fractions": fraction_table(codes, split.declared)}
        if scan.pair_key is not None:
            parent = id_codes(meta, scan.pair_key)
            parent = parent if all_survive else parent[survive]
            replicate = (surv("replicate").astype(np.int64) if "replicate" in present
                         else np.zeros(parent.size, np.int64))
            frames["parents"] = parent_table(parent, codes)
            frames["pairs"] = pair_table(parent, replicate, surv("is_control").astype(np.int8))
        extra.update(frames, n_pixels=int(frames["pixels"].shape[0]))
        for name, frame in frames.items():
            tables[name] = TableSpec.from_frame(frame)
        parent_ids = surv("parent_id").astype(np.int64) if "parent_id" in present else np.zeros(pix.size, np.int64)
        agree_split, agree_pix_assign = assignment_agreement(parent_ids, codes, pix, assignment)
        if "parent_id" not in present:
            agree_split = None                         # split:assignment is not evaluated (run_audit: unmet)
        extra["survivor_rows"] = np.flatnonzero(survive)
        stored = col("healpix_pixel")
        if stored is not None or assignment is not None:
            agree_pixel = agree_pix_assign
            if stored is not None:
                agree_pixel = agree_pixel & (np.asarray(stored if all_survive else stored[survive]) == pix)
    surv_columns = {c: (lambda c=c: surv(c, fresh=True)) for c in ids}
    schema_names = set(scan.schema.names)
    n_rows = meta.num_rows

    recent: dict = {}                              # the last column read (physics columns serve two tables)

    def lazy_column(name, mask):
        """Builder reading one column from the manifest when a table needs it (rows in ``mask``)."""
        def build():
            if name not in recent:
                recent.clear()
                recent[name] = read_column(scan.uri, name, n_rows, np.float64)
            values = recent[name]
            return values if mask is survive and all_survive else values[mask]
        return build
    surv_columns.update({c: lazy_column(c, survive) for c in QUALITY_COLUMNS if c in schema_names})
    if agree_split is not None:
        surv_columns["split_agrees_with_assignment"] = lambda: agree_split
        extra["split:assignment"] = agree_split
    if agree_pixel is not None:
        surv_columns["healpix_pixel_agrees"] = lambda: agree_pixel
        extra["split:healpix_pixel"] = agree_pixel
    tables["survivors"] = TableSpec(surv_columns)
    physics = [c for c in PHYSICS_RANGES if c in schema_names]
    is_ctrl = col("is_control", np.float64)
    for name, value in (("physics_positives", 0), ("physics_controls", 1)):
        if is_ctrl is None:
            tables[name] = TableSpec({})
            continue
        mask = survive & (is_ctrl == value)
        columns = {c: (lambda c=c, m=mask: _np(meta, c)[m]) for c in ("task_id",) if c in present}
        columns.update({c: lazy_column(c, mask) for c in physics})
        tables[name] = TableSpec(columns)

    px = scan.pixels
    if px is not None:
        stamp_columns = {c: (lambda c=c: surv(c, fresh=True)) for c in ids}
        stamp_columns["pair_key"] = lambda: _pair_clusters(scan, survive)
        for stat in NORM_STATS + ("core_flux_nmgy",):
            for j, b in enumerate(BANDS):
                stamp_columns[f"{stat}_{b}"] = (lambda stat=stat, j=j: (getattr(px, stat)[:, j] if all_survive
                                                                         else getattr(px, stat)[survive, j]))
        for stat, values in px.model_input.items():
            for j, b in enumerate(BANDS):
                stamp_columns[f"{stat}_{b}"] = (lambda v=values, j=j: v[:, j] if all_survive else v[survive, j])
        tables["stamps"] = TableSpec(stamp_columns)
        for name, sample in (("core_scores", scan.core), ("core_scores_input", scan.input_core)):
            if sample is None:
                tables[name] = TableSpec({})
                continue
            try:
                scores_frame = _core_scores(scan, sample, survive, config, split.nside)
                extra[f"{name}_n"] = int(scores_frame.shape[0])
                tables[name] = TableSpec({c: (lambda c=c, f=scores_frame: f[c].to_numpy())
                                          for c in scores_frame.columns})
            except NotEnoughData as exc:
                errors[name] = f"could not be evaluated: {exc}"
                tables[name] = TableSpec({c: None for c in ids + ["core_only_score"]})
    memo.clear()
    return tables, errors, extra


def brightness_support(scan: Scan, rows: RowContracts, hard_negatives: str, config: GatesConfig):
    """One-row table: the hard negatives' feature S/N (``hn_annulus_snr``) against the positives' arc S/N.

    Both on the train split.  ``frac_above_positive_quantile`` is the fraction of hard negatives
    brighter than the positives' ``brightness_quantile`` (default 95th percentile): a model shown
    negatives brighter than every positive learns "bright arc-like structure = not a lens".
    """
    import pandas as pd

    survive = ~rows.quarantined
    names = _split_names(scan.meta)
    positive = survive & (_np(scan.meta, "is_control", np.float64) == 0)
    if names is not None:
        positive &= _codes(names) == SPLITS.index("train")
    snr = read_column(scan.uri, "arc_snr", scan.meta.num_rows, np.float64)[positive]
    snr = snr[np.isfinite(snr)]
    hn = read_table(hard_negatives, columns=["hn_annulus_snr", "region_split"])
    hn_split = hn.column("region_split").to_numpy(zero_copy_only=False).astype(str)
    hn_snr = hn.column("hn_annulus_snr").to_numpy(zero_copy_only=False).astype(np.float64)[hn_split == "train"]
    hn_snr = hn_snr[np.isfinite(hn_snr)]
    if not snr.size or not hn_snr.size:
        raise ValueError(f"brightness support: {snr.size} positives with arc_snr and {hn_snr.size} train hard "
                         f"negatives with hn_annulus_snr; both are needed ({scan.uri}, {hard_negatives})")
    edge = float(np.quantile(snr, config.brightness_quantile))
    above = int((hn_snr > edge).sum())
    lo, hi = map(float, wilson_interval(above, hn_snr.size))
    return pd.DataFrame({"positive_arc_snr_quantile": [edge], "quantile": [config.brightness_quantile],
                         "n_hard_negatives": [hn_snr.size], "n_above": [above],
                         "frac_above_positive_quantile": [above / hn_snr.size], "frac_lo": [lo], "frac_hi": [hi],
                         "hard_negative_snr_p95": [float(np.quantile(hn_snr, 0.95))],
                         "positive_arc_snr_p50": [float(np.median(snr))]})


def _pair_clusters(scan: Scan, survive: np.ndarray) -> np.ndarray:
    """Gate 1.8's clusters per surviving row: the pairing key's ids, or NaN (no pairing key: bootstrap interval)."""
    if scan.pair_key is None:
        return np.full(int(survive.sum()), np.nan)
    return id_codes(scan.meta, scan.pair_key)[survive]


def fold_groups(scan: Scan, rows_idx: np.ndarray, nside: int) -> tuple[str, np.ndarray]:
    """(name, int64 group per row) keeping related stamps in one fold of gate 1.6: the pairing key; unpaired,
    the sky region -- the NESTED HEALPix pixel (``nside``) of ra/dec (deg), else ``brickname``."""
    meta = scan.meta
    if scan.pair_key is not None:
        return scan.pair_key, id_codes(meta, scan.pair_key)[rows_idx]
    if {"ra", "dec"} <= set(meta.column_names):
        return "healpix_pixel", recompute_pixels(_np(meta, "ra", np.float64)[rows_idx],
                                                 _np(meta, "dec", np.float64)[rows_idx], nside)
    if "brickname" in meta.column_names:
        return "brickname", id_codes(meta, "brickname")[rows_idx]
    raise NotEnoughData("needs a pairing key (parent_id or gates.pairing_key) or a sky position "
                        "(ra/dec or brickname)")


def _core_scores(scan: Scan, sample, survive: np.ndarray, config: GatesConfig, nside: int):
    """Out-of-fold core-only scores of the sampled surviving stamps (gate 1.6) from ``sample`` (a CoreSample);
    folds grouped by ``fold_groups``."""
    import pandas as pd

    meta = scan.meta
    if "is_control" not in meta.column_names:
        raise NotEnoughData("needs column is_control")
    keep = survive[sample.rows]
    rows_idx = sample.rows[keep]
    features = sample.features[keep]
    group_name, groups = fold_groups(scan, rows_idx, nside)
    is_control = _np(meta, "is_control").astype(np.int8)[rows_idx]
    scores = out_of_fold_scores(features, is_control == 0, groups, n_folds=config.core_folds,
                                l2_c=config.core_l2_c, seed=config.seed)
    frame = pd.DataFrame({group_name: groups, "is_control": is_control, "core_only_score": scores})
    if "task_id" in meta.column_names:
        frame.insert(0, "task_id", _np(meta, "task_id")[rows_idx])
    if "replicate" in meta.column_names:
        frame["replicate"] = _np(meta, "replicate")[rows_idx]
    return frame


def _add_examples(results: list[GateResult], scan: Scan, rows: RowContracts, extra: dict) -> None:
    """Name offending rows / pixels / columns of failed map expectations (first few)."""
    for r in results:
        if r.verdict != "fail" or r.reason:
            continue
        if r.id in ROW_CONTRACTS:
            for i in np.flatnonzero(~rows.flags[r.id])[:5]:
                r.examples.append(f"{scan.row_label(i)}: {rows.details[r.id][i]}")
            continue
        if r.table == "rows" and r.kwargs.get("column") in scan.meta.column_names:
            column = scan.meta.column(r.kwargs["column"])
            values = column.to_pandas()
            unique = r.kind == "expect_column_values_to_be_unique"
            bad = values.duplicated(keep=False) if unique else values.notna() & ~values.isin(r.kwargs["value_set"])
            for i in np.flatnonzero(bad.to_numpy())[:5]:
                r.examples.append(f"{scan.row_label(i)}: column {r.kwargs['column']} = {column[int(i)].as_py()!r}"
                                  + (" (duplicate)" if unique else ""))
            continue
        if r.id in ("split:assignment", "split:healpix_pixel") and r.id in extra:
            rows_idx = extra["survivor_rows"][np.flatnonzero(~extra[r.id])[:3]]
            for i in rows_idx:
                fields = [f"{c}={_np(scan.meta, c)[i]}" for c in ("task_id", "parent_id", "healpix_pixel")
                          if c in scan.meta.column_names]
                fields.append(f"region_split={_split_names(scan.meta)[int(i)].as_py()}")
                r.examples.append(" ".join(fields) + f" ({scan.files[scan.file_index[i]]} row {scan.row_in_file[i]})")
            continue
        table = extra.get(r.table) if r.table in REPORT_COLUMNS else None
        if table is not None:
            bad = _violations(table, r.kind, r.kwargs)
            for _, row in table[bad].head(3).iterrows():
                r.examples.append(" ".join(f"{k}={_short(row[k])}" for k in REPORT_COLUMNS[r.table]
                                           if str(row[k]) != ""))
        if not r.examples and r.observed.get("partial_unexpected_list"):
            r.examples.extend(f"{r.kwargs.get('column')}={_short(v)}" for v in r.observed["partial_unexpected_list"][:3])


def _violations(frame, kind: str, kwargs: dict):
    """Bool mask of the rows of a (small) frame that a map expectation flags."""
    values = frame[kwargs["column"]]
    if kind == "expect_column_values_to_be_in_set":
        return ~values.isin(kwargs["value_set"])
    if kind == "expect_column_values_to_be_between":
        bad = np.zeros(len(frame), bool)
        if kwargs.get("min_value") is not None:
            bad |= (values < kwargs["min_value"]).to_numpy()
        if kwargs.get("max_value") is not None:
            bad |= (values > kwargs["max_value"]).to_numpy()
        return bad
    return np.zeros(len(frame), bool)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)



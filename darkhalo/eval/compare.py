"""Gen5' vs Gen5 on the frozen benchmark: paired differences of every headline metric.

Both generations' scores tables (``evaluate@<generation>``) hold the same benchmark rows;
``align`` matches them by (part, task_id) for injections and (part, parent_id) for hard
negatives and anchors, and refuses tables built on different benchmarks (hash) or rows.

Every metric is a statistic of per-row *values* of one generation (the score, or whether
the row is selected at that generation's own operating threshold, or a gate-1.7 outcome
code), so one call of ``metrics.paired_bootstrap`` gives candidate − baseline with a
percentile interval over the same resampled rows. Rows are resampled in groups: the
HEALPix pixel for benchmark injections (a positive and its control share it; nearby stamps
share seeing and depth), the row itself for hard negatives and anchors (the scores table
carries no position for them). ``metrics.verdict`` turns each interval into better / worse
/ not distinguishable; a metric that cannot be computed on the full benchmark (e.g. TPR at
FPR 1e-3 with fewer than 1000 negatives) is "not resolvable", with the reason.

The intervals cover benchmark sampling only: training-seed variance is not in them.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from darkhalo.core import metrics as M
from darkhalo.core.params import FRACTION, NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.eval.judgement import VERDICTS
from darkhalo.core.stats import rate_with_interval
from darkhalo.core.units import PIXEL_SCALE_ARCSEC

PARTS = ("injection", "hard_negative", "anchor")
STATIC_COLUMNS = ("label", "healpix_pixel", "theta_e_arcsec", "arc_snr", "src_mag_r", "group",
                  "arc_flux_frac_outside_core")
BIN_FAMILIES = (("theta_e", "completeness_vs_theta_e", "theta_e_arcsec", "theta_E (arcsec)"),
                ("arc_snr", "completeness_vs_arc_snr", "arc_snr", "arc S/N"),
                ("src_mag_r", "completeness_vs_src_mag_r", "src_mag_r", "source r mag"))


class BenchmarkMismatch(ValueError):
    """The two generations were evaluated on different benchmarks (or different rows of it)."""


@dataclass(frozen=True)
class CompareConfig:
    """``compare:`` params; the seed is the global one."""

    seed: int
    baseline: str = "gen5"
    candidate: str = "gen5p"
    n_bootstrap: int = 1000
    confidence: float = 0.95
    tolerance: float = 0.0          # verdict margin: the whole interval must clear +-tolerance
    min_units: int = 10             # fewer resampling units than this: no verdict (the interval means nothing)
    # judgement rules (darkhalo/eval/judgement.py); they never change a number
    anchor_max_interval_width: float = 0.2   # a recall whose 95% interval is wider than this is not a measurement
    core_separation_min: float = 0.8         # centre-masked: separation kept at 0.5 theta_E below this = core reliance
    weak_auc_max: float = 0.7                # below this AUC the centre-masked ratios are called noise-dominated
    claimed_n_grid_configs: dict | None = None   # the users' hand-written numbers, checked against inject metrics


COMPARE_RULES = {"n_bootstrap": POSITIVE, "confidence": FRACTION, "tolerance": NON_NEGATIVE, "min_units": POSITIVE,
                 "anchor_max_interval_width": FRACTION, "core_separation_min": FRACTION, "weak_auc_max": FRACTION}


def compare_config(params: dict, path: str) -> CompareConfig:
    """CompareConfig from ``seed`` and ``compare``; both generations must exist in ``generations``."""
    seed = params.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamError(f"{path}: seed = {seed!r}: must be a non-negative integer")
    config = build(CompareConfig, section(params, "compare", path), "compare", path, COMPARE_RULES, seed=seed)
    known = sorted(section(params, "generations", path))
    for key in ("baseline", "candidate"):
        if getattr(config, key) not in known:
            raise ParamError(f"{path}: compare.{key} = {getattr(config, key)!r}: not a generation "
                             f"(known: {', '.join(known)})")
    if config.baseline == config.candidate:
        raise ParamError(f"{path}: compare.baseline and compare.candidate are both {config.baseline!r}")
    if not 0 < config.confidence < 1:
        raise ParamError(f"{path}: compare.confidence = {config.confidence}: must be in (0, 1)")
    return config


# --------------------------------------------------------------------------- inputs

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


# --------------------------------------------------------------------------- statistics of per-row values

def _mean(labels, values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _retained(labels, codes) -> float:
    """Gate 1.7: of detected rows (code >= 1), the fraction still detected with the arc removed (code 2)."""
    detected = np.count_nonzero(codes >= 1)
    return float(np.count_nonzero(codes == 2) / detected) if detected else float("nan")


def _tpr_metric(fn: Callable, *args) -> Callable:
    def metric(labels, scores) -> float:
        if np.count_nonzero(labels) == 0 or np.count_nonzero(labels == 0) == 0:
            return float("nan")
        return float(fn(labels, scores, *args)["tpr"])
    return metric


def _ece_metric(n_bins: int) -> Callable:
    def metric(labels, probs) -> float:
        return M.expected_calibration_error(labels, np.clip(probs, 0.0, 1.0), n_bins)
    return metric


@dataclass
class MetricSpec:
    """One compared metric: rows, per-row values of a generation, statistic, direction."""

    name: str
    family: str
    title: str
    rows: np.ndarray                       # bool mask over the aligned rows
    values: Callable[[dict, float], np.ndarray]   # (generation columns, its threshold) -> per-row values
    statistic: Callable
    higher_is_better: bool
    evaluate_key: str = ""                 # where evaluate.json holds the same number (consistency check)
    extra: dict | None = None              # written with the result (e.g. the bin's edges)


def _selected(cols: dict, threshold: float) -> np.ndarray:
    return (np.asarray(cols["score"], dtype=np.float64) >= threshold).astype(np.float64)


def _score(cols: dict, threshold: float) -> np.ndarray:
    return np.asarray(cols["score"], dtype=np.float64)


def _gate17_codes(cols: dict, threshold: float) -> np.ndarray:
    detected = np.asarray(cols["score"], dtype=np.float64) >= threshold
    kept = np.asarray(cols["score_arc_suppressed"], dtype=np.float64) >= threshold
    return np.where(detected, np.where(kept, 2.0, 1.0), 0.0)


def _bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def _bin_index(values: np.ndarray, edges: list) -> np.ndarray:
    """Bin of each value under metrics.binned_completeness' rule ([e_i, e_i+1), last closed); -1 outside."""
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    inside = np.isfinite(v) & (v >= e[0]) & (v <= e[-1])
    idx = np.clip(np.searchsorted(e, np.nan_to_num(v), side="right") - 1, 0, e.size - 2)
    return np.where(inside, idx, -1)


def metric_specs(shared: dict, summary_a: dict, summary_b: dict, calibration_bins: int) -> list[MetricSpec]:
    """Every compared metric, in report order."""
    part, label = shared["part"], np.asarray(shared["label"]).astype(np.int64)
    inj = part == "injection"
    pos = inj & (label == 1)
    ctrl = inj & (label == 0)
    hard = part == "hard_negative"
    anchor = part == "anchor"
    roc_rows = pos | ctrl | hard
    specs = [
        MetricSpec("auc", "roc", "ROC AUC (injections vs controls + hard negatives)", roc_rows, _score, M.roc_auc, True,
                   "roc/auc"),
        MetricSpec("auc_vs_controls", "roc", "ROC AUC (injections vs their controls)", inj, _score, M.roc_auc, True,
                   "roc/auc_vs_controls"),
        MetricSpec("tpr_at_fpr_1e-2", "roc", "TPR at FPR 1e-2", roc_rows, _score, _tpr_metric(M.tpr_at_fpr, 1e-2),
                   True, "roc/tpr_at_fpr_1e-2/tpr"),
        MetricSpec("tpr_at_fpr_1e-3", "roc", "TPR at FPR 1e-3", roc_rows, _score, _tpr_metric(M.tpr_at_fpr, 1e-3),
                   True, "roc/tpr_at_fpr_1e-3/tpr"),
        MetricSpec("tpr0", "roc", "TPR0 (before the first false positive)", roc_rows, _score, _tpr_metric(M.tpr0),
                   True, "roc/tpr0/tpr"),
        MetricSpec("tpr10", "roc", "TPR10 (fewer than ten false positives)", roc_rows, _score,
                   _tpr_metric(M.tpr10), True, "roc/tpr10/tpr"),
        MetricSpec("completeness", "completeness", "completeness at the operating threshold (all positives)", pos,
                   _selected, _mean, True, "completeness_at_threshold/rate"),
    ]
    for short, key, column, title in BIN_FAMILIES:
        edges_a = (summary_a.get(key) or {}).get("edges")
        edges_b = (summary_b.get(key) or {}).get("edges")
        if edges_a is None or column not in shared:
            continue
        if edges_a != edges_b:
            raise ValueError(f"{key}: the generations used different bin edges ({edges_a} vs {edges_b}); "
                             "evaluate both with the same evaluate.*_edges")
        idx = _bin_index(shared[column], edges_a)
        for i, (lo, hi) in enumerate(zip(edges_a[:-1], edges_a[1:])):
            specs.append(MetricSpec(f"completeness_{short}_{_bin_label(lo, hi)}", f"completeness_{short}",
                                    f"completeness, {title} in [{lo:g}, {hi:g}{']' if i == len(edges_a) - 2 else ')'}",
                                    pos & (idx == i), _selected, _mean, True, f"{key}/bins/{i}/rate",
                                    {"bin_lo": float(lo), "bin_hi": float(hi)}))
    if anchor.any():
        specs.append(MetricSpec("anchor_recall_all", "anchor_recall", "anchor recall, all anchors", anchor,
                                _selected, _mean, True))
        tier_a = anchor & np.char.endswith(shared["group"].astype(str), ":tierA")
        if tier_a.any():
            specs.append(MetricSpec("anchor_recall_tierA", "anchor_recall", "anchor recall, Tier A (visible), all sets",
                                    tier_a, _selected, _mean, True))
        for group in sorted(set(shared["group"][anchor].tolist())):
            specs.append(MetricSpec(f"anchor_recall_{group}", "anchor_recall", f"anchor recall, {group}",
                                    anchor & (shared["group"] == group), _selected, _mean, True,
                                    f"anchor_recall_by_group/{group}/rate"))
    if hard.any():
        specs.append(MetricSpec("hard_negative_fpr_all", "hard_negative_fpr", "hard-negative FPR, all classes", hard,
                                _selected, _mean, False, "hard_negative_fpr/rate"))
        for group in sorted(set(shared["group"][hard].tolist())):
            specs.append(MetricSpec(f"hard_negative_fpr_{group}", "hard_negative_fpr", f"hard-negative FPR, {group}",
                                    hard & (shared["group"] == group), _selected, _mean, False,
                                    f"hard_negative_fpr_by_class/{group}/rate"))
    specs += [
        MetricSpec("ece", "calibration", "expected calibration error (injections + controls)", inj, _score,
                   _ece_metric(calibration_bins), False, "calibration/ece"),
        MetricSpec("gate_1_3_fraction_above", "model_gates", "gate 1.3: test controls above the operating threshold",
                   ctrl, _selected, _mean, False, "gate_1_3_null_injection/fraction_above/rate"),
    ]
    if "arc_flux_frac_outside_core" in shared:
        resolved = pos & (np.nan_to_num(np.asarray(shared["arc_flux_frac_outside_core"], dtype=np.float64)) >= 0.5)
        specs.append(MetricSpec("gate_1_7_retained_fraction", "model_gates",
                                "gate 1.7: detected positives still detected with the arc removed", resolved,
                                _gate17_codes, _retained, False, "gate_1_7_arc_suppressed/retained_fraction/rate"))
    return specs


# --------------------------------------------------------------------------- the comparison

def _lookup(doc: dict, pointer: str):
    node = doc
    for part in pointer.split("/"):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _check_consistent(spec: MetricSpec, value: float, summary: dict, who: str) -> None:
    """The full-benchmark value must equal evaluate.json's (6 significant digits, as written)."""
    if not spec.evaluate_key:
        return
    recorded = _lookup(summary, spec.evaluate_key)
    if recorded is None and not np.isfinite(value):
        return
    if recorded is None or not np.isfinite(value) or not np.isclose(value, float(recorded), rtol=2e-5, atol=1e-6):
        raise ValueError(f"{who}: recomputed {spec.name} = {value!r} but its evaluate metrics say "
                         f"{spec.evaluate_key} = {recorded!r}; the scores table and evaluate.json disagree "
                         "(stale scores?)")


def compare_metric(spec: MetricSpec, shared: dict, ca: dict, cb: dict, a: Generation, b: Generation,
                   groups: np.ndarray, config: CompareConfig) -> dict:
    """One metric's paired comparison: values, difference, interval, verdict."""
    rows = spec.rows
    n = int(rows.sum())
    base = {"family": spec.family, "title": spec.title, "higher_is_better": spec.higher_is_better, "n_rows": n,
            **(spec.extra or {})}
    if n == 0:
        return {**base, "baseline": None, "candidate": None, "diff": None, "lo": None, "hi": None,
                "verdict": "not resolvable", "reason": "no benchmark rows"}
    labels = np.asarray(shared["label"])[rows].astype(np.int64)
    if spec.family == "roc" and (labels.min() == labels.max()):
        return {**base, "baseline": None, "candidate": None, "diff": None, "lo": None, "hi": None,
                "verdict": "not resolvable", "reason": "needs positives and negatives; the rows hold one class"}
    va = spec.values({k: v[rows] for k, v in ca.items()}, a.threshold)
    vb = spec.values({k: v[rows] for k, v in cb.items()}, b.threshold)
    boot = M.paired_bootstrap(spec.statistic, labels, va, vb, n_boot=config.n_bootstrap, seed=config.seed,
                              groups=groups[rows], confidence=config.confidence)
    _check_consistent(spec, boot["a"], a.summary, a.source or a.name)
    _check_consistent(spec, boot["b"], b.summary, b.source or b.name)
    out = {**base, "baseline": boot["a"], "candidate": boot["b"], "diff": boot["diff"], "lo": boot["lo"],
           "hi": boot["hi"], "se": boot["se"], "baseline_lo": boot["a_lo"], "baseline_hi": boot["a_hi"],
           "candidate_lo": boot["b_lo"], "candidate_hi": boot["b_hi"], "n_units": boot["n_units"],
           "resampled": "HEALPix pixels (injections), rows (hard negatives, anchors)",
           "n_invalid_replicates": boot["n_invalid"]}
    if not (np.isfinite(boot["a"]) and np.isfinite(boot["b"])):
        out.update(verdict="not resolvable", reason="undefined on the full benchmark for "
                   + " and ".join(g.name for g, v in ((a, boot["a"]), (b, boot["b"])) if not np.isfinite(v)))
    elif not (np.isfinite(boot["lo"]) and np.isfinite(boot["hi"])):
        out.update(verdict="not resolvable", reason="no valid bootstrap replicate")
    elif boot["n_units"] < config.min_units:
        out.update(verdict="not resolvable", reason=f"only {boot['n_units']} resampling units "
                   f"(compare.min_units = {config.min_units})")
    else:
        out["verdict"] = M.verdict((boot["lo"], boot["hi"]), config.tolerance, spec.higher_is_better)
        if boot["n_invalid"] > config.n_bootstrap // 2:
            out.update(verdict="not resolvable",
                       reason=f"{boot['n_invalid']} of {config.n_bootstrap} replicates undefined")
    return out


def mask_coverage(shared: dict, summary: dict) -> dict:
    """Benchmark positives whose Einstein radius lies inside each fixed centre-mask radius (Wilson)."""
    pos = (shared["part"] == "injection") & (np.asarray(shared["label"]) == 1)
    theta_pix = np.asarray(shared.get("theta_e_arcsec", np.full(pos.size, np.nan)), dtype=np.float64)[pos] \
        / PIXEL_SCALE_ARCSEC
    out = {}
    for name in (summary.get("centre_masked") or {}):
        if name.endswith("pix"):
            radius = float(name.removesuffix("pix"))
            out[name] = {"radius_pix": radius, "radius_arcsec": radius * PIXEL_SCALE_ARCSEC,
                         "positives_theta_e_inside": rate_with_interval(int(np.count_nonzero(theta_pix < radius)),
                                                                        int(pos.sum()))}
    return out


def compare(a: Generation, b: Generation, config: CompareConfig, calibration_bins: int) -> dict:
    """The compare.json document for baseline ``a`` and candidate ``b``."""
    sha = check_same_benchmark(a, b)
    shared, ca, cb = align(a, b)
    resolve_threshold(a)
    resolve_threshold(b)
    groups = bootstrap_groups(shared)
    specs = metric_specs(shared, a.summary, b.summary, calibration_bins)
    results = {s.name: compare_metric(s, shared, ca, cb, a, b, groups, config) for s in specs}
    part = shared["part"]
    return {
        "baseline": a.name, "candidate": b.name, "benchmark_sha256": sha,
        "difference": f"{b.name} minus {a.name}",
        "bootstrap": {"n_bootstrap": config.n_bootstrap, "confidence": config.confidence, "seed": config.seed,
                      "tolerance": config.tolerance, "min_units": config.min_units,
                      "n_units": int(np.unique(groups).size),
                      "resampled": "HEALPix pixels (injections), rows (hard negatives, anchors)",
                      "note": "intervals cover benchmark sampling, not training-seed variance; "
                              "each interval is per metric (no multiplicity correction)"},
        "rows": {p: int(np.count_nonzero(part == p)) for p in PARTS},
        "operating_threshold": {a.name: a.threshold, b.name: b.threshold},
        "n_metrics": len(results),
        **tally(results),
        "order": list(results),
        "metrics": results,
        "benchmark": {"fixed_mask_coverage": mask_coverage(shared, a.summary)},
    }


def tally(results: dict) -> dict:
    """Verdict counts, the metric names per verdict and the counts per metric family."""
    counts = {v: [k for k, r in results.items() if r["verdict"] == v] for v in VERDICTS}
    families = {}
    for r in results.values():
        families.setdefault(r["family"], {v: 0 for v in VERDICTS})[r["verdict"]] += 1
    return {"verdict_counts": {v: len(names) for v, names in counts.items()}, "verdicts": counts,
            "family_verdict_counts": families}


def combine_seeds(per_seed: list[dict], config: CompareConfig) -> dict:
    """compare.json over training seeds: ``per_seed[k]`` compares seed k of both generations.

    Per metric the difference is the mean over seeds of the seed differences, and its interval
    combines the benchmark bootstrap (seed 0's half-width) with the seed spread in quadrature:
    half-width = sqrt(h_boot^2 + (t * sd / sqrt(n))^2), t the Student quantile at
    ``confidence`` with n - 1 degrees of freedom; the verdict is decided again on that interval.
    Baseline and candidate values are seed means too.
    """
    from scipy import stats

    n = len(per_seed)
    if n < 2:
        return per_seed[0]
    result = copy.deepcopy(per_seed[0])
    t = float(stats.t.ppf(0.5 + config.confidence / 2, n - 1))
    for name, metric in result["metrics"].items():
        runs = [doc["metrics"][name] for doc in per_seed]
        if metric["verdict"] == "not resolvable" or any(r.get("diff") is None or not np.isfinite(r["diff"])
                                                         for r in runs):
            continue
        diffs = np.array([r["diff"] for r in runs], dtype=np.float64)
        half = math.sqrt((0.5 * (metric["hi"] - metric["lo"])) ** 2 + (t * diffs.std(ddof=1) / math.sqrt(n)) ** 2)
        centre = float(diffs.mean())
        metric.update(baseline=float(np.mean([r["baseline"] for r in runs])),
                      candidate=float(np.mean([r["candidate"] for r in runs])), diff=centre,
                      lo=centre - half, hi=centre + half, bootstrap_lo=metric["lo"], bootstrap_hi=metric["hi"],
                      seed_diffs=diffs.tolist(), seed_sd=float(diffs.std(ddof=1)), n_seeds=n,
                      verdict=M.verdict((centre - half, centre + half), config.tolerance, metric["higher_is_better"]))
    result.update(tally(result["metrics"]))
    result["bootstrap"]["note"] = (f"intervals combine benchmark sampling (paired bootstrap of seed 0) with the "
                                   f"spread of {n} training seeds per generation (paired by seed index); "
                                   "each interval is per metric (no multiplicity correction)")
    result["operating_threshold"] = {g: [doc["operating_threshold"][g] for doc in per_seed]
                                     for g in result["operating_threshold"]}
    result["n_seeds"] = n
    return result


def plot_tables(result: dict) -> dict[str, pa.Table]:
    """DVC plot data: candidate − baseline per completeness bin, and every metric's difference."""
    out = {}
    for short, _, _, _ in BIN_FAMILIES:
        rows = [(name, r) for name, r in result["metrics"].items() if r["family"] == f"completeness_{short}"]
        if not rows:
            continue
        lows = [r["bin_lo"] for _, r in rows]
        highs = [r["bin_hi"] for _, r in rows]
        centres = [0.5 * (lo + hi) for lo, hi in zip(lows, highs)]
        out[f"completeness_{short}_diff.csv"] = pa.table({
            short: centres, "bin_lo": lows, "bin_hi": highs,
            "diff": [r["diff"] for _, r in rows], "lo": [r["lo"] for _, r in rows], "hi": [r["hi"] for _, r in rows],
            "baseline": [r["baseline"] for _, r in rows], "candidate": [r["candidate"] for _, r in rows],
            "n": [r["n_rows"] for _, r in rows]})
    names = list(result["metrics"])
    out["metric_diffs.csv"] = pa.table({
        "metric": names, "diff": [result["metrics"][n]["diff"] for n in names],
        "lo": [result["metrics"][n]["lo"] for n in names], "hi": [result["metrics"][n]["hi"] for n in names],
        "verdict": [result["metrics"][n]["verdict"] for n in names]})
    return out


HEADLINE_METRICS = ("auc", "tpr_at_fpr_1e-3", "completeness", "anchor_recall_tierA", "anchor_recall_all",
                    "hard_negative_fpr_all", "ece", "gate_1_3_fraction_above", "gate_1_7_retained_fraction")
HEADLINE_GATES = {"core_only_auc_raw": ("1.6:core_only_auc", "auc"),
                  "core_only_auc_model_input": ("1.6:input_core_only_auc", "auc"),
                  "core_flux_ratio_r_raw": ("1.8:core_flux_ratio_r", "ratio"),
                  "core_rms_ratio_r_model_input": ("1.8:input_core_rms_ratio_r", "ratio"),
                  "brightness_support_frac_above": ("brightness:support", "value")}


def _round(value, digits: int = 4):
    return float(f"{value:.{digits}g}") if isinstance(value, (int, float)) and np.isfinite(value) else None


def headline_summary(result: dict, gates: dict[str, dict], train: dict[str, dict],
                     model_gates: dict[str, dict] | None = None, evaluate: dict | None = None) -> dict:
    """The review's headline (``metrics/summary.json``): ~20 numbers per generation and the deltas.

    ``result``: compare's output; ``gates`` / ``train`` / ``model_gates``: each generation's
    data_gates.json, train.json and model_gates.json; ``evaluate``: one evaluate.json (the benchmark's
    hash and scored rows).  Values are rounded to 4 significant digits; every delta carries its paired
    bootstrap interval and verdict.
    """
    metrics = result["metrics"]
    out: dict = {}
    if evaluate:
        out["benchmark"] = {"sha256": str(evaluate.get("benchmark_sha256", ""))[:12], **evaluate.get("rows", {})}
    for role in ("baseline", "candidate"):
        name = result[role]
        entry = {key: _round(metrics[key][role]) for key in HEADLINE_METRICS if key in metrics}
        gate_doc = gates[name].get("gates", {})
        for key, (gate_id, stat) in HEADLINE_GATES.items():
            value = (gate_doc.get(gate_id) or {}).get("statistic", {}).get(stat)
            if value is not None:
                entry[key] = _round(value)
        entry["data_gates_failed"] = len(gates[name].get("failed", []))
        entry["data_gates_blocking_failed"] = len(gates[name].get("blocking_failed", []))
        if (model_gates or {}).get(name):
            entry["model_gates_failed"] = [g["gate"] for g in model_gates[name].get("gates", []) if not g["passed"]]
        if "best_val_auc" in train[name] or "final" in train[name]:
            entry["val_auc"] = _round(train[name].get("best_val_auc", train[name].get("final", {}).get("val_auc")))
            entry["epochs_run"] = train[name].get("epochs_run", train[name].get("epochs"))
        out[name] = entry
    out["difference"] = {key: {"value": _round(metrics[key]["diff"]), "lo": _round(metrics[key]["lo"]),
                               "hi": _round(metrics[key]["hi"]), "verdict": metrics[key]["verdict"]}
                         for key in HEADLINE_METRICS if key in metrics}
    out["verdict_counts"] = result["verdict_counts"]
    return out

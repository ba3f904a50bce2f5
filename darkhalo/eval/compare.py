"""Gen5' vs Gen5 on the frozen benchmark: paired differences of every headline metric.

Both generations' scores tables (``evaluate@<generation>``) hold the same benchmark rows,
matched by ``compare_rows.align`` (refusing different benchmarks or rows); the plot tables and
the headline ``metrics/summary.json`` are compare_summary.py's.

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

from darkhalo.core import metrics as M
from darkhalo.core.params import FRACTION, NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.eval.judgement import VERDICTS, gate17_resolved
from darkhalo.core.stats import rate_with_interval
from darkhalo.core.units import PIXEL_SCALE_ARCSEC
from darkhalo.eval.compare_rows import (PARTS, Generation, align, bootstrap_groups, check_same_benchmark,
                                        resolve_threshold)

BIN_FAMILIES = (("theta_e", "completeness_vs_theta_e", "theta_e_arcsec", "theta_E (arcsec)"),
                ("arc_snr", "completeness_vs_arc_snr", "arc_snr", "arc S/N"),
                ("src_mag_r", "completeness_vs_src_mag_r", "src_mag_r", "source r mag"))


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
    rule = (summary_a.get("gate_1_7_arc_suppressed") or {}).get("max_core_arc_snr")
    if "arc_snr_core" in shared and rule is not None:
        if (summary_b.get("gate_1_7_arc_suppressed") or {}).get("max_core_arc_snr") != rule:
            raise ValueError("gate 1.7: the generations' evaluate metrics were made with different max_core_arc_snr")
        resolved = pos & gate17_resolved(shared["arc_snr_core"], rule)
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

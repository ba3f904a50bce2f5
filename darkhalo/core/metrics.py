"""Classifier evaluation statistics: scores -> numbers, with intervals.

Pure numpy functions over one row per example: ``labels`` (0/1 or bool, 1 = lens),
``scores`` (probabilities or logits; ranking metrics only use their order) and optional
per-row bin or group columns. No torch, no I/O.

Conventions (docs/domain.md, "Evaluation conventions"):

* A row is *selected* at threshold ``t`` when ``score >= t``. ROC thresholds are the
  distinct score values, highest first, preceded by ``+inf`` (nothing selected); rows with
  equal scores enter together, so a positive tied with a negative is selected only together
  with that negative (the tie counts as a false positive at that threshold).
* ``TPR at <= k false positives`` is the highest TPR over thresholds whose FP count is at
  most ``k``; the threshold reported is the highest one reaching that TPR (fewest FPs), i.e.
  the score of the lowest-scoring selected positive (``+inf`` when the TPR is 0).
  TPR0 = k of 0 (strictly above the top negative), TPR10 = k of 9 (fewer than ten FPs),
  TPR at FPR f uses k = floor(f·n_neg).
* AUC is the Mann-Whitney probability P(s_pos > s_neg) + ½·P(s_pos = s_neg) (mid-ranks).
* Rates carry Wilson intervals (``darkhalo.core.stats.wilson_interval``); TPR intervals are
  conditional on the threshold.
* Bad input raises ValueError naming the argument: mismatched lengths, labels not 0/1,
  NaN scores, a class missing where both are needed.

One module because every statistic here shares the input checks and the threshold / tie
conventions above; split apart, each part would restate them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score

from darkhalo.core.rng import keyed_rng
from darkhalo.core.stats import mean_with_interval, rate_with_interval, wilson_interval

__all__ = [
    "RocCurve", "roc_curve", "roc_auc", "tpr_at_fp_count", "tpr0", "tpr10", "tpr_at_fpr",
    "operating_threshold_for_fpr", "binned_completeness", "rate_by_group", "reliability_curve",
    "expected_calibration_error", "implied_purity", "purity_with_interval", "null_injection",
    "paired_bootstrap", "verdict", "BATCHED_METRICS",
]

# Bonferroni: each of the two rates gets 1 - (1 - c)/2 so the joint box covers >= c.
_PURITY_METHOD = ("Bonferroni box: Wilson intervals for TPR and FPR, each at confidence 1-(1-c)/2; "
                  "purity rises with TPR and falls with FPR, so lo = P(TPR_lo, FPR_hi), hi = P(TPR_hi, FPR_lo); "
                  "coverage >= c")


# --------------------------------------------------------------------------- input checks

def _as_labels(labels, name: str = "labels") -> np.ndarray:
    """1-D bool array from 0/1 or bool input; ValueError naming ``name`` otherwise."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must be 0/1 numbers or bools, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        examples = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"{name}: {int(bad.sum())} of {y.size} values are not 0/1 (e.g. {examples})")
    return y == 1


def _as_scores(scores, n: int, name: str = "scores", labels_name: str = "labels") -> np.ndarray:
    """1-D float64 array of length ``n`` without NaN (±inf allowed: only order matters)."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from err
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.size != n:
        raise ValueError(f"{name} has {s.size} rows but {labels_name} has {n}")
    n_nan = int(np.count_nonzero(np.isnan(s)))
    if n_nan:
        raise ValueError(f"{name}: {n_nan} of {s.size} values are NaN")
    return s


def _as_probs(probs, n: int, name: str = "probs") -> np.ndarray:
    """Scores that must be probabilities in [0, 1]."""
    p = _as_scores(probs, n, name)
    outside = (p < 0) | (p > 1)
    if outside.any():
        raise ValueError(f"{name}: {int(outside.sum())} of {p.size} values are outside [0, 1] "
                         "(pass probabilities, e.g. scipy.special.expit(logits))")
    return p


def _need_both_classes(y: np.ndarray, what: str) -> tuple[int, int]:
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{what} needs at least one positive and one negative label; "
                         f"got n_pos={n_pos}, n_neg={n_neg}")
    return n_pos, n_neg


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# --------------------------------------------------------------------------- ROC

class RocCurve(NamedTuple):
    """One point per threshold: ``fpr[i] = fp[i]/n_neg``, ``tpr[i] = tp[i]/n_pos`` for ``score >= thresholds[i]``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int


def roc_curve(labels, scores) -> RocCurve:
    """ROC curve at every distinct score (descending), starting at threshold +inf (0, 0).

    Tied scores form one point (no intermediate points are dropped or invented); this equals
    sklearn's ``roc_curve(..., drop_intermediate=False)``.
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    n_pos, n_neg = _need_both_classes(y, "roc_curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]     # (not np.diff: inf - inf is NaN)
    tp_all = np.cumsum(y_sorted, dtype=np.int64)
    fp_all = np.arange(1, s.size + 1, dtype=np.int64) - tp_all
    tp = np.r_[0, tp_all[last_of_tie]]
    fp = np.r_[0, fp_all[last_of_tie]]
    thresholds = np.r_[np.inf, s_sorted[last_of_tie]]
    return RocCurve(fp / n_neg, tp / n_pos, thresholds, tp, fp, n_pos, n_neg)


def roc_auc(labels, scores) -> float:
    """ROC AUC (sklearn's ``roc_auc_score``): the Mann-Whitney P(s+ > s-) + ½ P(s+ = s-).

    The AUC depends on the scores' order only, so sklearn gets their dense ranks: ±inf logits
    (which sklearn refuses) are ordinary tied values, and finite scores give sklearn's number.
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    _need_both_classes(y, "roc_auc")
    return float(roc_auc_score(y, np.unique(s, return_inverse=True)[1]))


def _roc_auc_batched(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``roc_auc`` for each row of ``weights`` (replicates x rows, integer multiplicities), vectorised
    for the bootstrap (tests/test_metrics.py checks it against ``roc_auc`` on the resampled rows).

    Scores are grouped into distinct levels once; per replicate the weighted counts of
    positives and negatives per level give AUC = Σ_l P_l (N_<l + ½ N_l) / (P N).
    NaN for a replicate without positives or without negatives.
    """
    _, level = np.unique(s, return_inverse=True)
    n_levels = int(level.max()) + 1
    n_rep = weights.shape[0]
    keys = (np.arange(n_rep, dtype=np.int64)[:, None] * n_levels + level[None, :]).ravel()
    w = weights.astype(np.float64)
    pos = np.bincount(keys, weights=(w * y[None, :]).ravel(), minlength=n_rep * n_levels).reshape(n_rep, n_levels)
    neg = np.bincount(keys, weights=(w * ~y[None, :]).ravel(), minlength=n_rep * n_levels).reshape(n_rep, n_levels)
    neg_below = np.cumsum(neg, axis=1) - neg
    u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


# Metrics with a vectorised weighted form, used by paired_bootstrap when passed as metric_fn.
BATCHED_METRICS: dict[Callable, Callable] = {roc_auc: _roc_auc_batched}


# --------------------------------------------------------------------------- TPR at a false-positive budget

def tpr_at_fp_count(labels, scores, max_fp: int, confidence: float = 0.95) -> dict:
    """Highest TPR over thresholds (score values) with at most ``max_fp`` false positives.

    Returns {'tpr', 'tpr_lo', 'tpr_hi' (Wilson, conditional on the threshold), 'threshold'
    (select score >= threshold; the highest threshold reaching that TPR, +inf when TPR = 0),
    'n_tp', 'n_pos', 'n_fp' (FPs at that threshold, <= max_fp), 'n_neg', 'fpr' (n_fp/n_neg),
    'max_fp', 'resolvable'}. A positive tied with a negative is only selected together with
    it. Not resolvable when n_neg <= max_fp (the budget never binds): then 'tpr',
    'threshold' are NaN and 'n_tp', 'n_fp' None, with a 'reason'.
    """
    max_fp = int(max_fp)
    if max_fp < 0:
        raise ValueError(f"max_fp must be >= 0, got {max_fp}")
    _check_confidence(confidence)
    curve = roc_curve(labels, scores)
    out = {"max_fp": max_fp, "n_pos": curve.n_pos, "n_neg": curve.n_neg}
    if curve.n_neg <= max_fp:
        return {**out, "tpr": float("nan"), "tpr_lo": float("nan"), "tpr_hi": float("nan"),
                "threshold": float("nan"), "n_tp": None, "n_fp": None, "fpr": float("nan"),
                "resolvable": False,
                "reason": f"only {curve.n_neg} negatives: a budget of {max_fp} false positives never binds"}
    last_ok = int(np.searchsorted(curve.fp, max_fp, side="right")) - 1     # fp is non-decreasing
    best_tp = curve.tp[last_ok]
    i = int(np.searchsorted(curve.tp, best_tp, side="left"))                # first point reaching it
    lo, hi = wilson_interval(int(best_tp), curve.n_pos, confidence)
    return {**out, "tpr": float(curve.tpr[i]), "tpr_lo": float(lo), "tpr_hi": float(hi),
            "threshold": float(curve.thresholds[i]), "n_tp": int(curve.tp[i]), "n_fp": int(curve.fp[i]),
            "fpr": float(curve.fpr[i]), "resolvable": True}


def tpr0(labels, scores, confidence: float = 0.95) -> dict:
    """TPR0 (Metcalf et al. 2019): fraction of positives scoring strictly above every negative.

    Same fields as ``tpr_at_fp_count`` with max_fp = 0.
    """
    return tpr_at_fp_count(labels, scores, 0, confidence)


def tpr10(labels, scores, confidence: float = 0.95) -> dict:
    """TPR10 (Metcalf et al. 2019): highest TPR with fewer than ten false positives (<= 9).

    Equals the fraction of positives scoring strictly above the 10th-highest negative
    (negatives counted with multiplicity). Not resolvable with fewer than ten negatives.
    """
    return tpr_at_fp_count(labels, scores, 9, confidence)


def _max_fp_for_fpr(fpr: float, n_neg: int) -> int:
    """floor(fpr·n_neg), robust to the float product landing just below an integer."""
    return int(np.floor(fpr * n_neg * (1.0 + 1e-12)))


def tpr_at_fpr(labels, scores, fpr: float, confidence: float = 0.95) -> dict:
    """Highest TPR over thresholds (score values) with FPR = n_fp/n_neg <= ``fpr``.

    The false-positive budget is k = floor(fpr·n_neg); the result is ``tpr_at_fp_count``
    with that k, plus 'fpr_target'. 'n_fp' and 'n_neg' say how many negatives the achieved
    FPR rests on. When n_neg·fpr < 1 the target cannot be told apart from FPR = 0: then
    'resolvable' is False and 'tpr'/'threshold' are NaN (use ``tpr0`` for the zero-FP value),
    with 'min_resolvable_fpr' = 1/n_neg.
    """
    fpr = float(fpr)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    y = _as_labels(labels)
    _, n_neg = _need_both_classes(y, "tpr_at_fpr")
    max_fp = _max_fp_for_fpr(fpr, n_neg)
    if max_fp < 1:
        n_pos = int(np.count_nonzero(y))
        _as_scores(scores, y.size)
        return {"fpr_target": fpr, "max_fp": 0, "n_pos": n_pos, "n_neg": n_neg,
                "tpr": float("nan"), "tpr_lo": float("nan"), "tpr_hi": float("nan"),
                "threshold": float("nan"), "n_tp": None, "n_fp": None, "fpr": float("nan"),
                "resolvable": False, "min_resolvable_fpr": 1.0 / n_neg,
                "reason": f"n_neg * fpr = {n_neg} * {fpr:g} < 1: FPR {fpr:g} is not resolvable with {n_neg} negatives"}
    result = tpr_at_fp_count(y, scores, max_fp, confidence)
    return {"fpr_target": fpr, **result, "min_resolvable_fpr": 1.0 / n_neg}


def operating_threshold_for_fpr(labels, scores, fpr: float) -> float:
    """The threshold of ``tpr_at_fpr`` (select score >= it): highest TPR with FPR <= ``fpr``.

    Raises ValueError when the FPR is not resolvable (n_neg·fpr < 1).
    """
    result = tpr_at_fpr(labels, scores, fpr)
    if not result["resolvable"]:
        raise ValueError(f"no operating threshold: {result['reason']}")
    return result["threshold"]


# --------------------------------------------------------------------------- rates per bin / group

def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"edges must be 1-D with at least 2 values, got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"edges: {int(np.count_nonzero(~np.isfinite(e)))} values are not finite")
    if not np.all(np.diff(e) > 0):
        raise ValueError(f"edges must be strictly increasing, got {e.tolist()}")
    return e


def binned_completeness(selected, values, edges, confidence: float = 0.95) -> dict:
    """Selected fraction per bin of ``values`` (e.g. positives above threshold vs theta_E).

    Pass only the population being measured (e.g. the injected positives) as rows.

    Bins are [e_i, e_i+1) with the last one closed [e_n-1, e_n] (numpy.histogram's rule).
    Returns {'bins': [{'bin_lo', 'bin_hi', 'centre' (midpoint), 'mean_value', 'n', 'k',
    'rate' = k/n, 'lo', 'hi' (Wilson)}...], 'edges', 'n_rows', 'n_nan', 'n_below', 'n_above'};
    rows with NaN values or outside the edges are counted, not binned. Empty bins have
    NaN rate and interval.
    """
    sel = _as_labels(selected, "selected")
    try:                                   # NaN values are allowed here: counted, not binned
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"values must be numeric: {err}") from err
    if v.ndim != 1 or v.size != sel.size:
        raise ValueError(f"values has shape {v.shape} but selected has {sel.size} rows")
    _check_confidence(confidence)
    e = _check_edges(edges)
    nan = np.isnan(v)
    below = ~nan & (v < e[0])
    above = ~nan & (v > e[-1])
    inside = ~(nan | below | above)
    idx = np.clip(np.searchsorted(e, v[inside], side="right") - 1, 0, e.size - 2)
    n_bins = e.size - 1
    n = np.bincount(idx, minlength=n_bins)
    k = np.bincount(idx, weights=sel[inside].astype(np.float64), minlength=n_bins).astype(np.int64)
    sums = np.bincount(idx, weights=v[inside], minlength=n_bins)
    lo, hi = wilson_interval(k, n, confidence)
    bins = []
    for b in range(n_bins):
        nb = int(n[b])
        bins.append({"bin_lo": float(e[b]), "bin_hi": float(e[b + 1]), "centre": float(0.5 * (e[b] + e[b + 1])),
                     "mean_value": float(sums[b] / nb) if nb else float("nan"), "n": nb, "k": int(k[b]),
                     "rate": float(k[b] / nb) if nb else float("nan"), "lo": float(lo[b]), "hi": float(hi[b])})
    return {"bins": bins, "edges": e.tolist(), "n_rows": int(sel.size), "n_nan": int(nan.sum()),
            "n_below": int(below.sum()), "n_above": int(above.sum()), "confidence": confidence}


def rate_by_group(selected, groups, confidence: float = 0.95) -> dict:
    """{group: {'rate', 'lo', 'hi', 'k', 'n'}} — selected fraction per group, Wilson interval.

    E.g. anchor recall per tier (selected = score >= threshold on anchors) or hard-negative
    FPR per morphology class. Groups are sorted; keys are plain Python values. NaN or None
    group labels raise ValueError.
    """
    sel = _as_labels(selected, "selected")
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != sel.size:
        raise ValueError(f"groups has shape {g.shape} but selected has {sel.size} rows")
    _check_confidence(confidence)
    if g.dtype == object:
        n_none = sum(1 for x in g if x is None or (isinstance(x, float) and np.isnan(x)))
        if n_none:
            raise ValueError(f"groups: {n_none} of {g.size} values are None/NaN")
    elif np.issubdtype(g.dtype, np.floating) and np.isnan(g).any():
        raise ValueError(f"groups: {int(np.isnan(g).sum())} of {g.size} values are NaN")
    keys, inverse = np.unique(g, return_inverse=True)
    n = np.bincount(inverse, minlength=keys.size)
    k = np.bincount(inverse, weights=sel.astype(np.float64), minlength=keys.size).astype(np.int64)
    return {(key.item() if hasattr(key, "item") else key): rate_with_interval(int(kk), int(nn), confidence)
            for key, kk, nn in zip(keys, k, n)}


# --------------------------------------------------------------------------- calibration

def reliability_curve(labels, probs, n_bins: int = 10, confidence: float = 0.95) -> dict:
    """Reliability diagram on ``n_bins`` equal-width bins of [0, 1] (last bin closed).

    Per bin: 'n', 'k' (positives), 'mean_prob' (confidence), 'rate' = k/n (observed
    accuracy of the positive class) with a Wilson interval 'lo'/'hi', 'bin_lo'/'bin_hi'.
    Also 'ece' = Σ_b (n_b/N)|rate_b - mean_prob_b| over non-empty bins, and 'n'.
    """
    y = _as_labels(labels)
    p = _as_probs(probs, y.size)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if y.size == 0:
        raise ValueError("reliability_curve needs at least one row; labels is empty")
    _check_confidence(confidence)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    k = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins).astype(np.int64)
    psum = np.bincount(idx, weights=p, minlength=n_bins)
    lo, hi = wilson_interval(k, n, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, k / n, np.nan)
        conf = np.where(n > 0, psum / n, np.nan)
    filled = n > 0
    ece = float(np.sum(n[filled] / y.size * np.abs(rate[filled] - conf[filled])))
    bins = [{"bin_lo": float(edges[b]), "bin_hi": float(edges[b + 1]), "n": int(n[b]), "k": int(k[b]),
             "mean_prob": float(conf[b]), "rate": float(rate[b]), "lo": float(lo[b]), "hi": float(hi[b])}
            for b in range(n_bins)]
    return {"bins": bins, "ece": ece, "n": int(y.size), "n_bins": n_bins, "confidence": confidence}


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b/N)|acc_b - conf_b| on equal-width bins (see ``reliability_curve``)."""
    return reliability_curve(labels, probs, n_bins)["ece"]


# --------------------------------------------------------------------------- purity and gate 1.3

def implied_purity(tpr, fpr, prevalence):
    """Purity (precision) at lens prevalence π: tpr·π / (tpr·π + fpr·(1−π)); NaN when both are 0."""
    tpr, fpr, pi = (np.asarray(x, dtype=np.float64) for x in (tpr, fpr, prevalence))
    if np.any((pi <= 0) | (pi >= 1)):
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    if np.any((tpr < 0) | (tpr > 1)) or np.any((fpr < 0) | (fpr > 1)):
        raise ValueError(f"tpr and fpr must be in [0, 1], got tpr={tpr}, fpr={fpr}")
    num = tpr * pi
    den = num + fpr * (1.0 - pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / den, np.nan)
    return float(out) if out.ndim == 0 else out


def purity_with_interval(n_tp: int, n_pos: int, n_fp: int, n_neg: int, prevalence: float,
                         confidence: float = 0.95) -> dict:
    """Implied purity from counts (TPR = n_tp/n_pos, FPR = n_fp/n_neg) with an interval.

    Interval: Bonferroni box — Wilson intervals for TPR and FPR each at 1−(1−c)/2, combined
    at their conservative corners (lo = P(TPR_lo, FPR_hi), hi = P(TPR_hi, FPR_lo)); since
    purity is monotone in both, coverage is at least ``confidence``.
    """
    _check_confidence(confidence)
    for name, k, n in (("n_tp", n_tp, n_pos), ("n_fp", n_fp, n_neg)):
        if not (0 <= int(k) <= int(n)) or int(n) <= 0:
            raise ValueError(f"{name}={k} must satisfy 0 <= {name} <= n with n > 0 (n={n})")
    each = 1.0 - (1.0 - confidence) / 2.0
    tpr = rate_with_interval(int(n_tp), int(n_pos), each)
    fpr = rate_with_interval(int(n_fp), int(n_neg), each)
    return {"purity": implied_purity(tpr["rate"], fpr["rate"], prevalence),
            "lo": implied_purity(tpr["lo"], fpr["hi"], prevalence),
            "hi": implied_purity(tpr["hi"], fpr["lo"], prevalence),
            "prevalence": float(prevalence), "confidence": confidence,
            "tpr": tpr, "fpr": fpr, "method": _PURITY_METHOD}


def null_injection(control_scores, threshold: float, n_tp: int, n_pos: int, prevalence: float,
                   confidence: float = 0.95) -> dict:
    """Model gate 1.3 numbers on test controls (no injection).

    'mean_score' (Student-t interval), 'fraction_above' (controls with score >= threshold,
    Wilson interval), and 'purity' implied at ``prevalence`` by that control FPR together
    with the positives' TPR n_tp/n_pos at the same threshold (``purity_with_interval``).
    """
    raw = np.asarray(control_scores)
    if raw.ndim != 1:
        raise ValueError(f"control_scores must be 1-D, got shape {raw.shape}")
    s = _as_scores(raw, raw.size, "control_scores")
    if s.size == 0:
        raise ValueError("control_scores is empty")
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    n_above = int(np.count_nonzero(s >= threshold))
    return {"threshold": threshold,
            "mean_score": mean_with_interval(s, confidence),
            "fraction_above": rate_with_interval(n_above, int(s.size), confidence),
            "purity": purity_with_interval(n_tp, n_pos, n_above, int(s.size), prevalence, confidence)}


# --------------------------------------------------------------------------- paired bootstrap

def _replicate_weights(n_rows: int, group_index: np.ndarray | None, n_groups: int, seed: int,
                       start: int, stop: int) -> np.ndarray:
    """Row multiplicities (replicates start..stop-1 x rows); replicate b uses keyed_rng(seed, 'paired_bootstrap', b)."""
    out = np.empty((stop - start, n_rows), dtype=np.int32)
    for r, b in enumerate(range(start, stop)):
        rng = keyed_rng(seed, "paired_bootstrap", b)
        if group_index is None:
            out[r] = np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows)
        else:
            out[r] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group_index]
    return out


def paired_bootstrap(metric_fn: Callable, labels, scores_a, scores_b, n_boot: int = 1000, seed: int = 0,
                     groups=None, confidence: float = 0.95,
                     columns: Mapping[str, Sequence] | None = None) -> dict:
    """Paired bootstrap of metric(b) − metric(a) over the same rows.

    Each replicate draws rows (or, with ``groups``, whole groups such as HEALPix pixels or
    parents) with replacement, and evaluates ``metric_fn(labels, scores, **columns)`` for both
    generations on that same draw. ``metric_fn`` returns a float (NaN for a degenerate
    replicate is counted in 'n_invalid' and left out). Extra per-row arrays in ``columns``
    are resampled with the rows. Replicate b is drawn from keyed_rng(seed,
    'paired_bootstrap', b), so results are deterministic and independent of batching.
    Metrics in ``BATCHED_METRICS`` (``roc_auc``) are evaluated vectorised.

    Returns {'a', 'b', 'diff' (b − a on all rows), 'lo', 'hi' (percentile interval of the
    replicate differences), 'se' (their standard deviation), 'a_lo', 'a_hi', 'b_lo', 'b_hi'
    (percentile intervals of each metric), 'n_boot', 'n_invalid', 'confidence', 'seed',
    'resampled' ('rows' or 'groups'), 'n_units'}.
    """
    y = _as_labels(labels)
    sa = _as_scores(scores_a, y.size, "scores_a")
    sb = _as_scores(scores_b, y.size, "scores_b")
    n_boot, seed = int(n_boot), int(seed)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if y.size == 0:
        raise ValueError("paired_bootstrap needs at least one row; labels is empty")
    _check_confidence(confidence)
    cols = {}
    for name, col in (columns or {}).items():
        c = np.asarray(col)
        if c.shape[:1] != (y.size,):
            raise ValueError(f"columns[{name!r}] has {c.shape[:1]} rows but labels has {y.size}")
        cols[name] = c
    if groups is None:
        group_index, n_units = None, y.size
    else:
        g = np.asarray(groups)
        if g.ndim != 1 or g.size != y.size:
            raise ValueError(f"groups has shape {g.shape} but labels has {y.size} rows")
        _, group_index = np.unique(g, return_inverse=True)
        n_units = int(group_index.max()) + 1

    a_full = float(metric_fn(y, sa, **cols))
    b_full = float(metric_fn(y, sb, **cols))
    batched = None if cols else next((f for fn, f in BATCHED_METRICS.items() if fn is metric_fn), None)

    a_rep = np.empty(n_boot)
    b_rep = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(y.size, 1)))
    rows = np.arange(y.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        w = _replicate_weights(y.size, group_index, n_units, seed, start, stop)
        if batched is not None:
            a_rep[start:stop] = batched(y, sa, w)
            b_rep[start:stop] = batched(y, sb, w)
            continue
        for r in range(stop - start):
            idx = np.repeat(rows, w[r])
            sub = {name: c[idx] for name, c in cols.items()}
            a_rep[start + r] = float(metric_fn(y[idx], sa[idx], **sub))
            b_rep[start + r] = float(metric_fn(y[idx], sb[idx], **sub))

    diff = b_rep - a_rep
    valid = np.isfinite(diff)
    q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    nan2 = [float("nan"), float("nan")]
    d_lo, d_hi = np.percentile(diff[valid], q) if valid.any() else nan2
    a_lo, a_hi = np.percentile(a_rep[valid], q) if valid.any() else nan2
    b_lo, b_hi = np.percentile(b_rep[valid], q) if valid.any() else nan2
    return {"a": a_full, "b": b_full, "diff": b_full - a_full, "lo": float(d_lo), "hi": float(d_hi),
            "se": float(diff[valid].std(ddof=1)) if valid.sum() > 1 else float("nan"),
            "a_lo": float(a_lo), "a_hi": float(a_hi), "b_lo": float(b_lo), "b_hi": float(b_hi),
            "n_boot": n_boot, "n_invalid": int((~valid).sum()), "confidence": confidence, "seed": seed,
            "resampled": "rows" if group_index is None else "groups", "n_units": int(n_units)}


def verdict(interval, tolerance: float = 0.0, higher_is_better: bool = True) -> str:
    """'better' if the difference interval (b − a) lies entirely above +tolerance, 'worse' if
    entirely below −tolerance, else 'not distinguishable' (flipped when lower is better).

    ``interval`` is (lo, hi) or a ``paired_bootstrap`` result. A NaN bound raises ValueError.
    """
    if isinstance(interval, Mapping):
        lo, hi = interval["lo"], interval["hi"]
    else:
        lo, hi = interval
    lo, hi, tolerance = float(lo), float(hi), float(tolerance)
    if np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"interval has a NaN bound ({lo}, {hi}): no verdict")
    if lo > hi:
        raise ValueError(f"interval lo {lo} > hi {hi}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if lo > tolerance:
        return "better" if higher_is_better else "worse"
    if hi < -tolerance:
        return "worse" if higher_is_better else "better"
    return "not distinguishable"

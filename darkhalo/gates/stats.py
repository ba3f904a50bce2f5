"""Effect sizes with intervals for the gates (never bare p-values; docs/domain.md).

Two groups are compared with the two-sample KS distance D and the
standardised mean difference (SMD, pooled SD); classifier separability with
the ROC AUC and its DeLong interval; core brightness with a ratio of means and
a cluster-robust (delta-method) interval -- or, with no pairing key, a bootstrap
interval (rows resampled within each class); rates with Wilson intervals (``darkhalo.core.stats``,
the one definition: NaN when n = 0).

``*_null95`` give each statistic's noise level: the value that two samples of
the given sizes drawn from one distribution exceed 5% of the time.  A gate
fails only when its statistic exceeds both the tolerance and this noise level,
so a small sample cannot fail on noise; at the pipeline's sizes the noise
level is below the tolerance and the tolerance alone decides (no p-values).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import ks_2samp, norm, rankdata

from darkhalo.core.metrics import roc_auc

Z95 = float(norm.ppf(0.975))
KS_C95 = 1.3581  # c(alpha = 0.05) of the two-sample KS test


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance D = sup |F_a - F_b| (scipy's ``ks_2samp`` statistic, ties
    handled); NaN when a sample is empty.  Only D is used: the p-value is the cheap asymptotic one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(ks_2samp(a, b, method="asymp").statistic)


def ks_null95(n_a: int, n_b: int) -> float:
    """D that two samples of these sizes from one distribution exceed 5% of the time (asymptotic)."""
    if n_a == 0 or n_b == 0:
        return float("nan")
    return KS_C95 * math.sqrt((n_a + n_b) / (n_a * n_b))


def smd_null95(n_a: int, n_b: int) -> float:
    """|SMD| that two samples of these sizes from one distribution exceed 5% of the time."""
    if n_a == 0 or n_b == 0:
        return float("nan")
    return Z95 * math.sqrt((n_a + n_b) / (n_a * n_b))


def auc_null95(n_pos: int, n_neg: int) -> float:
    """|AUC - 0.5| that a score unrelated to the label exceeds 5% of the time (Mann-Whitney null)."""
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return Z95 * math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


def standardized_mean_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[float, float]]:
    """SMD = (mean_a - mean_b) / pooled SD, with its 95% interval (Hedges-Olkin SE).

    Two constant samples give 0 when the means agree and +/-inf otherwise.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n_a, n_b = a.size, b.size
    if n_a < 2 or n_b < 2:
        return float("nan"), (float("nan"), float("nan"))
    scale = max(np.abs(a).max(), np.abs(b).max())   # SMD is scale-free: dividing keeps sums finite up to 1.8e308
    if not math.isfinite(scale):
        raise ValueError(f"standardized_mean_difference: non-finite value (max |x| = {scale}): drop NaN/inf first")
    if scale > 0:
        a, b = a / scale, b / scale
    diff = a.mean() - b.mean()
    pooled = math.sqrt(0.5 * (a.var(ddof=1) + b.var(ddof=1)))
    if pooled == 0:
        d = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        d = diff / pooled
    se = math.sqrt((n_a + n_b) / (n_a * n_b) + (d * d if math.isfinite(d) else 0.0) / (2 * (n_a + n_b)))
    return float(d), (float(d - Z95 * se), float(d + Z95 * se))


def roc_auc_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float, tuple[float, float]]:
    """ROC AUC of ``scores`` for ``labels`` (1 = positive) with the DeLong 95% interval.

    AUC = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney; ``darkhalo.core.metrics.roc_auc``).  The
    interval treats stamps as independent.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        return float("nan"), (float("nan"), float("nan"))
    auc = roc_auc(labels, scores)
    ranks_all = rankdata(np.concatenate([pos, neg]))
    ranks_pos, ranks_neg = rankdata(pos), rankdata(neg)
    v10 = (ranks_all[:m] - ranks_pos) / n           # structural components (DeLong 1988)
    v01 = 1.0 - (ranks_all[m:] - ranks_neg) / m
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = Z95 * math.sqrt(max(var, 0.0))
    return float(auc), (float(max(0.0, auc - half)), float(min(1.0, auc + half)))


BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 20240518      # fixed: the interval of a given sample is reproducible


def bootstrap_ratio_interval(x_pos: np.ndarray, x_ctrl: np.ndarray, n_boot: int = BOOTSTRAP_REPLICATES,
                             seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% interval of mean(x_pos) / mean(x_ctrl), rows resampled within each class (unpaired data)."""
    rng = np.random.default_rng(seed)
    per_batch = max(1, 20_000_000 // max(x_pos.size + x_ctrl.size, 1))   # resampled indices held at once
    ratios = []
    for start in range(0, n_boot, per_batch):
        k = min(per_batch, n_boot - start)
        mean_p = x_pos[rng.integers(0, x_pos.size, (k, x_pos.size))].mean(axis=1)
        mean_c = x_ctrl[rng.integers(0, x_ctrl.size, (k, x_ctrl.size))].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(mean_p / mean_c)
    lo, hi = np.nanquantile(np.concatenate(ratios), [0.025, 0.975])
    return float(lo), float(hi)


def ratio_of_means(x_pos: np.ndarray, cluster_pos: np.ndarray | None, x_ctrl: np.ndarray,
                   cluster_ctrl: np.ndarray | None) -> tuple[float, tuple[float, float]]:
    """mean(x_pos) / mean(x_ctrl) with a cluster-robust 95% interval (delta method).

    Clusters (e.g. parent_id) hold correlated rows of both groups (a positive
    and its control share a parent); the variance sums per-cluster influence
    contributions, so pairing and replicates are accounted for.  Clusters None
    (no pairing key): the classes are independent samples and the interval is
    a bootstrap (``bootstrap_ratio_interval``).
    """
    x_pos, x_ctrl = np.asarray(x_pos, np.float64), np.asarray(x_ctrl, np.float64)
    n_p, n_c = x_pos.size, x_ctrl.size
    if n_p == 0 or n_c == 0:
        return float("nan"), (float("nan"), float("nan"))
    mean_p, mean_c = x_pos.mean(), x_ctrl.mean()
    if mean_c == 0:
        return float("nan"), (float("nan"), float("nan"))
    ratio = mean_p / mean_c
    if cluster_pos is None or cluster_ctrl is None:
        return float(ratio), bootstrap_ratio_interval(x_pos, x_ctrl)
    # influence of each row on log(ratio): (x_p - mean_p)/(n_p mean_p) - (x_c - mean_c)/(n_c mean_c)
    infl = np.concatenate([(x_pos - mean_p) / (n_p * mean_p), -(x_ctrl - mean_c) / (n_c * mean_c)])
    clusters = np.concatenate([np.asarray(cluster_pos), np.asarray(cluster_ctrl)])
    _, inverse = np.unique(clusters, return_inverse=True)
    per_cluster = np.bincount(inverse, weights=infl)
    g = per_cluster.size
    var_log = (per_cluster**2).sum() * (g / (g - 1) if g > 1 else 1.0)
    if not (mean_p > 0 and mean_c > 0):
        return float(ratio), (float("nan"), float("nan"))
    half = Z95 * math.sqrt(var_log)
    return float(ratio), (float(ratio * math.exp(-half)), float(ratio * math.exp(half)))

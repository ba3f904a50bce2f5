"""Statistics with uncertainties: binomial intervals, effect sizes, distances between samples."""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri, stdtrit   # the normal and Student-t quantiles (scipy.stats' own kernels)


def wilson_interval(successes, trials, confidence: float = 0.95):
    """Wilson score interval (lo, hi) for a binomial rate; (nan, nan) when trials = 0."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    z = ndtri(0.5 + confidence / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


def rate_with_interval(successes: int, trials: int, confidence: float = 0.95) -> dict:
    """{'rate', 'lo', 'hi', 'k', 'n'} with a Wilson interval."""
    lo, hi = wilson_interval(successes, trials, confidence)
    return {"rate": successes / trials if trials else float("nan"), "lo": float(lo), "hi": float(hi),
            "k": int(successes), "n": int(trials)}


def percentiles(values, q=(5, 25, 50, 75, 95)) -> dict:
    """Named percentiles of the finite values ({'p5': ..., ...}); NaN when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {f"p{p}": (float(np.percentile(v, p)) if len(v) else float("nan")) for p in q}


def mean_with_interval(values, confidence: float = 0.95) -> dict:
    """{'mean', 'lo', 'hi', 'sd', 'n'}: sample mean with a Student-t interval, mean ± t·sd/√n.

    ``sd`` is the sample standard deviation (ddof = 1). NaN mean when n = 0, NaN interval
    when n < 2. Non-finite values raise ValueError (they are not silently dropped).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    bad = int(np.count_nonzero(~np.isfinite(v)))
    if bad:
        raise ValueError(f"values: {bad} of {v.size} entries are not finite")
    n = int(v.size)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": n}
    sd = float(v.std(ddof=1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * sd / np.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}

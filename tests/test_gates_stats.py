"""Effect sizes and intervals used by the gates, against scipy/sklearn and hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from darkhalo.gates.core_baseline import NotEnoughData, fold_of_parent, out_of_fold_scores
from darkhalo.gates.stats import ks_distance, ks_null95, ratio_of_means, roc_auc_delong, standardized_mean_difference
from darkhalo.core.stats import wilson_interval


def test_ks_and_auc_agree_with_scipy_and_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.4, 1.2, 500)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    ai, bi = rng.integers(0, 4, 200), rng.integers(0, 4, 100)                  # ties
    assert ks_distance(ai, bi) == pytest.approx(ks_2samp(ai, bi).statistic, abs=1e-12)
    scores, labels = np.concatenate([a, b.round(1)]), np.r_[np.zeros(300), np.ones(500)]
    auc, (lo, hi) = roc_auc_delong(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12) and lo < auc < hi
    assert ks_null95(100, 100) == pytest.approx(1.3581 * np.sqrt(0.02))


def test_smd_wilson_and_ratio_hand_cases():
    d, (lo, hi) = standardized_mean_difference(np.array([1.0, 2, 3, 4]), np.array([0.0, 1, 2, 3]))
    assert d == pytest.approx(1 / np.sqrt(5 / 3)) and lo < d < hi
    assert standardized_mean_difference(np.ones(5), np.ones(5))[0] == 0.0
    lo, hi = wilson_interval(4, 4)                  # docs/domain.md: 4/4 anchors is not a measurement
    assert lo == pytest.approx(0.5101, abs=1e-4) and hi == 1.0
    assert np.isnan(wilson_interval(0, 0)).all()   # one definition (darkhalo.core.stats): no trials, no interval
    x = np.array([2.0, 4.0, 6.0])
    ratio, (lo, hi) = ratio_of_means(1.3 * x, np.arange(3), x, np.arange(3))
    assert ratio == pytest.approx(1.3) and lo == pytest.approx(1.3) and hi == pytest.approx(1.3)


def test_ratio_interval_covers_the_truth_with_pairing():
    rng = np.random.default_rng(2)
    base = rng.lognormal(0, 1, 400)
    pos = 1.1 * base * rng.normal(1, 0.05, 400)
    ratio, (lo, hi) = ratio_of_means(pos, np.arange(400), base, np.arange(400))
    assert lo < 1.1 < hi and hi - lo < 0.03           # pairing makes the interval narrow


def test_core_baseline_folds_keep_parents_together_and_detect_signal():
    rng = np.random.default_rng(3)
    parent = np.repeat(np.arange(60), 4)
    folds = fold_of_parent(parent, 5, seed=9)
    assert all(np.unique(folds[parent == p]).size == 1 for p in range(60))
    y = np.tile([0, 1], 120)
    x = rng.normal(size=(240, 6)) + 1.5 * y[:, None] * np.array([1, 0, 0, 0, 0, 0])
    scores = out_of_fold_scores(x, y == 1, parent, n_folds=5, l2_c=1.0, seed=9)
    assert roc_auc_score(y, scores) > 0.8 and np.isfinite(scores).all()
    with pytest.raises(NotEnoughData, match="each class"):
        out_of_fold_scores(x[:6], np.ones(6, bool), parent[:6], n_folds=5, l2_c=1.0, seed=9)


def test_smd_stays_finite_on_values_whose_variance_overflows():
    """The SMD is scale-free: values near 1e300 give the same SMD as the same values near 1 (no 0 from inf / inf)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.0, 1.0, 200), rng.normal(0.3, 1.0, 200)
    d, (lo, hi) = standardized_mean_difference(a, b)
    d_big, (lo_big, hi_big) = standardized_mean_difference(a * 1e300, b * 1e300)
    assert d < -0.1 and np.isclose(d_big, d, rtol=1e-9) and np.isclose(lo_big, lo) and np.isclose(hi_big, hi)
    with pytest.raises(ValueError, match="non-finite"):
        standardized_mean_difference(np.array([1.0, np.inf]), b)

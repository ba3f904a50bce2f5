"""Evaluation statistics (darkhalo.core.metrics): hand-computed cases, sklearn as the AUC/ROC oracle."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from darkhalo.core import metrics as M
from darkhalo.core.stats import mean_with_interval, rate_with_interval, wilson_interval

# Hand case with ties. Positives 0.9 0.8 0.7 0.7 0.4; negatives 0.7 0.6 0.3 0.2.
HAND_POS = [0.9, 0.8, 0.7, 0.7, 0.4]
HAND_NEG = [0.7, 0.6, 0.3, 0.2]


def hand_case():
    scores = np.array(HAND_POS + HAND_NEG)
    labels = np.array([1] * len(HAND_POS) + [0] * len(HAND_NEG))
    perm = np.random.default_rng(0).permutation(scores.size)          # order must not matter
    return labels[perm], scores[perm]


# --------------------------------------------------------------------------- Wilson intervals

@pytest.mark.parametrize("k, n, lo, hi", [
    (4, 4, 0.5101, 1.0),        # docs/domain.md: 4/4 anchors -> roughly [0.5, 1.0]
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (1, 4, 0.0456, 0.6994),
])
def test_wilson_known_values(k, n, lo, hi):
    got_lo, got_hi = wilson_interval(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)
    r = rate_with_interval(k, n)
    assert (r["k"], r["n"]) == (k, n) and r["rate"] == pytest.approx(k / n)


def test_mean_with_interval():
    r = mean_with_interval([1.0, 2.0, 3.0, 4.0])
    # t_{0.975, 3} = 3.182446; sd = 1.290994
    assert r["mean"] == 2.5 and r["sd"] == pytest.approx(1.290994, abs=1e-6)
    assert r["hi"] - r["mean"] == pytest.approx(3.182446 * 1.290994 / 2, abs=1e-5)
    with pytest.raises(ValueError, match="1 of 3"):
        mean_with_interval([1.0, np.nan, 2.0])


# --------------------------------------------------------------------------- ROC and AUC

def test_auc_hand_case_with_ties():
    y, s = hand_case()
    # Pairs: 0.9 -> 4, 0.8 -> 4, 0.7 -> 3 + ½, 0.7 -> 3 + ½, 0.4 -> 2 : 17 of 20
    assert M.roc_auc(y, s) == pytest.approx(17 / 20, abs=1e-15)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "integer", "mostly_tied"])
def test_auc_agrees_with_sklearn(kind):
    rng = np.random.default_rng(42)
    n = 3000
    y = rng.integers(0, 2, n)
    raw = rng.normal(0.7 * y, 1.0)
    s = {"continuous": raw, "rounded": np.round(raw, 1), "integer": np.round(raw * 2),
         "mostly_tied": (raw > 0.5).astype(float)}[kind]
    assert abs(M.roc_auc(y, s) - roc_auc_score(y, s)) < 1e-9
    fpr, tpr, thr, *_ = M.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    assert np.isinf(thr[0]) and fpr[0] == 0 and tpr[0] == 0
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])


def test_auc_batched_matches_rank_auc_with_weights():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400).astype(bool)
    s = np.round(rng.normal(y, 1.0), 1)
    w = rng.integers(0, 3, size=(5, 400))
    batched = M._roc_auc_batched(y, s, w)
    for b in range(5):
        idx = np.repeat(np.arange(400), w[b])
        assert batched[b] == pytest.approx(M.roc_auc(y[idx], s[idx]), abs=1e-12)


def test_roc_handles_infinite_logits():
    y = np.array([1, 1, 0, 0, 1])
    s = np.array([np.inf, np.inf, -np.inf, 0.0, -np.inf])
    curve = M.roc_curve(y, s)
    assert curve.tp.tolist() == [0, 2, 2, 3] and curve.fp.tolist() == [0, 0, 1, 2]
    # pairs: each +inf positive beats both negatives (4); the -inf positive ties the -inf negative (½)
    assert M.roc_auc(y, s) == pytest.approx(4.5 / 6, abs=1e-15)


# --------------------------------------------------------------------------- TPR0 / TPR10 / TPR at FPR

def test_tpr0_tie_with_negative_is_a_false_positive():
    y, s = hand_case()
    r = M.tpr0(y, s)
    # Top negative 0.7; the positives tied at 0.7 are not counted: 0.9 and 0.8 -> 2/5.
    assert r["resolvable"] and r["tpr"] == pytest.approx(0.4)
    assert r["threshold"] == 0.8 and r["n_fp"] == 0 and r["n_tp"] == 2
    lo, hi = wilson_interval(2, 5)
    assert (r["tpr_lo"], r["tpr_hi"]) == (pytest.approx(float(lo)), pytest.approx(float(hi)))


def test_tpr_at_fp_count_hand_case():
    y, s = hand_case()
    one = M.tpr_at_fp_count(y, s, 1)         # above the 2nd negative (0.6): 0.9 0.8 0.7 0.7
    assert (one["tpr"], one["threshold"], one["n_fp"]) == (pytest.approx(0.8), 0.7, 1)
    two = M.tpr_at_fp_count(y, s, 2)         # above the 3rd negative (0.3): all five
    assert (two["tpr"], two["threshold"], two["n_fp"]) == (pytest.approx(1.0), 0.4, 2)


def test_tpr_at_fp_count_reports_fewest_fps_for_the_best_tpr():
    # Positives all at 0.9; a negative at 0.5. With a budget of 1 FP the TPR is 1 already at 0.9.
    r = M.tpr_at_fp_count([1, 1, 0, 0], [0.9, 0.9, 0.5, 0.1], 1)
    assert r["tpr"] == 1.0 and r["threshold"] == 0.9 and r["n_fp"] == 0


def test_tpr0_zero_when_top_score_is_negative():
    r = M.tpr0([0, 1, 1], [0.99, 0.5, 0.2])
    assert r["tpr"] == 0.0 and math.isinf(r["threshold"]) and r["n_fp"] == 0


def test_tpr10_with_tied_negatives():
    # Negatives: 0.95, nine at 0.8, five at 0.1. The 10th-highest negative is 0.8, so a threshold
    # at 0.8 would admit 10 FPs: TPR10 counts only positives strictly above 0.8.
    neg = [0.95] + [0.8] * 9 + [0.1] * 5
    pos = [0.99, 0.85, 0.8, 0.5]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    r = M.tpr10(y, s)
    assert r["resolvable"] and r["tpr"] == pytest.approx(0.5)
    assert r["threshold"] == 0.85 and r["n_fp"] == 1 and r["max_fp"] == 9


def test_tpr10_not_resolvable_with_fewer_than_ten_negatives():
    y, s = hand_case()
    r = M.tpr10(y, s)
    assert r["resolvable"] is False and math.isnan(r["tpr"]) and "4 negatives" in r["reason"]


def test_tpr_at_fpr_resolvable_hand_case():
    neg = np.r_[np.linspace(0.0, 0.5, 998), 0.95, 0.85]                  # 1000 negatives
    pos = np.array([0.99, 0.9, 0.85, 0.8, 0.6])
    y = np.r_[np.ones(5), np.zeros(1000)]
    s = np.r_[pos, neg]
    r3 = M.tpr_at_fpr(y, s, 1e-3)
    # budget 1 FP -> above the 2nd negative (0.85): 0.99, 0.9 -> 2/5; at 0.9 the FP is 0.95.
    assert r3["resolvable"] and r3["max_fp"] == 1
    assert (r3["tpr"], r3["threshold"], r3["n_fp"], r3["n_neg"]) == (pytest.approx(0.4), 0.9, 1, 1000)
    assert r3["fpr"] == pytest.approx(1e-3)
    r2 = M.tpr_at_fpr(y, s, 1e-2)
    # budget 10 FPs -> above the 11th negative (~0.496): all positives; at 0.6 only 0.95 and 0.85 are FPs.
    assert (r2["tpr"], r2["threshold"], r2["n_fp"], r2["max_fp"]) == (pytest.approx(1.0), 0.6, 2, 10)
    assert M.operating_threshold_for_fpr(y, s, 1e-3) == 0.9


def test_tpr_at_fpr_not_resolvable():
    y, s = hand_case()                                 # 4 negatives: 4 * 1e-2 < 1
    for fpr in (1e-2, 1e-3):
        r = M.tpr_at_fpr(y, s, fpr)
        assert r["resolvable"] is False and math.isnan(r["tpr"]) and math.isnan(r["threshold"])
        assert r["n_neg"] == 4 and r["min_resolvable_fpr"] == 0.25 and "not resolvable" in r["reason"]
    with pytest.raises(ValueError, match="not resolvable"):
        M.operating_threshold_for_fpr(y, s, 1e-2)
    ok = M.tpr_at_fpr(y, s, 0.25)                       # budget 1 FP
    assert ok["resolvable"] and ok["tpr"] == pytest.approx(0.8) and ok["threshold"] == 0.7


def test_fp_budget_floor_is_robust_to_float_products():
    assert 0.29 * 100 < 29                               # the trap
    assert M._max_fp_for_fpr(0.29, 100) == 29
    assert M._max_fp_for_fpr(1e-3, 999) == 0


# --------------------------------------------------------------------------- bins and groups

def test_binned_completeness_hand_case():
    values = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 3.5, np.nan, -1.0])
    selected = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    r = M.binned_completeness(selected, values, [0, 1, 2, 3])
    assert [b["n"] for b in r["bins"]] == [1, 2, 2]           # 3.0 falls in the closed last bin
    assert [b["k"] for b in r["bins"]] == [1, 1, 1]
    assert [b["centre"] for b in r["bins"]] == [0.5, 1.5, 2.5]
    assert (r["n_nan"], r["n_below"], r["n_above"], r["n_rows"]) == (1, 1, 1, 8)
    lo, hi = wilson_interval(1, 2)
    assert r["bins"][1]["rate"] == 0.5 and r["bins"][1]["lo"] == pytest.approx(float(lo))
    assert r["bins"][1]["hi"] == pytest.approx(float(hi)) and r["bins"][2]["mean_value"] == 2.5
    empty = M.binned_completeness([1], [0.5], [0, 1, 2])["bins"][1]
    assert empty["n"] == 0 and math.isnan(empty["rate"]) and math.isnan(empty["lo"])
    with pytest.raises(ValueError, match="strictly increasing"):
        M.binned_completeness([1], [0.5], [0, 2, 1])


def test_rate_by_group():
    groups = np.array(["ring", "spiral", "ring", "merger", "ring", "spiral"])
    selected = np.array([1, 0, 0, 1, 1, 0])
    r = M.rate_by_group(selected, groups)
    assert list(r) == ["merger", "ring", "spiral"]
    assert (r["ring"]["k"], r["ring"]["n"]) == (2, 3) and r["spiral"]["rate"] == 0.0
    assert r["merger"]["lo"] == pytest.approx(float(wilson_interval(1, 1)[0]))
    tiers = M.rate_by_group([1, 1, 1, 1], [1, 1, 1, 1])
    assert tiers[1]["lo"] == pytest.approx(0.5101, abs=1e-4) and tiers[1]["hi"] == 1.0
    with pytest.raises(ValueError, match="1 of 2 values are NaN"):
        M.rate_by_group([1, 0], [1.0, np.nan])


# --------------------------------------------------------------------------- calibration

def test_ece_near_zero_when_calibrated():
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 1, 200_000)
    y = rng.uniform(0, 1, p.size) < p
    r = M.reliability_curve(y, p, 10)
    assert r["ece"] < 0.01
    covered = sum(b["lo"] <= b["mean_prob"] <= b["hi"] for b in r["bins"])
    assert covered >= 8                                     # 95% intervals: ~9.5 of 10 expected
    assert sum(b["n"] for b in r["bins"]) == p.size


def test_ece_known_value_when_miscalibrated():
    # Half the rows at p = 0.25 with 50% positives, half at p = 0.85 with all positive:
    # ECE = 0.5·|0.5 − 0.25| + 0.5·|1.0 − 0.85| = 0.2.
    p = np.r_[np.full(100, 0.25), np.full(100, 0.85)]
    y = np.r_[np.tile([0, 1], 50), np.ones(100)]
    assert M.expected_calibration_error(y, p, 10) == pytest.approx(0.2, abs=1e-12)
    r = M.reliability_curve(y, p, 10)
    b2, b8 = r["bins"][2], r["bins"][8]
    assert (b2["n"], b2["k"], b2["rate"], b2["mean_prob"]) == (100, 50, 0.5, pytest.approx(0.25))
    assert (b8["n"], b8["k"], b8["rate"]) == (100, 100, 1.0)
    assert b8["lo"] == pytest.approx(float(wilson_interval(100, 100)[0])) and b8["hi"] == 1.0
    assert r["bins"][0]["n"] == 0 and math.isnan(r["bins"][0]["rate"])
    assert M.expected_calibration_error([1, 0], [1.0, 0.0], 10) == 0.0     # p = 1 lands in the last bin


def test_reliability_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probs: 1 of 2 values are outside"):
        M.reliability_curve([1, 0], [1.5, 0.2])


# --------------------------------------------------------------------------- purity and gate 1.3

def test_implied_purity_formula_and_interval():
    assert M.implied_purity(0.9, 1e-3, 1e-3) == pytest.approx(0.9e-3 / (0.9e-3 + 1e-3 * 0.999))
    assert M.implied_purity(0.5, 0.0, 1e-3) == 1.0
    assert math.isnan(M.implied_purity(0.0, 0.0, 1e-3))
    r = M.purity_with_interval(90, 100, 1, 1000, 1e-3)
    assert r["lo"] < r["purity"] < r["hi"]
    t_lo, t_hi = wilson_interval(90, 100, 0.975)
    f_lo, f_hi = wilson_interval(1, 1000, 0.975)
    assert r["lo"] == pytest.approx(M.implied_purity(float(t_lo), float(f_hi), 1e-3))
    assert r["hi"] == pytest.approx(M.implied_purity(float(t_hi), float(f_lo), 1e-3))
    with pytest.raises(ValueError, match="prevalence"):
        M.implied_purity(0.5, 0.1, 0.0)


def test_null_injection():
    controls = np.r_[np.full(998, 0.1), 0.9, 0.95]
    r = M.null_injection(controls, threshold=0.9, n_tp=80, n_pos=100, prevalence=1e-3)
    assert r["mean_score"]["mean"] == pytest.approx((998 * 0.1 + 1.85) / 1000)
    assert (r["fraction_above"]["k"], r["fraction_above"]["n"]) == (2, 1000)    # score >= threshold
    assert r["purity"]["purity"] == pytest.approx(M.implied_purity(0.8, 2e-3, 1e-3))


# --------------------------------------------------------------------------- paired bootstrap

def bootstrap_data(n=2000, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    weak = rng.normal(0.4 * y, 1.0)
    strong = rng.normal(2.0 * y, 1.0)
    return y, weak, strong


def test_bootstrap_identical_scores_zero_interval():
    y, weak, _ = bootstrap_data()
    r = M.paired_bootstrap(M.roc_auc, y, weak, weak.copy(), n_boot=200, seed=1)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0
    assert M.verdict(r) == "not distinguishable"


def test_bootstrap_clearly_better():
    y, weak, strong = bootstrap_data()
    r = M.paired_bootstrap(M.roc_auc, y, weak, strong, n_boot=300, seed=1)
    assert r["diff"] > 0.2 and r["lo"] > 0.1 and r["lo"] <= r["diff"] <= r["hi"]
    assert r["a_lo"] <= r["a"] <= r["a_hi"] and r["b_lo"] <= r["b"] <= r["b_hi"]
    assert M.verdict(r) == "better"
    assert M.verdict((r["lo"], r["hi"]), higher_is_better=False) == "worse"
    swapped = M.paired_bootstrap(M.roc_auc, y, strong, weak, n_boot=300, seed=1)
    assert M.verdict(swapped) == "worse"


def test_bootstrap_deterministic_and_fast_path_matches_generic():
    y, weak, strong = bootstrap_data(n=800)
    one = M.paired_bootstrap(M.roc_auc, y, weak, strong, n_boot=150, seed=9)
    again = M.paired_bootstrap(M.roc_auc, y, weak, strong, n_boot=150, seed=9)
    assert one == again
    other = M.paired_bootstrap(M.roc_auc, y, weak, strong, n_boot=150, seed=10)
    assert other["lo"] != one["lo"]
    generic = M.paired_bootstrap(lambda yy, ss: M.roc_auc(yy, ss), y, weak, strong, n_boot=150, seed=9)
    for key in ("a", "b", "diff", "lo", "hi", "se", "a_lo", "b_hi"):
        assert generic[key] == pytest.approx(one[key], abs=1e-12)
    # singleton groups resample exactly like rows
    grouped = M.paired_bootstrap(M.roc_auc, y, weak, strong, n_boot=150, seed=9, groups=np.arange(y.size))
    assert grouped["lo"] == one["lo"] and grouped["resampled"] == "groups"


def test_bootstrap_groups_widen_interval_under_correlation():
    # b = a + a shared offset per group (50 groups of 40 rows) on positives: the difference is
    # driven by 50 independent units, not 2000, so group resampling must give a wider interval.
    rng = np.random.default_rng(11)
    n_groups, size = 50, 40
    groups = np.repeat(np.arange(n_groups), size)
    y = rng.integers(0, 2, groups.size)
    a = rng.normal(1.0 * y, 1.0)
    b = a + y * rng.normal(0.0, 1.0, n_groups)[groups]
    rows = M.paired_bootstrap(M.roc_auc, y, a, b, n_boot=300, seed=2)
    grouped = M.paired_bootstrap(M.roc_auc, y, a, b, n_boot=300, seed=2, groups=groups)
    assert grouped["n_units"] == n_groups
    assert (grouped["hi"] - grouped["lo"]) > 1.5 * (rows["hi"] - rows["lo"])


def test_bootstrap_generic_metric_with_columns_and_invalid_replicates():
    y, weak, strong = bootstrap_data(n=300)
    marked = np.zeros(y.size, dtype=bool)
    marked[0] = True                                      # absent from ~(1 - 1/n)^n = 37% of replicates

    def needs_marked_row(labels, scores, marked):
        return float(np.mean(scores[labels])) if marked.any() else float("nan")

    r = M.paired_bootstrap(needs_marked_row, y, weak, strong, n_boot=200, seed=0, columns={"marked": marked})
    assert 40 < r["n_invalid"] < 110 and np.isfinite([r["lo"], r["hi"]]).all()
    assert r["diff"] == pytest.approx(strong[y == 1].mean() - weak[y == 1].mean())
    tpr_metric = lambda labels, scores: M.tpr_at_fpr(labels, scores, 1e-2)["tpr"]   # noqa: E731
    t = M.paired_bootstrap(tpr_metric, y, weak, strong, n_boot=50, seed=0)
    assert t["n_invalid"] == 0 and M.verdict(t) == "better"


def test_bootstrap_auc_speed():
    rng = np.random.default_rng(0)
    n = 10_000
    y = rng.integers(0, 2, n)
    a = rng.normal(y, 1.0)
    b = a + rng.normal(0, 0.2, n)
    start = time.perf_counter()
    r = M.paired_bootstrap(M.roc_auc, y, a, b, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert r["n_invalid"] == 0
    assert elapsed < 15, f"1000 AUC replicates on 1e4 rows took {elapsed:.1f} s"


def test_verdict_rules():
    assert M.verdict((0.01, 0.03)) == "better"
    assert M.verdict((0.01, 0.03), tolerance=0.05) == "not distinguishable"
    assert M.verdict((-0.03, -0.01)) == "worse"
    assert M.verdict((-0.03, -0.01), higher_is_better=False) == "better"
    assert M.verdict((0.0, 0.02)) == "not distinguishable"
    with pytest.raises(ValueError, match="NaN"):
        M.verdict((float("nan"), 0.1))


# --------------------------------------------------------------------------- loud input errors

@pytest.mark.parametrize("call, message", [
    (lambda: M.roc_auc([1, 0, 1], [0.1, 0.2]), "scores has 2 rows but labels has 3"),
    (lambda: M.roc_auc([1, 0, 2], [0.1, 0.2, 0.3]), r"labels: 1 of 3 values are not 0/1"),
    (lambda: M.roc_auc([1, 0, 1], [0.1, np.nan, np.nan]), "scores: 2 of 3 values are NaN"),
    (lambda: M.roc_auc([1, 1], [0.1, 0.2]), "n_pos=2, n_neg=0"),
    (lambda: M.tpr0([1, 0], [0.3, np.nan]), "scores: 1 of 2 values are NaN"),
    (lambda: M.paired_bootstrap(M.roc_auc, [1, 0], [0.1, 0.2], [0.1]), "scores_b has 1 rows"),
    (lambda: M.paired_bootstrap(M.roc_auc, [1, 0], [0.1, 0.2], [0.1, np.nan]), "scores_b: 1 of 2"),
    (lambda: M.binned_completeness([1, 0], [0.1], [0, 1]), "values has shape"),
    (lambda: M.binned_completeness([1, 3], [0.1, 0.2], [0, 1]), "selected: 1 of 2"),
    (lambda: M.rate_by_group([1, 0], ["a"]), "groups has shape"),
    (lambda: M.reliability_curve([1, 0], [0.5, np.nan]), "probs: 1 of 2 values are NaN"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()

"""Gate 1.6: a core-only baseline classifier, cross-fitted with folds grouped by parent (or sky region).

Features are the central r < k px of every band (asinh of the unclipped,
robust-normalised pixels: darkhalo.gates.scan).  A standardised, L2-regularised
logistic regression (scikit-learn) is fitted on all folds but one and scores the
held-out fold; folds are drawn per group -- ``parent_id`` (the pairing key), so a
positive, its control and all replicates of a parent are always held out together
and pairs cannot leak; without a pairing key the sky region
(``darkhalo.gates.audit.fold_groups``), so neighbouring stamps cannot leak.
The out-of-fold scores go to the GX expectation that computes the AUC and its
DeLong interval.
"""
from __future__ import annotations

import warnings

import numpy as np

from darkhalo.core.rng import keyed_rng


class NotEnoughData(ValueError):
    """Too few stamps of one class (or too few parents) to cross-fit the baseline."""


def fold_of_parent(parent_id: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row: parents shuffled by ``keyed_rng(seed, 'gates.core_folds')``, dealt round-robin."""
    parents, inverse = np.unique(parent_id, return_inverse=True)
    order = keyed_rng(seed, "gates.core_folds").permutation(parents.size)
    fold_of = np.empty(parents.size, np.int64)
    fold_of[order] = np.arange(parents.size) % n_folds
    return fold_of[inverse.reshape(-1)]


def out_of_fold_scores(features: np.ndarray, is_positive: np.ndarray, parent_id: np.ndarray, *,
                       n_folds: int, l2_c: float, seed: int) -> np.ndarray:
    """Held-out P(positive | core pixels) for every row (float64)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(is_positive).astype(np.int8)
    if y.sum() < n_folds or (y.size - y.sum()) < n_folds:
        raise NotEnoughData(f"core-only baseline needs >= {n_folds} stamps of each class, got "
                            f"{int(y.sum())} positives and {int(y.size - y.sum())} controls")
    if np.unique(parent_id).size < n_folds:
        raise NotEnoughData(f"core-only baseline needs >= {n_folds} parents for {n_folds} grouped folds")
    folds = fold_of_parent(parent_id, n_folds, seed)
    scores = np.full(y.size, np.nan)
    x = np.asarray(features, np.float64)
    for k in range(n_folds):
        test = folds == k
        train = ~test
        if np.unique(y[train]).size < 2 or not test.any():
            raise NotEnoughData(f"fold {k} of the core-only baseline has a single class in its training part")
        model = make_pipeline(StandardScaler(), LogisticRegression(C=l2_c, max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)   # the AUC, not the optimum, is the statistic
            model.fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return scores

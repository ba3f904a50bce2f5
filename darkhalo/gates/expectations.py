"""Custom Great Expectations (1.x) expectations for the shortcut gates.

GX has no two-group effect-size, AUC or ratio-of-means expectations, so these
are defined here, each with a pandas metric:

* ``ExpectColumnTwoGroupEffectSizesToBeWithin`` (gates 1.1, 1.5): KS distance
  D and standardised mean difference between positives and controls;
* ``ExpectColumnRocAucToBeBetween`` (gate 1.6): ROC AUC of a score column
  against the class, with its DeLong interval;
* ``ExpectColumnGroupMeanRatioToBeBetween`` (gate 1.8): mean over positives /
  mean over controls, with a cluster-robust interval (clusters = pairs), or a
  bootstrap interval when the cluster column is all NaN (no pairing key).

Importing this module imports GX (seconds); only the validating code does.
Tolerances arrive as ``$PARAMETER`` references resolved at validation time.
"""
from __future__ import annotations

import math
from typing import ClassVar, Tuple, Union

import numpy as np

from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

from darkhalo.gates.stats import (auc_null95, ks_distance, ks_null95, ratio_of_means, roc_auc_delong, smd_null95,
                    standardized_mean_difference)

Number = Union[float, SuiteParameterDict]


def _frame(execution_engine, metric_domain_kwargs):
    df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                   domain_type=MetricDomainTypes.TABLE)
    return df


def _groups(df, column: str, group_column: str, positive_value) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(values, is_positive, keep, n_nonfinite): finite values of ``column`` split by group."""
    values = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
    is_pos = df[group_column].to_numpy() == positive_value
    keep = np.isfinite(values)
    return values, is_pos, keep, int((~keep).sum())


class TwoGroupEffectSizes(TableMetricProvider):
    """KS D (+ its 95% null level) and SMD (+ 95% interval) of a column between two groups."""

    metric_name = "darkhalo.two_group_effect_sizes"
    value_keys = ("column", "group_column", "positive_value")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df = _frame(execution_engine, metric_domain_kwargs)
        values, is_pos, keep, n_bad = _groups(df, metric_value_kwargs["column"], metric_value_kwargs["group_column"],
                                              metric_value_kwargs["positive_value"])
        pos, ctrl = values[keep & is_pos], values[keep & ~is_pos]
        smd, (lo, hi) = standardized_mean_difference(pos, ctrl)
        return {"ks_d": ks_distance(pos, ctrl), "ks_d_null95": ks_null95(pos.size, ctrl.size), "smd": smd,
                "smd_ci95": [lo, hi], "smd_null95": smd_null95(pos.size, ctrl.size), "mean_positive": float(pos.mean()) if pos.size else math.nan,
                "mean_control": float(ctrl.mean()) if ctrl.size else math.nan,
                "n_positive": int(pos.size), "n_control": int(ctrl.size), "n_nonfinite": n_bad}


class RocAuc(TableMetricProvider):
    """ROC AUC of a score column for positives vs the rest, DeLong 95% interval."""

    metric_name = "darkhalo.roc_auc"
    value_keys = ("column", "label_column", "positive_value")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df = _frame(execution_engine, metric_domain_kwargs)
        values, is_pos, keep, n_bad = _groups(df, metric_value_kwargs["column"], metric_value_kwargs["label_column"],
                                              metric_value_kwargs["positive_value"])
        auc, (lo, hi) = roc_auc_delong(values[keep], is_pos[keep])
        n_pos, n_neg = int((keep & is_pos).sum()), int((keep & ~is_pos).sum())
        return {"auc": auc, "auc_ci95": [lo, hi], "auc_null95": auc_null95(n_pos, n_neg), "n_positive": n_pos,
                "n_control": int((keep & ~is_pos).sum()), "n_nonfinite": n_bad}


class GroupMeanRatio(TableMetricProvider):
    """mean(positives) / mean(controls) of a column, cluster-robust 95% interval."""

    metric_name = "darkhalo.group_mean_ratio"
    value_keys = ("column", "group_column", "positive_value", "cluster_column")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df = _frame(execution_engine, metric_domain_kwargs)
        values, is_pos, keep, n_bad = _groups(df, metric_value_kwargs["column"], metric_value_kwargs["group_column"],
                                              metric_value_kwargs["positive_value"])
        clusters = df[metric_value_kwargs["cluster_column"]].to_numpy()
        p, c = keep & is_pos, keep & ~is_pos
        if clusters.dtype.kind == "f" and np.isnan(clusters).all():       # unpaired: rows are independent
            ratio, (lo, hi) = ratio_of_means(values[p], None, values[c], None)
        else:
            ratio, (lo, hi) = ratio_of_means(values[p], clusters[p], values[c], clusters[c])
        return {"ratio": ratio, "ratio_ci95": [lo, hi], "mean_positive": float(values[p].mean()) if p.any() else math.nan,
                "mean_control": float(values[c].mean()) if c.any() else math.nan,
                "n_positive": int(p.sum()), "n_control": int(c.sum()), "n_nonfinite": n_bad}


def _or0(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def _finite_within(value: float, low: float | None, high: float | None) -> bool:
    return (isinstance(value, (int, float)) and math.isfinite(value)
            and (low is None or value >= low) and (high is None or value <= high))


class ExpectColumnTwoGroupEffectSizesToBeWithin(BatchExpectation):
    """Expect KS D and |SMD| between positives and controls of a column within tolerance.

    Fails when D > max(max_ks_d, D's null 95% level) or |SMD| > max(max_abs_smd,
    SMD's null 95% level): exceeding the tolerance only counts when the sample
    resolves it (``resolution_limited`` in the result says when it does not).
    """

    column: str
    group_column: str
    positive_value: int
    max_ks_d: Number
    max_abs_smd: Number

    metric_dependencies: ClassVar[Tuple[str, ...]] = (TwoGroupEffectSizes.metric_name,)
    success_keys: ClassVar[Tuple[str, ...]] = ("column", "group_column", "positive_value", "max_ks_d", "max_abs_smd")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        m = dict(metrics[TwoGroupEffectSizes.metric_name])
        kw = self.configuration.kwargs
        max_d = max(kw["max_ks_d"], _or0(m["ks_d_null95"]))
        max_smd = max(kw["max_abs_smd"], _or0(m["smd_null95"]))
        m["resolution_limited"] = bool(max_d > kw["max_ks_d"] or max_smd > kw["max_abs_smd"])
        m["effective_max_ks_d"], m["effective_max_abs_smd"] = max_d, max_smd
        ok = _finite_within(m["ks_d"], None, max_d) and _finite_within(abs(m["smd"]), None, max_smd)
        return {"success": bool(ok), "result": {"observed_value": m}}


class ExpectColumnRocAucToBeBetween(BatchExpectation):
    """Expect the ROC AUC of a score column (positives vs controls) within [min_value, max_value].

    The band is widened to at least 0.5 ± the AUC's null 95% level when the
    sample cannot resolve it (``resolution_limited`` in the result).
    """

    column: str
    label_column: str
    positive_value: int
    min_value: Number
    max_value: Number

    metric_dependencies: ClassVar[Tuple[str, ...]] = (RocAuc.metric_name,)
    success_keys: ClassVar[Tuple[str, ...]] = ("column", "label_column", "positive_value", "min_value", "max_value")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        m = dict(metrics[RocAuc.metric_name])
        kw = self.configuration.kwargs
        low = min(kw["min_value"], 0.5 - _or0(m["auc_null95"]))
        high = max(kw["max_value"], 0.5 + _or0(m["auc_null95"]))
        m["resolution_limited"] = bool(low < kw["min_value"] or high > kw["max_value"])
        m["effective_range"] = [low, high]
        return {"success": _finite_within(m["auc"], low, high), "result": {"observed_value": m}}


class ExpectColumnGroupMeanRatioToBeBetween(BatchExpectation):
    """Expect mean(positives) / mean(controls) of a column within [min_value, max_value]."""

    column: str
    group_column: str
    positive_value: int
    cluster_column: str
    min_value: Number
    max_value: Number

    metric_dependencies: ClassVar[Tuple[str, ...]] = (GroupMeanRatio.metric_name,)
    success_keys: ClassVar[Tuple[str, ...]] = ("column", "group_column", "positive_value", "cluster_column",
                                               "min_value", "max_value")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        m = metrics[GroupMeanRatio.metric_name]
        kw = self.configuration.kwargs
        return {"success": _finite_within(m["ratio"], kw["min_value"], kw["max_value"]),
                "result": {"observed_value": m}}

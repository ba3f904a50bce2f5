"""What the compare stage writes for a reviewer: DVC plot tables and the headline ``metrics/summary.json``."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from darkhalo.eval.compare import BIN_FAMILIES


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

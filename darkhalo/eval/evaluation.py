"""Evaluating one generation's model on the frozen benchmark.

``score_benchmark`` streams the benchmark parts through the one inference path
(darkhalo/ml/inference.py) and returns a per-row scores table: the plain score,
and for injections the diagnostics -- the score with the injected arc removed
(positive minus its noiseless arc redrawn from the row's columns, gate 1.7) and
the scores with the centre refilled from the outer annulus for mask radii in
units of theta_E and in pixels, on positives and on controls.

Arc suppression (gate 1.7) removes the injected light *outside* the core
(r >= ``core_radius_pix``), redrawn noiseless from the row's columns, and
keeps what the injection added to the core: a model that reads the arcs falls
to control level, one that reads core brightness does not (docs/domain.md, "What went wrong before" 1).
The gate takes the positives the model detects (score >= threshold) whose arc
light left in the core is below detection (matched-filter S/N ``arc_snr_core``
< ``gate17_max_core_arc_snr``, 5 sigma), and asks what fraction is still
detected with the arc removed; for a model that reads arcs that is about the
false-positive rate.  (A rule on the arc's flux fraction outside the core let a
bright arc keep S/N 20+ in the core, which an arc-reading model rightly still
detects: docs/domain.md, gate 1.7.)  ``summarise``
turns the table into the metrics of docs/domain.md ("Evaluation conventions") with intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from darkhalo.core import metrics as M
from darkhalo.io.dataset import iter_chunks, stamps_of
from darkhalo.ml.inference import Scorer
from darkhalo.sim.injection import arc_snr, good_pixels, render_columns
from darkhalo.physics.lensing import RenderSettings
from darkhalo.physics.normalize import arc_snr_survival, core_mask, outer_mask, radius_map_pix
from darkhalo.core.params import FRACTION, INCREASING, NON_NEGATIVE, POSITIVE, build, section
from darkhalo.core.rng import keyed_rng, parent_sample_mask
from darkhalo.eval.judgement import gate17_resolved
from darkhalo.eval.selection import SelectionGrid, observing_columns
from darkhalo.core.stats import rate_with_interval
from darkhalo.core.units import PIXEL_SCALE_ARCSEC


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate:`` params (same for every generation)."""

    operating_fpr: float = 0.01          # threshold set on the generation's own val controls
    prevalence: float = 0.001            # lens prevalence for the implied purity (gate 1.3)
    theta_e_edges: tuple = (0.3, 0.6, 0.9, 1.2, 1.6, 2.0, 2.5, 3.0)
    arc_snr_edges: tuple = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 35.0, 60.0, 100.0)
    src_mag_edges: tuple = (20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0)
    calibration_bins: int = 10
    mask_radii_theta_e: tuple = (0.5, 1.0, 1.5)
    mask_radii_pix: tuple = (8.0, 10.0, 12.0)
    gate13_max_fraction_above: float = 0.02   # test controls above the operating threshold
    gate17_max_retained_fraction: float = 0.1  # detected positives still detected with the arc removed
    gate17_max_core_arc_snr: float = 5.0       # 1.7 judges positives whose arc light left in the core is below this S/N
    gates_blocking: bool = False
    batch_size: int = 256
    diagnostic_max_rows: int = 1200            # centre-masked diagnostic: about this many benchmark rows (whole pairs)
    min_benchmark_negatives: int = 5000        # FPR 1e-3 needs >= 5 expected false positives
    selection_theta_e_edges: tuple = (0.3, 0.8, 1.3, 2.0, 3.0)     # selection-function grid (darkhalo/eval/selection.py)
    selection_psf_fwhm_r_edges: tuple = (0.8, 1.13, 1.29, 2.2)      # arcsec: DR10-like terciles
    selection_depth_r_mag_edges: tuple = (23.3, 24.18, 24.62, 26.0)  # AB mag, r 5-sigma point source: terciles
    selection_min_count: int = 20              # a cell with fewer injections is flagged "too few"

    @property
    def selection_grid(self) -> SelectionGrid:
        return SelectionGrid(self.selection_theta_e_edges, self.selection_psf_fwhm_r_edges,
                             self.selection_depth_r_mag_edges, self.selection_min_count, self.calibration_bins)


EVALUATE_RULES = {"operating_fpr": FRACTION, "prevalence": FRACTION, "calibration_bins": POSITIVE,
                  "gate13_max_fraction_above": FRACTION, "gate17_max_retained_fraction": FRACTION,
                  "gate17_max_core_arc_snr": POSITIVE, "batch_size": POSITIVE, "diagnostic_max_rows": POSITIVE,
                  "min_benchmark_negatives": NON_NEGATIVE,
                  "theta_e_edges": INCREASING, "arc_snr_edges": INCREASING, "src_mag_edges": INCREASING,
                  "selection_theta_e_edges": INCREASING, "selection_psf_fwhm_r_edges": INCREASING,
                  "selection_depth_r_mag_edges": INCREASING, "selection_min_count": POSITIVE}


def evaluate_config(params: dict, path: str) -> EvaluateConfig:
    values = dict(section(params, "evaluate", path))
    for key in ("theta_e_edges", "arc_snr_edges", "src_mag_edges", "mask_radii_theta_e", "mask_radii_pix",
                "selection_theta_e_edges", "selection_psf_fwhm_r_edges", "selection_depth_r_mag_edges"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    return build(EvaluateConfig, values, "evaluate", path, EVALUATE_RULES)


def refill_centre(images: np.ndarray, radius_pix: np.ndarray, seed: int, keys: np.ndarray,
                  outer_radius_pix: float = 16.0) -> np.ndarray:
    """Copy of (N, 3, S, S) stamps with pixels inside ``radius_pix`` replaced by random outer-annulus pixels.

    Each stamp's fill comes from its own stream (seed, 'centre-mask', key), so
    the same row gets the same fill for every generation.
    """
    out = images.copy()
    size = images.shape[-1]
    r = radius_map_pix(size)
    outer = outer_mask(size, outer_radius_pix)
    for i in range(len(images)):
        inside = r < radius_pix[i]
        n_in = int(inside.sum())
        if n_in == 0:
            continue
        rng = keyed_rng(seed, "centre-mask", int(keys[i]))
        for band in range(images.shape[1]):
            pool = images[i, band][outer]
            out[i, band][inside] = pool[rng.integers(0, len(pool), n_in)]
    return out


GATE17_CORE_SNR_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 1e6)  # arc S/N left in the core, gate 1.7 table


INJECTION_COLUMNS = ("task_id", "parent_id", "is_control", "healpix_pixel", "theta_e_arcsec", "arc_snr", "src_mag_r")


def _metadata(table: pa.Table, columns) -> np.ndarray:
    if not columns:
        return np.zeros((table.num_rows, 0))
    return np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], 1)


def _usable(stamps) -> np.ndarray:
    return np.isfinite(stamps.image).all(axis=(1, 2, 3)) & stamps.present.all(axis=1)


def score_injections(scorer: Scorer, uri: str, config: EvaluateConfig, seed: int, render: RenderSettings,
                     core_radius_pix: float, skipped: dict, progress=None, n_rows: int = 0) -> pa.Table:
    """Scores and diagnostic scores of benchmark positives and controls.

    The centre-masked scores are computed for a deterministic sample of about
    ``diagnostic_max_rows`` of the ``n_rows`` rows (whole pairs, by parent_id); NaN elsewhere.
    """
    out = []
    for chunk in iter_chunks(uri):
        table, stamps = chunk.table, stamps_of(chunk, render.stamp_size)
        ok = _usable(stamps)
        skipped["injections: non-finite pixels or missing band"] = \
            skipped.get("injections: non-finite pixels or missing band", 0) + int((~ok).sum())
        if not ok.any():
            continue
        table = table.filter(pa.array(ok))
        images = stamps.image[ok]
        meta = _metadata(table, scorer.metadata_columns)
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in INJECTION_COLUMNS}
        positive = cols["is_control"] == 0
        row = {c: cols[c] for c in INJECTION_COLUMNS}
        row.update(observing_columns(table))
        row["part"] = np.full(len(images), "injection")
        row["label"] = positive.astype(np.int8)
        row["score"] = scorer.score(images, meta, config.batch_size)
        # gate 1.7: positives with their noiseless arc (redrawn from the row's columns) removed outside the core
        suppressed = np.full(len(images), np.nan)
        snr_core = np.full(len(images), np.nan)
        survival = np.full(len(images), np.nan)
        diag = parent_sample_mask(cols["parent_id"], n_rows or len(images), config.diagnostic_max_rows, seed)
        if positive.any():
            pos_table = table.filter(pa.array(positive))
            arc_cols = {c: _column_values(pos_table, c) for c in pos_table.column_names if c.startswith(
                ("src_", "lens_", "psf_fwhm_used_")) or c in ("theta_e_arcsec", "shear", "shear_phi_rad")}
            arcs, _ = render_columns(arc_cols, render)
            invvar = stamps.invvar[ok][positive]
            core = core_mask(render.stamp_size, core_radius_pix)
            cleaned = images[positive] - np.where((invvar > 0) & ~core, arcs, 0.0).astype(np.float32)
            suppressed[positive] = scorer.score(cleaned, meta[positive], config.batch_size)
            # how much of each arc the model input keeps (residual input, crop), on the diagnostic sample
            pos_diag = diag[positive]
            if pos_diag.any():
                survival[np.flatnonzero(positive)[pos_diag]] = arc_snr_survival(
                    images[positive][pos_diag] - arcs[pos_diag], arcs[pos_diag], scorer.normalization)
            snr_core[positive] = arc_snr(np.where(core, arcs, 0.0), invvar, good_pixels(stamps)[ok][positive])
        row["score_arc_suppressed"] = suppressed
        row["arc_snr_core"] = snr_core
        row["arc_snr_survival"] = survival
        # centre-masked diagnostic: theta_E-relative radii need theta_E; controls borrow their positive's
        theta = _paired_theta_e(cols)
        radii = {f"score_mask_{f:g}theta_e": f * theta / PIXEL_SCALE_ARCSEC for f in config.mask_radii_theta_e}
        radii.update({f"score_mask_{r:g}pix": np.full(len(images), r) for r in config.mask_radii_pix})
        for name, radius in radii.items():
            row[name] = np.full(len(images), np.nan)
            if diag.any():
                row[name][diag] = scorer.score(refill_centre(images[diag], radius[diag], seed, cols["task_id"][diag]),
                                               meta[diag], config.batch_size)
        out.append(pa.table(row))
        if progress is not None:
            progress(len(images))
    return pa.concat_tables(out) if out else pa.table({})


def _column_values(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        return np.array(column.to_pylist(), dtype=np.float64).reshape(table.num_rows, -1)
    return column.to_numpy(zero_copy_only=False)


def _paired_theta_e(cols: dict) -> np.ndarray:
    """theta_E per row; a control takes that of the positive sharing its parent (rows come in pairs)."""
    theta = np.asarray(cols["theta_e_arcsec"], dtype=np.float64)
    by_parent = {p: t for p, t, c in zip(cols["parent_id"], theta, cols["is_control"]) if c == 0}
    return np.array([t if c == 0 else by_parent.get(p, np.nan)
                     for p, t, c in zip(cols["parent_id"], theta, cols["is_control"])])


def score_negatives(scorer: Scorer, uri: str, part: str, group_column: str, config: EvaluateConfig,
                    skipped: dict, label: int = 0) -> pa.Table:
    """Scores of hard negatives (label 0, grouped by class) or anchors (label 1, grouped by set/tier)."""
    out = []
    for chunk in iter_chunks(uri):
        table, stamps = chunk.table, stamps_of(chunk, 64)
        ok = _usable(stamps)
        skipped[f"{part}: non-finite pixels or missing band"] = \
            skipped.get(f"{part}: non-finite pixels or missing band", 0) + int((~ok).sum())
        if not ok.any():
            continue
        table = table.filter(pa.array(ok))
        scores = scorer.score(stamps.image[ok], _metadata(table, scorer.metadata_columns), config.batch_size)
        out.append(pa.table({"part": np.full(len(scores), part), "label": np.full(len(scores), label, np.int8),
                             "parent_id": table.column("parent_id").to_numpy(),
                             "group": table.column(group_column).to_numpy(zero_copy_only=False).astype(str),
                             "score": scores, **observing_columns(table)}))
    return pa.concat_tables(out) if out else pa.table({})


def model_gates(scores: pa.Table, threshold: float, config: EvaluateConfig) -> list[dict]:
    """Gates 1.3 and 1.7, validated by the Great Expectations suite ``expectations/model_gates.json``.

    The suite's expectations read per-row outcome columns built here from the
    scores table (1 / 0 where the row counts, NaN elsewhere), so the rates are
    the columns' means; tolerances are the ``evaluate:`` params.  A gate with no
    row to judge (no detected positive for 1.7) is skipped with that reason.
    """
    import pandas as pd

    from darkhalo.gates.suites import MODEL_SUITE, load_suite_docs
    from darkhalo.gates.validate import TableSpec, run_suites

    col = {name: scores.column(name).to_numpy(zero_copy_only=False) for name in
           ("part", "label", "score", "score_arc_suppressed", "arc_snr_core")}
    inj = col["part"] == "injection"
    ctrl = inj & (col["label"] == 0)
    detected = (inj & (col["label"] == 1) & gate17_resolved(col["arc_snr_core"], config.gate17_max_core_arc_snr)
                & (col["score"] >= threshold))
    frame = pd.DataFrame({
        "control_above_threshold": np.where(ctrl, (col["score"] >= threshold).astype(float), np.nan),
        "detected_retained": np.where(detected, (col["score_arc_suppressed"] >= threshold).astype(float), np.nan)})
    parameters = {"gate13_max_fraction_above": config.gate13_max_fraction_above,
                  "gate17_max_retained_fraction": config.gate17_max_retained_fraction}
    results = run_suites(load_suite_docs(names=(MODEL_SUITE,)), {"model_scores": TableSpec.from_frame(frame)},
                         parameters, table_errors={}, unmet={}, skip_patterns=[] if detected.any() else ["1.7:*"])
    entries = []
    for r in results:
        tolerance = r.kwargs.get("max_value")
        entries.append({"gate": r.gate, "name": r.title, "column": r.kwargs.get("column"),
                        "statistic": "mean (rate)", "value": (r.observed or {}).get("observed_value"),
                        "tolerance": f"<= {tolerance}", "verdict": r.verdict, "passed": r.verdict != "fail",
                        "expectation": r.kind, "suite": f"expectations/{MODEL_SUITE}.json",
                        **({"reason": r.reason} if r.reason else {})})
    return entries


def summarise(scores: pa.Table, threshold: float, config: EvaluateConfig) -> dict:
    """Headline metrics, completeness, per-group rates, calibration and model-gate numbers."""
    col = {name: scores.column(name).to_numpy(zero_copy_only=False) for name in scores.column_names}
    inj = col["part"] == "injection"
    pos = inj & (col["label"] == 1)
    ctrl = inj & (col["label"] == 0)
    hard = col["part"] == "hard_negative"
    neg = ctrl | hard
    labels_all = col["label"][pos | neg]
    s_all = col["score"][pos | neg]
    labels_inj = col["label"][inj]
    s_inj = col["score"][inj]
    selected = col["score"] >= threshold
    out = {
        "operating_threshold": threshold,
        "rows": {"positives": int(pos.sum()), "controls": int(ctrl.sum()), "hard_negatives": int(hard.sum()),
                 "anchors": int((col["part"] == "anchor").sum())},
        "roc": {"auc": M.roc_auc(labels_all, s_all), "auc_vs_controls": M.roc_auc(labels_inj, s_inj),
                "tpr_at_fpr_1e-2": M.tpr_at_fpr(labels_all, s_all, 1e-2),
                "tpr_at_fpr_1e-3": M.tpr_at_fpr(labels_all, s_all, 1e-3),
                "tpr0": M.tpr0(labels_all, s_all), "tpr10": M.tpr10(labels_all, s_all)},
        "completeness_at_threshold": rate_with_interval(int(selected[pos].sum()), int(pos.sum())),
        "completeness_vs_theta_e": M.binned_completeness(selected[pos], col["theta_e_arcsec"][pos],
                                                         config.theta_e_edges),
        "completeness_vs_arc_snr": M.binned_completeness(selected[pos], col["arc_snr"][pos], config.arc_snr_edges),
        "completeness_vs_src_mag_r": M.binned_completeness(selected[pos], col["src_mag_r"][pos],
                                                           config.src_mag_edges),
        "calibration": M.reliability_curve(labels_inj, np.clip(s_inj, 0, 1), config.calibration_bins),
        "gate_1_3_null_injection": M.null_injection(col["score"][ctrl], threshold, int(selected[pos].sum()),
                                                    int(pos.sum()), config.prevalence),
    }
    if hard.any():
        out["hard_negative_fpr_by_class"] = M.rate_by_group(selected[hard], col["group"][hard])
        out["hard_negative_fpr"] = rate_with_interval(int(selected[hard].sum()), int(hard.sum()))
    anchors = col["part"] == "anchor"
    if anchors.any():
        out["anchor_recall_by_group"] = M.rate_by_group(selected[anchors], col["group"][anchors])
    resolved = pos & gate17_resolved(col["arc_snr_core"], config.gate17_max_core_arc_snr)
    detected = resolved & selected
    supp = col["score_arc_suppressed"]
    ctrl_scores = col["score"][ctrl]
    out["gate_1_7_arc_suppressed"] = {
        "rule": "positives detected at the operating threshold whose arc light left in the core has "
                "matched-filter S/N < max_core_arc_snr",
        "max_core_arc_snr": config.gate17_max_core_arc_snr,
        "positives_resolved": int(resolved.sum()), "positives_detected": int(detected.sum()),
        "retained_fraction": rate_with_interval(int((supp[detected] >= threshold).sum()), int(detected.sum())),
        "mean_score_detected": float(np.mean(col["score"][detected])) if detected.any() else float("nan"),
        "mean_score_detected_arc_suppressed": float(np.mean(supp[detected])) if detected.any() else float("nan"),
        "mean_score_resolved_arc_suppressed": float(np.mean(supp[resolved])) if resolved.any() else float("nan"),
        "mean_score_controls": float(np.mean(ctrl_scores)),
        # every detected positive, by the S/N of the arc light the suppression leaves in the core: an
        # arc-reading model retains about its FPR where that S/N is low, a core-reading one does not
        "retained_vs_arc_snr_core": M.binned_completeness(
            supp[pos & selected] >= threshold, col["arc_snr_core"][pos & selected], GATE17_CORE_SNR_EDGES),
        "controls_above_threshold": rate_with_interval(int((ctrl_scores >= threshold).sum()), len(ctrl_scores)),
    }
    masks = {}
    for name in scores.column_names:
        if name.startswith("score_mask_"):
            sampled = np.isfinite(col[name])         # the diagnostic's sample (diagnostic_max_rows)
            mpos, mctrl = pos & sampled, ctrl & sampled
            gap = float(np.mean(col["score"][mpos]) - np.mean(col["score"][mctrl]))
            masked_gap = float(np.mean(col[name][mpos]) - np.mean(col[name][mctrl]))
            masks[name.removeprefix("score_mask_")] = {
                "n_positives": int(mpos.sum()), "n_controls": int(mctrl.sum()),
                # positive-minus-control mean score with the mask / without: ~1 when the model reads
                # light outside the mask, ~0 when everything it reads is inside
                "separation_retained": masked_gap / gap if gap else float("nan"),
                "positives_mean_score": float(np.mean(col[name][mpos])),
                "positives_mean_drop": float(np.mean(col["score"][mpos] - col[name][mpos])),
                "controls_mean_score": float(np.mean(col[name][mctrl])),
                "controls_mean_drop": float(np.mean(col["score"][mctrl] - col[name][mctrl])),
                "positives_recall_at_threshold": rate_with_interval(int((col[name][mpos] >= threshold).sum()),
                                                                    int(mpos.sum())),
                "controls_fpr_at_threshold": rate_with_interval(int((col[name][mctrl] >= threshold).sum()),
                                                                int(mctrl.sum())),
            }
    out["centre_masked"] = masks
    if "arc_snr_survival" in col:
        out["arc_snr_survival_vs_theta_e"] = survival_by_bin(col["arc_snr_survival"][pos], col["theta_e_arcsec"][pos],
                                                             config.theta_e_edges)
    return out


def survival_by_bin(survival: np.ndarray, theta_e_arcsec: np.ndarray, edges: tuple) -> dict:
    """Median and 16/84th percentiles of the arc-S/N survival fraction per theta_E bin (measured rows only)."""
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (theta_e_arcsec >= lo) & (theta_e_arcsec < hi) & np.isfinite(survival)
        values = survival[sel]
        q = np.percentile(values, [16, 50, 84]) if values.size else [np.nan] * 3
        bins.append({"lo": lo, "hi": hi, "centre": 0.5 * (lo + hi), "n": int(values.size),
                     "median": float(q[1]), "p16": float(q[0]), "p84": float(q[2])})
    return {"definition": "matched-filter arc S/N in the model input / in the outer-normalised full stamp",
            "bins": bins}


def score_split(scorer: Scorer, uri: str, split: str, config: EvaluateConfig, skipped: dict):
    """(labels, scores) of one split of a generation's injection dataset (unusable rows counted)."""
    import pyarrow.dataset as ds

    labels, scores = [], []
    for chunk in iter_chunks(uri, filter=ds.field("region_split") == split):
        stamps = stamps_of(chunk, 64)
        ok = _usable(stamps)
        skipped[f"{split} split: non-finite pixels or missing band"] = \
            skipped.get(f"{split} split: non-finite pixels or missing band", 0) + int((~ok).sum())
        table = chunk.table.filter(pa.array(ok))
        labels.append(1 - table.column("is_control").to_numpy())
        scores.append(scorer.score(stamps.image[ok], _metadata(table, scorer.metadata_columns), config.batch_size))
    return np.concatenate(labels), np.concatenate(scores)


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 400) -> pa.Table:
    """ROC curve thinned to at most ``max_points`` points (for DVC plots)."""
    curve = M.roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(curve.fpr) - 1, min(max_points, len(curve.fpr))).astype(int))
    return pa.table({"fpr": curve.fpr[keep], "tpr": curve.tpr[keep]})

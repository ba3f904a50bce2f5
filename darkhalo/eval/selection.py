"""The selection function: a lens finder's completeness on a grid of lens and observing conditions.

On the frozen benchmark's injected positives, completeness (score at or above the
generation's operating threshold) per cell of theta_E (arcsec) x r-band PSF FWHM
(``psfsize_r``, arcsec) x r-band 5-sigma point-source depth (AB mag, from ``psfdepth_r``),
with Wilson intervals; a cell holding fewer than ``min_count`` injections is flagged
``too few`` (its rate is still written, its interval says how little it means).
Two marginal grids (theta_E x PSF, theta_E x depth) are what the heatmaps show.

Observing-condition strata (the same PSF and depth edges) also carry the control and
hard-negative false-positive rates and the calibration error (ECE) of each stratum, and
the false-positive rates are split by the Tractor type of the host (``lrg_type``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from darkhalo.core import metrics as M
from darkhalo.core.stats import rate_with_interval
from darkhalo.core.units import depth_mag_from_psfdepth

# columns of the scores table the selection function reads (besides part, label, score, theta_e_arcsec)
OBSERVING_COLUMNS = ("psfsize_r", "psfdepth_r", "lrg_type")


def observing_columns(table: pa.Table) -> dict:
    """The OBSERVING_COLUMNS a benchmark part has (real anchors may lack them), as numpy arrays."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in OBSERVING_COLUMNS if c in table.column_names}


@dataclass(frozen=True)
class SelectionGrid:
    """Cell edges of the selection function and the minimum injections per reported cell."""

    theta_e_edges: tuple
    psf_fwhm_r_edges: tuple
    depth_r_mag_edges: tuple
    min_count: int
    calibration_bins: int = 10

    def edges(self, axis: str) -> np.ndarray:
        return np.asarray({"theta_e": self.theta_e_edges, "psf_fwhm_r": self.psf_fwhm_r_edges,
                           "depth_r": self.depth_r_mag_edges}[axis], dtype=np.float64)


def condition_values(columns: dict) -> dict:
    """Per-row values of the three grid axes (theta_E arcsec, r PSF FWHM arcsec, r depth mag; NaN if absent)."""
    n = len(columns["part"])
    missing = np.full(n, np.nan)
    psfdepth = np.asarray(columns.get("psfdepth_r", missing), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(psfdepth > 0, depth_mag_from_psfdepth(np.where(psfdepth > 0, psfdepth, 1.0)), np.nan)
    return {"theta_e": np.asarray(columns.get("theta_e_arcsec", missing), dtype=np.float64),
            "psf_fwhm_r": np.asarray(columns.get("psfsize_r", missing), dtype=np.float64), "depth_r": depth}


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index ([e_i, e_i+1), last bin closed) or -1 for NaN / outside."""
    inside = np.isfinite(values) & (values >= edges[0]) & (values <= edges[-1])
    idx = np.clip(np.searchsorted(edges, np.nan_to_num(values), side="right") - 1, 0, edges.size - 2)
    return np.where(inside, idx, -1)


def completeness_grid(selected: np.ndarray, values: dict, grid: SelectionGrid, axes: tuple[str, ...]) -> pa.Table:
    """One row per cell of ``axes``: edges, n, k, completeness, Wilson 95% lo/hi, status."""
    bins = {a: _bin(values[a], grid.edges(a)) for a in axes}
    usable = np.logical_and.reduce([bins[a] >= 0 for a in axes])
    shape = tuple(grid.edges(a).size - 1 for a in axes)
    rows = {f"{a}_{side}": [] for a in axes for side in ("lo", "hi")}
    rows.update(n=[], k=[], completeness=[], lo=[], hi=[], status=[])
    for cell in np.ndindex(*shape):
        in_cell = usable & np.logical_and.reduce([bins[a] == i for a, i in zip(axes, cell)])
        n, k = int(in_cell.sum()), int(selected[in_cell].sum())
        rate = rate_with_interval(k, n)
        for a, i in zip(axes, cell):
            rows[f"{a}_lo"].append(float(grid.edges(a)[i]))
            rows[f"{a}_hi"].append(float(grid.edges(a)[i + 1]))
        rows["n"].append(n)
        rows["k"].append(k)
        rows["completeness"].append(rate["rate"])
        rows["lo"].append(rate["lo"])
        rows["hi"].append(rate["hi"])
        rows["status"].append("ok" if n >= grid.min_count else f"too few (n < {grid.min_count})")
    return pa.table(rows)


def _strata(columns: dict, values: dict, selected: np.ndarray, grid: SelectionGrid, axis: str) -> list[dict]:
    """Per bin of ``axis``: completeness, control and hard-negative FPR (Wilson), ECE of injections."""
    part, label, score = columns["part"], np.asarray(columns["label"]), np.asarray(columns["score"], np.float64)
    inj = part == "injection"
    b = _bin(values[axis], grid.edges(axis))
    out = []
    for i in range(grid.edges(axis).size - 1):
        here = b == i
        pos, ctrl, hard = here & inj & (label == 1), here & inj & (label == 0), here & (part == "hard_negative")
        both = here & inj
        out.append({"lo": float(grid.edges(axis)[i]), "hi": float(grid.edges(axis)[i + 1]),
                    "completeness": rate_with_interval(int(selected[pos].sum()), int(pos.sum())),
                    "control_fpr": rate_with_interval(int(selected[ctrl].sum()), int(ctrl.sum())),
                    "hard_negative_fpr": rate_with_interval(int(selected[hard].sum()), int(hard.sum())),
                    "ece": (M.expected_calibration_error(label[both], np.clip(score[both], 0, 1),
                                                         grid.calibration_bins)
                            if len(np.unique(label[both])) == 2 else float("nan"))})
    return out


def selection_function(columns: dict, threshold: float, grid: SelectionGrid) -> tuple[dict, dict[str, pa.Table]]:
    """(summary for evaluate.json, tables) of a scores table's columns at the operating ``threshold``.

    Tables: ``selection_function`` (theta_E x PSF x depth), ``selection_theta_e_psf`` and
    ``selection_theta_e_depth`` (the marginal grids the heatmaps draw).
    """
    part, label = columns["part"], np.asarray(columns["label"])
    selected = np.asarray(columns["score"], dtype=np.float64) >= threshold
    pos = (part == "injection") & (label == 1)
    values = condition_values(columns)
    pos_values = {a: v[pos] for a, v in values.items()}
    tables = {name: completeness_grid(selected[pos], pos_values, grid, axes)
              for name, axes in (("selection_function", ("theta_e", "psf_fwhm_r", "depth_r")),
                                 ("selection_theta_e_psf", ("theta_e", "psf_fwhm_r")),
                                 ("selection_theta_e_depth", ("theta_e", "depth_r")))}
    cube = tables["selection_function"]
    n = np.asarray(cube.column("n").to_pylist())
    summary = {
        "grid": {"theta_e_edges": list(grid.theta_e_edges), "psf_fwhm_r_edges": list(grid.psf_fwhm_r_edges),
                 "depth_r_mag_edges": list(grid.depth_r_mag_edges), "min_count": grid.min_count},
        "n_cells": int(n.size), "n_cells_too_few": int((n < grid.min_count).sum()),
        "positives_outside_grid": int(pos.sum() - n.sum()),
        "strata": {"psf_fwhm_r": _strata(columns, values, selected, grid, "psf_fwhm_r"),
                   "depth_r": _strata(columns, values, selected, grid, "depth_r")},
    }
    if "lrg_type" in columns:
        hosts = np.asarray(columns["lrg_type"]).astype(str)
        ctrl = (part == "injection") & (label == 0)
        hard = part == "hard_negative"
        summary["control_fpr_by_host_type"] = M.rate_by_group(selected[ctrl], hosts[ctrl])
        if hard.any():
            summary["hard_negative_fpr_by_host_type"] = M.rate_by_group(selected[hard], hosts[hard])
    return summary, tables

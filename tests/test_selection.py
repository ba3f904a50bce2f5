"""The selection function: completeness per theta_E x PSF x depth cell, strata and host-type FPRs."""
from __future__ import annotations

import numpy as np
import pytest

from darkhalo.eval.selection import SelectionGrid, selection_function
from darkhalo.core.units import psfdepth_from_depth_mag

GRID = SelectionGrid((0.3, 1.0, 3.0), (0.8, 1.2, 2.2), (23.0, 24.5, 26.0), min_count=20)


def scores_columns(n_pos: int = 400, seed: int = 0) -> dict:
    """Positives whose detection depends on PSF only (sharp: 80%, blurred: 20%), controls, hard negatives."""
    rng = np.random.default_rng(seed)
    psf = rng.uniform(0.8, 2.2, n_pos)
    theta = rng.uniform(0.3, 3.0, n_pos)
    depth = rng.uniform(23.0, 26.0, n_pos)
    detected = rng.random(n_pos) < np.where(psf < 1.2, 0.8, 0.2)
    n_neg = 300
    part = np.array(["injection"] * (2 * n_pos) + ["hard_negative"] * n_neg, dtype=object)
    label = np.r_[np.ones(n_pos), np.zeros(n_pos), np.zeros(n_neg)].astype(np.int8)
    score = np.r_[np.where(detected, 0.9, 0.1), np.full(n_pos, 0.1), np.where(np.arange(n_neg) < 30, 0.9, 0.1)]
    return {"part": part, "label": label, "score": score,
            "theta_e_arcsec": np.r_[theta, np.full(n_pos, np.nan), np.full(n_neg, np.nan)],
            "psfsize_r": np.r_[psf, psf, rng.uniform(0.8, 2.2, n_neg)],
            "psfdepth_r": psfdepth_from_depth_mag(np.r_[depth, depth, rng.uniform(23.0, 26.0, n_neg)]),
            "lrg_type": np.array((["DEV", "SER"] * (n_pos + n_neg // 2))[:2 * n_pos + n_neg], dtype=object)}


def test_cells_recover_the_planted_psf_dependence_with_intervals():
    summary, tables = selection_function(scores_columns(), 0.5, GRID)
    cube = tables["selection_function"].to_pydict()
    assert summary["n_cells"] == 8 and len(cube["n"]) == 8 and sum(cube["n"]) == 400
    for psf_lo, rate, lo, hi in zip(cube["psf_fwhm_r_lo"], cube["completeness"], cube["lo"], cube["hi"]):
        assert lo <= rate <= hi
        assert lo < (0.8 if psf_lo == 0.8 else 0.2) < hi      # the planted rate lies inside the Wilson interval
    marginal = tables["selection_theta_e_psf"].to_pydict()
    assert sum(marginal["n"]) == 400 and len(marginal["n"]) == 4
    strata = summary["strata"]["psf_fwhm_r"]
    assert strata[0]["completeness"]["rate"] > 0.7 > 0.3 > strata[1]["completeness"]["rate"]
    assert strata[0]["control_fpr"]["k"] == 0 and strata[0]["hard_negative_fpr"]["n"] > 0
    assert np.isfinite(strata[0]["ece"])
    assert summary["hard_negative_fpr_by_host_type"]["DEV"]["n"] + \
        summary["hard_negative_fpr_by_host_type"]["SER"]["n"] == 300


def test_sparse_cells_say_so():
    summary, tables = selection_function(scores_columns(n_pos=60), 0.5, GRID)
    status = tables["selection_function"].column("status").to_pylist()
    assert summary["n_cells_too_few"] == sum(s != "ok" for s in status) > 0
    assert all(s == "too few (n < 20)" for s, n in zip(status, tables["selection_function"].column("n").to_pylist())
               if n < 20)


def test_rows_without_observing_columns_are_counted_outside_the_grid():
    columns = scores_columns()
    columns["psfsize_r"] = columns["psfsize_r"].copy()
    columns["psfsize_r"][:10] = np.nan
    summary, _ = selection_function(columns, 0.5, GRID)
    assert summary["positives_outside_grid"] == 10


@pytest.mark.parametrize("key", ["selection_theta_e_edges", "selection_psf_fwhm_r_edges"])
def test_descending_grid_edges_are_refused(key):
    from darkhalo.eval.evaluation import evaluate_config
    from darkhalo.core.params import ParamError

    with pytest.raises(ParamError, match=key):
        evaluate_config({"evaluate": {key: [2.0, 1.0]}}, "params.yaml")

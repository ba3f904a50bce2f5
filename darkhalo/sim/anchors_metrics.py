"""Metrics of the written anchors (``metrics/anchors.json``): counts per set and tier, S/N, drops, selection."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from darkhalo.core.stats import percentiles, rate_with_interval
from darkhalo.sim.anchors import ANCHOR_PARENT_ID_BASE
from darkhalo.sim.anchors_catalogue import LENSCAT_VERSION
from darkhalo.sim.anchors_config import AnchorsConfig


def summarise_anchors(table: pa.Table, config: AnchorsConfig, selection: dict, failures: list[dict],
                      extra: dict | None = None) -> dict:
    """Metrics of the written anchors: counts per set and tier, visibility S/N, drops with reasons, selection."""
    col = {n: table.column(n).to_numpy(zero_copy_only=False) for n in
           ("anchor_set", "anchor_tier", "anchor_group", "anchor_visibility_snr", "anchor_centre_snr",
            "region_split", "theta_e_arcsec", "src_mag_r", "arc_snr", "magnification", "cutout_ok", "sim_defect",
            "bad_pixel_frac", "anchor_theta_e_arcsec")}
    counts, tier_a, vis, arcs = {}, {}, {}, {}
    for set_name in config.sets:
        sel = col["anchor_set"] == set_name
        n_a = int(np.sum(sel & (col["anchor_tier"] == "A")))
        counts[set_name] = {"A": n_a, "B": int(np.sum(sel & (col["anchor_tier"] == "B"))), "n": int(sel.sum())}
        tier_a[set_name] = rate_with_interval(n_a, int(sel.sum()))
        vis[set_name] = percentiles(col["anchor_visibility_snr"][sel].astype(float))
        if config.mode == "embedded":
            arcs[set_name] = {k: percentiles(col[k][sel].astype(float))
                              for k in ("theta_e_arcsec", "src_mag_r", "arc_snr", "magnification")}
    by_reason: dict = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    groups, group_counts = np.unique(col["anchor_group"].astype(str), return_counts=True)
    splits, split_counts = np.unique(col["region_split"].astype(str), return_counts=True)
    out = {
        "mode": config.mode,
        "n_written": int(table.num_rows),
        "counts": counts,
        "counts_by_group": {str(g): int(c) for g, c in zip(groups, group_counts)},
        "tier_a_fraction": tier_a,
        "tier_snr_threshold": config.tier_snr_threshold,
        "visibility_snr": {**vis, "all": percentiles(col["anchor_visibility_snr"].astype(float))},
        "centre_snr": percentiles(col["anchor_centre_snr"].astype(float)),
        "annulus_theta_e_arcsec": {s: percentiles(col["anchor_theta_e_arcsec"][col["anchor_set"] == s].astype(float))
                                   for s in config.sets},
        "drops": {"centre_policy": config.centre_policy, "max_dropped_fraction": config.max_dropped_fraction,
                  "n_dropped": len(failures), "by_reason": by_reason,
                  "anchors": [{k: f[k] for k in ("name", "anchor_set", "reason", "detail")} for f in failures[:50]]},
        "region_split_information_only": {str(s): int(c) for s, c in zip(splits, split_counts)},
        "stamps": {"cutout_ok_0": int(np.sum(col["cutout_ok"] != 1)),
                   "with_masked_pixels": int(np.sum(col["bad_pixel_frac"].astype(float) > 0)),
                   "sim_defect": {str(d): int(n) for d, n in zip(*np.unique(col["sim_defect"].astype(str),
                                                                           return_counts=True)) if d}},
        "selection": selection,
        "parent_id_base": ANCHOR_PARENT_ID_BASE,
        "lenscat_version": LENSCAT_VERSION,
    }
    if arcs:
        out["simulated_arcs"] = arcs
    out.update(extra or {})
    return out

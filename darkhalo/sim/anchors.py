"""Anchors: the anchor sample of the ``anchors`` stage, from the lenscat sets or a user list.

``select_anchors``: the catalogue sets capped at ``max_per_set`` per set in a
fixed pseudo-random order, or, when ``anchor_list`` is given, the
(position-checked) listed anchors -- with the Einstein radius used for the
measurement annulus (``anchor_theta_e_arcsec``: the list's value, else the set
default).  The other jobs of the anchors stage, one module each:
anchors_config.py (params), anchors_catalogue.py (lenscat, sets),
anchors_positions.py (position check), anchors_checks.py (per-stamp checks,
tiers), anchors_schema.py (output columns, real-mode rows), anchors_metrics.py
(metrics); the embedded pixels are anchor_sim.py's.

parent_id namespace for anchor stamps: the anchor whose lenscat row is k has
``parent_id = ANCHOR_PARENT_ID_BASE + k`` (2 * 2**40), above the hard
negatives' 2**40 + k and the survey's 0..n_parents-1.  Keying by the lenscat
row (not the position in the sample) keeps an anchor's random stream when the
cap, the sets or the list change.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd

from darkhalo.sim import footprint
from darkhalo.sim.anchors_catalogue import read_lenscat, select_catalogue, shown
from darkhalo.sim.anchors_config import AnchorsConfig
from darkhalo.sim.anchors_positions import check_positions, read_anchor_list

ANCHOR_PARENT_ID_BASE = 2 << 40
THETA_E_FROM_LIST, THETA_E_SET_DEFAULT = "anchor_list", "set_default"


def hash_order(names, seed: int, set_name: str) -> np.ndarray:
    """Indices of ``names`` in a fixed pseudo-random order: sha256 of (seed, set, name), so adding or removing
    catalogue rows never reshuffles the others."""
    keys = np.array([hashlib.sha256(f"{seed}:{set_name}:{n}".encode("utf-8")).hexdigest() for n in names])
    return np.argsort(keys, kind="stable")


def cap_per_set(frame: pd.DataFrame, sets, max_per_set: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """At most ``max_per_set`` anchors of each set (0: all), the first ones in ``hash_order``; report per set."""
    parts, report = [], {}
    for set_name in sets:
        sub = frame[frame["anchor_set"] == set_name]
        chosen = sub.iloc[hash_order(sub["name"].tolist(), seed, set_name)]
        if max_per_set > 0:
            chosen = chosen.head(max_per_set)
        parts.append(chosen)
        report[set_name] = {"available": int(len(sub)), "chosen": int(len(chosen))}
    return pd.concat(parts, ignore_index=True), report


def _listed_theta_e(listed: pd.DataFrame, source: str) -> dict:
    """{name: theta_E (arcsec)} of anchor-list rows that give one (blank = none); errors name file, row, column."""
    if "theta_e_arcsec" not in listed.columns:
        return {}
    raw = listed["theta_e_arcsec"].astype(str).str.strip()
    values = pd.to_numeric(raw.where(raw != "", None), errors="coerce").to_numpy(float)
    bad = (raw != "").to_numpy() & ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: row {i} ({shown(listed['name'].iloc[i])}) column 'theta_e_arcsec' = "
                         f"{shown(raw.iloc[i])} is not a positive radius in arcsec "
                         "(leave it blank for the set default)")
    return {str(n): float(v) for n, v in zip(listed["name"], values) if np.isfinite(v)}


def select_anchors(config: AnchorsConfig, seed: int, catalogue: pd.DataFrame | None = None
                   ) -> tuple[pd.DataFrame, dict]:
    """The stage's anchors, one row each, sorted by parent_id, and a selection report.

    Without ``anchor_list``: the catalogue sets in the footprint (``select_catalogue``),
    at most ``max_per_set`` per set in ``hash_order``.  With it: every listed anchor,
    after the position check (``check_positions``: an error listing the worst
    offsets), at its catalogue position, in the first set its lenscat row belongs
    to (an anchor in no set is an error); listed anchors outside the footprint are
    counted and named in the report, not kept; no cap.  Columns: name,
    catalogue_name, ra, dec (the catalogue's, deg), anchor_set, grading,
    lens_type, zlens, anchor_theta_e_arcsec (the radius of the measurement
    annulus: the list's value, else the set default), anchor_theta_e_source,
    ref, lenscat_row, parent_id (= ANCHOR_PARENT_ID_BASE + lenscat_row).
    """
    catalogue = read_lenscat() if catalogue is None else catalogue
    sets = list(config.sets)
    if not config.anchor_list:
        table, sets_report = select_catalogue(config, catalogue)
        frame = table.to_pandas().rename(columns={"theta_e_arcsec": "anchor_theta_e_arcsec"})
        frame["anchor_theta_e_source"] = THETA_E_SET_DEFAULT
        frame, cap = cap_per_set(frame, sets, config.max_per_set, seed)
        report = {"source": "lenscat", "sets": sets_report,
                  "cap": {"max_per_set": config.max_per_set, "order": "sha256(seed:set:name)", "per_set": cap}}
    else:
        source = config.anchor_list
        listed = read_anchor_list(source)
        offsets = check_positions(listed, catalogue, config.position_tolerance_arcsec, source=source)
        everywhere, _ = select_catalogue(replace(config, restrict_to_footprint=False), catalogue)
        members = everywhere.to_pandas().set_index("lenscat_row", drop=False)
        rows = offsets["lenscat_row"].to_numpy(np.int64)
        orphans = [n for n, r in zip(offsets["name"], rows) if r not in members.index]
        if orphans:
            raise ValueError(f"{source}: {len(orphans)} listed anchor(s) belong to no anchor set "
                             f"(anchors.sets): {', '.join(orphans[:20])}")
        twice = offsets[offsets["lenscat_row"].duplicated(keep=False)]
        if len(twice):
            raise ValueError(f"{source}: names {', '.join(twice['name'])} are the same catalogue lens "
                             f"(lenscat row(s) {sorted(set(twice['lenscat_row']))})")
        frame = members.loc[rows].reset_index(drop=True).rename(columns={"theta_e_arcsec": "anchor_theta_e_arcsec"})
        frame["name"] = offsets["name"].astype(str).to_numpy()
        theta = _listed_theta_e(listed, source)
        frame["anchor_theta_e_source"] = [THETA_E_FROM_LIST if n in theta else THETA_E_SET_DEFAULT
                                          for n in frame["name"]]
        frame["anchor_theta_e_arcsec"] = [theta.get(n, t) for n, t in zip(frame["name"],
                                                                         frame["anchor_theta_e_arcsec"])]
        inside = (footprint.in_dr10_footprint(frame["ra"], frame["dec"]) if config.restrict_to_footprint
                  else np.ones(len(frame), bool))
        outside = frame[~inside]
        frame = frame[inside].reset_index(drop=True)
        report = {"source": "anchor_list", "anchor_list": source, "n_listed": int(len(listed)),
                  "position_tolerance_arcsec": config.position_tolerance_arcsec,
                  "position_offset_arcsec_max": float(offsets["offset_arcsec"].max()) if len(offsets) else 0.0,
                  "outside_footprint": {"n": int(len(outside)), "names": outside["name"].tolist()[:50]},
                  "per_set": {s: int((frame["anchor_set"] == s).sum()) for s in sets},
                  "theta_e_from_list": int(sum(n in theta for n in frame["name"])),
                  "cap": {"max_per_set": config.max_per_set, "applied": False}}
    frame["parent_id"] = ANCHOR_PARENT_ID_BASE + frame["lenscat_row"].to_numpy(np.int64)
    frame = frame.sort_values("parent_id", kind="stable").reset_index(drop=True)
    if frame["name"].duplicated().any():
        dup = frame["name"][frame["name"].duplicated()].tolist()
        raise ValueError(f"anchor names appear twice in the sample: {dup[:20]}")
    if not len(frame):
        raise ValueError(f"no anchor selected (report: {report})")
    return frame, report

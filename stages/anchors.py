"""DVC stage `anchors`: known lenses at their catalogue positions, checked, measured and tiered.

Selection (darkhalo/sim/anchors.py): the lenscat sets of ``anchors.sets`` inside the
DR10 footprint, at most ``anchors.max_per_set`` per set in a fixed pseudo-random
order -- or, with ``anchors.anchor_list``, the listed anchors after the position
check (an anchor off its catalogue position by more than
``position_tolerance_arcsec`` is an error listing the worst offsets).

Pixels: ``anchors.mode: embedded`` simulates each anchor at its catalogue
position through the survey machinery with an arc from the injection engine
(darkhalo/sim/anchor_sim.py); ``anchors.mode: cutouts`` fetches Legacy Survey DR10
cutouts (darkhalo/io/cutouts.py; cache ``anchors.cache_dir``).

Checks on every stamp: a galaxy at the centre and the arc-visibility S/N in
the annulus at ``anchor_theta_e_arcsec``; Tier A when S/N >=
``anchors.tier_snr_threshold``.  A failing anchor is an error naming it
(``anchors.centre_policy: fail``) or a counted, listed drop (``drop``, the
default; above ``anchors.max_dropped_fraction`` an error all the same).
Anchors are evaluation-only: all go to the frozen benchmark; their HEALPix
pixel and its ``region_split`` in ``data/split/assignment.parquet``
("unassigned" where the split has none) are recorded for information.

Writes ``data/anchors/part-00000.parquet`` (native layout; survey catalogue
columns, anchor columns incl. ``anchor_tier`` and ``anchor_group`` =
"<set>:tier<A|B>", injection columns), ``metrics/anchors.json`` and
``plots/anchors_gallery.png`` (one row per tier).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from darkhalo.sim.anchors import select_anchors
from darkhalo.sim.anchors_checks import apply_check_policy, measure_anchors
from darkhalo.sim.anchors_config import AnchorsConfig, anchors_config
from darkhalo.sim.anchors_metrics import summarise_anchors
from darkhalo.sim.anchors_schema import anchors_from_cutouts, finish_table, order_columns
from darkhalo.io.dataset import write_parquet
from darkhalo.io.gallery import gallery_png
from darkhalo.core.outputs import atomic_dir, atomic_write_bytes, run_stage, write_json
from darkhalo.core.params import load_params
from darkhalo.sim.split import attach_split, read_split_map
from darkhalo.io.stamps import stamps_from_native
from darkhalo.sim.survey import SurveyConfig, survey_config

ROW_GROUP_ROWS = 64
GALLERY_STRETCH, GALLERY_Q = 0.06, 6.0   # faint arcs: the hard-negative gallery's stretch


def run_embedded(params: dict, path: str, config: SurveyConfig, cfg: AnchorsConfig, anchors: pd.DataFrame):
    import torch

    from darkhalo.sim.anchor_sim import simulate_anchors, simulation_specs
    from darkhalo.sim.injection import engine_settings

    torch.set_num_threads(1)   # same float sums on every machine (byte-identical outputs)
    engine = engine_settings(params, path)
    specs = simulation_specs(params, cfg, path)
    table = simulate_anchors(config, engine, specs, anchors)
    return table, {"simulation": {name: {"priors": spec.priors.summary(), "n_clumps": spec.n_clumps,
                                         "task_seed_stream": f"inject:{spec.name}"} for name, spec in specs.items()},
                   "noise_model": "arc added to the noiseless stamp before the survey's background noise; "
                                  "invvar = the survey's"}


def run_cutouts(cfg: AnchorsConfig, anchors: pd.DataFrame):
    from darkhalo.io.cutouts import CutoutClient

    client = CutoutClient(cfg.cutout_config, cfg.cache_dir)
    targets = list(zip(anchors["name"], anchors["ra"], anchors["dec"]))
    cutouts, failures = client.fetch_many(targets, desc="anchor cutouts")
    fraction = len(failures) / max(len(targets), 1)
    if fraction > cfg.max_failed_fraction:
        lines = "\n".join(f"  {f}" for f in failures[:20])
        raise RuntimeError(f"anchors: {len(failures)} of {len(targets)} cutouts failed ({fraction:.1%} > "
                           f"anchors.max_failed_fraction {cfg.max_failed_fraction:.1%}):\n{lines}")
    by_reason = {}
    for f in failures:
        by_reason[f.reason] = by_reason.get(f.reason, 0) + 1
    table = anchors_from_cutouts(anchors, cutouts, cfg.cutout_config.size_pix)
    return table, {"cutouts": dict(client.stats), "psf_fwhm_assumed_arcsec": cfg.cutout_psf_fwhm_arcsec,
                   "cutout_failures": {"n": len(failures), "by_reason": by_reason,
                                       "first": [str(f) for f in failures[:20]]}}


def gallery_rows(table, per_tier: int) -> list[list[int]]:
    """Row indices shown per tier (A, B): defect-free stamps first, spread evenly over the visibility S/N."""
    tiers = np.asarray(table.column("anchor_tier").to_pylist(), dtype=object)
    snr = table.column("anchor_visibility_snr").to_numpy()
    clean = (table.column("cutout_ok").to_numpy() == 1) & \
        (np.asarray(table.column("sim_defect").to_pylist(), dtype=object) == "")
    out = []
    for name in ("A", "B"):
        idx = np.flatnonzero((tiers == name) & clean)
        if len(idx) < per_tier:
            idx = np.flatnonzero(tiers == name)
        idx = idx[np.argsort(snr[idx], kind="stable")]
        if len(idx) > per_tier:
            idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, per_tier)).astype(int))]
        out.append([int(i) for i in idx])
    return out


def write_gallery(table, cfg: AnchorsConfig, path: str) -> None:
    """grz gallery, one row per tier (A on top), labelled name, set and visibility S/N."""
    per_tier = cfg.gallery_per_tier
    images = stamps_from_native(table).image
    meta = table.select(["name", "anchor_set", "anchor_visibility_snr"]).to_pylist()
    blank = np.zeros_like(images[0])
    tiles, labels = [], []
    for name, idx in zip(("A", "B"), gallery_rows(table, per_tier)):
        for k in range(per_tier):
            if k < len(idx):
                m = meta[idx[k]]
                tiles.append(images[idx[k]])
                labels.append(f"{m['name'][:15]} {m['anchor_set']} S/N {m['anchor_visibility_snr']:.1f}")
            else:
                tiles.append(blank)
                labels.append(f"(no Tier-{name} anchor)" if k == len(idx) else "")
    png = gallery_png(np.stack(tiles), labels, columns=per_tier,
                      title=f"Anchors ({cfg.mode}): Tier A (top, visibility S/N >= {cfg.tier_snr_threshold:g}) "
                            f"and Tier B (bottom); grz", stretch=GALLERY_STRETCH, q=GALLERY_Q)
    atomic_write_bytes(path, png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--assignment", default="data/split/assignment.parquet")
    parser.add_argument("--out", default="data/anchors")
    parser.add_argument("--metrics", default="metrics/anchors.json")
    parser.add_argument("--gallery", default="plots/anchors_gallery.png")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    params = load_params(args.params)
    config = survey_config(params, args.params)
    cfg = anchors_config(params, args.params)
    split_map = read_split_map(args.assignment)
    anchors, selection = select_anchors(cfg, config.seed)
    if cfg.mode == "embedded":
        base, extra = run_embedded(params, args.params, config, cfg, anchors)
    else:
        base, extra = run_cutouts(cfg, anchors)
    measured, failures = measure_anchors(base, stamps_from_native(base), cfg)
    table = apply_check_policy(finish_table(base, measured), failures, cfg.centre_policy, cfg.max_dropped_fraction)
    if table.num_rows == 0:
        raise RuntimeError(f"anchors: every one of {base.num_rows} anchors was dropped (see the reasons above)")
    table = order_columns(attach_split(table, split_map))   # for information: anchors are evaluation-only
    with atomic_dir(args.out) as tmp:
        write_parquet(table, Path(tmp) / "part-00000.parquet", ROW_GROUP_ROWS)
    metrics = summarise_anchors(table, cfg, selection, failures,
                                {**extra, "split_table": args.assignment, "split_nside": split_map.nside})
    write_json(args.metrics, metrics)
    if cfg.gallery_per_tier > 0:
        write_gallery(table, cfg, args.gallery)
    counts = ", ".join(f"{s} {c['n']} (A {c['A']}, B {c['B']})" for s, c in metrics["counts"].items())
    print(f"anchors ({cfg.mode}): wrote {table.num_rows}: {counts}; dropped {len(failures)}; "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run_stage(main)

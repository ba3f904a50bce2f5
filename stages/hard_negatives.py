"""DVC stage `hard_negatives`: lens-like non-lenses, split by the HEALPix assignment.

Embedded mode (default): simulate ``n_per_class`` rings, spirals, mergers and
edge-on disks in survey-like cutouts (darkhalo/sim/hard_negatives.py).  Real mode
(``hard_negatives.mode: galaxy_zoo``): select Galaxy Zoo DECaLS galaxies by
vote fractions (darkhalo/io/galaxy_zoo.py) and fetch their Legacy Survey cutouts
(darkhalo/io/cutouts.py).  Either way each row takes the region_split of its
HEALPix pixel from ``data/split/assignment.parquet``.

Writes ``data/hard_negatives/region_split=<train|val|test>/part-NNNNN.parquet``
(native layout, survey catalogue columns + ``hn_*``), ``metrics/hard_negatives.json``
(counts per class and split, guard-band and unassigned losses, magnitudes,
sizes, arc-visibility S/N) and ``plots/hard_negatives_gallery.png``.
"""
from __future__ import annotations

import argparse

import numpy as np
import pyarrow.dataset as ds

from darkhalo.io import galaxy_zoo
from darkhalo.io.cutouts import CutoutClient
from darkhalo.io.dataset import Chunk, iter_chunks, read_table, stamps_of
from darkhalo.io.gallery import gallery_png
from darkhalo.sim.hard_negatives import (HARD_NEGATIVE_PARENT_ID_BASE, HN_EXTRA_FIELDS, HardNegativesConfig,
                                     check_namespace, hard_negatives_config, hard_negatives_from_cutouts,
                                     merge_counts, simulate_hard_negatives, summarise, write_split_partitions)
from darkhalo.core.outputs import atomic_dir, atomic_write_bytes, run_stage, write_json
from darkhalo.io.parallel import map_shards
from darkhalo.core.params import load_params
from darkhalo.sim.split import SplitMap, attach_split, read_split_map
from darkhalo.sim.survey import CATALOGUE_FIELDS, SurveyConfig, sky_patches, survey_config

CATALOGUE_COLUMNS = [f.name for f in CATALOGUE_FIELDS] + [f.name for f in HN_EXTRA_FIELDS]
GALLERY_STRETCH, GALLERY_Q = 0.06, 6.0   # fainter stretch than the survey gallery: features are faint


def render_shard(config: SurveyConfig, hn: HardNegativesConfig, patches: np.ndarray, split_map: SplitMap,
                 shard: int, n_total: int, out_dir: str) -> dict:
    """Simulate hard negatives of shard ``shard``, attach splits, write partitions; returns counts."""
    first = shard * hn.shard_rows
    indices = np.arange(first, min(first + hn.shard_rows, n_total), dtype=np.int64)
    table = attach_split(simulate_hard_negatives(config, hn, patches, indices), split_map)
    return write_split_partitions(table, out_dir, shard, hn.row_group_rows)


def run_embedded(config: SurveyConfig, hn: HardNegativesConfig, split_map: SplitMap, out: str) -> tuple[dict, dict]:
    n_total = hn.n_per_class * len(hn.classes)
    check_namespace(config.n_parents, n_total)
    patches = sky_patches(config)
    n_shards = -(-n_total // hn.shard_rows)
    with atomic_dir(out) as tmp:
        parts = map_shards(render_shard, [(config, hn, patches, split_map, s, n_total, str(tmp))
                                          for s in range(n_shards)], hn.workers, desc="hard_negatives")
        counts = merge_counts(parts)
        require_rows(counts, split_map)
    return counts, {"mode": "embedded", "n_simulated": n_total}


def require_rows(counts: dict, split_map: SplitMap) -> None:
    """Fail (before the output replaces the old one) when no row landed in train/val/test."""
    if not any(counts.get(s) for s in ("train", "val", "test")):
        raise RuntimeError(f"hard_negatives: no row landed in train/val/test (counts {counts}); "
                           f"check the split table {split_map.source}")


def run_galaxy_zoo(config: SurveyConfig, hn: HardNegativesConfig, split_map: SplitMap, out: str,
                   params_path: str) -> tuple[dict, dict]:
    gz = galaxy_zoo.galaxy_zoo_config(hn.galaxy_zoo, params_path, config.cutout_workers)
    frame = galaxy_zoo.read_catalogue(gz.catalogue)
    rings = galaxy_zoo.read_ring_catalogue(gz.ring_catalogue) if gz.ring_catalogue else None
    selection, report = galaxy_zoo.select(frame, gz, config.seed, rings)
    check_namespace(config.n_parents, selection.num_rows)
    parent_ids = HARD_NEGATIVE_PARENT_ID_BASE + np.arange(selection.num_rows, dtype=np.int64)
    _, split = split_map.lookup(selection.column("ra").to_numpy(), selection.column("dec").to_numpy())
    wanted = [(n, r, d) for n, r, d, s in zip(selection.column("hn_source_id").to_pylist(),
                                              selection.column("ra").to_pylist(), selection.column("dec").to_pylist(),
                                              split) if s in ("train", "val", "test")]
    client = CutoutClient(gz.cutout_config, gz.cache_dir)
    cutouts, failures = client.fetch_many(wanted, desc="galaxy zoo cutouts")
    failed_fraction = len(failures) / max(len(wanted), 1)
    if failed_fraction > gz.max_failed_fraction:
        lines = "\n".join(f"  {f}" for f in failures[:20])
        raise RuntimeError(f"hard_negatives: {len(failures)} of {len(wanted)} cutouts failed "
                           f"({failed_fraction:.1%} > max_failed_fraction {gz.max_failed_fraction:.1%}):\n{lines}")
    size = gz.cutout_config.size_pix
    table = attach_split(hard_negatives_from_cutouts(selection, parent_ids, cutouts, size), split_map)
    with atomic_dir(out) as tmp:
        counts = {}
        for shard, start in enumerate(range(0, max(table.num_rows, 1), hn.shard_rows)):
            counts = merge_counts([counts, write_split_partitions(table.slice(start, hn.shard_rows), tmp, shard,
                                                                  hn.row_group_rows)])
        require_rows(counts, split_map)
    # targets never fetched (guard band / unassigned pixels) are counted too
    classes = selection.column("hn_class").to_pylist()
    for name in ("guard", "unassigned"):
        lost = {}
        for c, s in zip(classes, split):
            if s == name:
                lost[c] = lost.get(c, 0) + 1
        counts[name] = lost
    failed = {}
    for f in failures:
        failed[f.reason] = failed.get(f.reason, 0) + 1
    extra = {"mode": "galaxy_zoo", "selection": report, "cutouts": dict(client.stats),
             "cutout_failures": {"by_reason": failed, "first": [str(f) for f in failures[:20]]}}
    return counts, extra


def write_gallery(out: str, hn: HardNegativesConfig, path: str) -> None:
    """grz gallery: up to ``gallery_per_class`` defect-free rows per class (lowest parent_id first)."""
    columns = ["parent_id", "hn_class", "lrg_mag_r", "hn_feature_mag_r", "hn_feature_radius_arcsec",
               "hn_annulus_snr", "stamp_size"]
    meta = read_table(out, columns=columns + ["sim_defect", "cutout_ok"])
    per_class = {}
    order = np.argsort(meta.column("parent_id").to_numpy(), kind="stable")
    for i in order:
        c = meta.column("hn_class")[int(i)].as_py()
        if meta.column("sim_defect")[int(i)].as_py() or meta.column("cutout_ok")[int(i)].as_py() != 1:
            continue
        if len(per_class.setdefault(c, [])) < hn.gallery_per_class:
            per_class[c].append(int(meta.column("parent_id")[int(i)].as_py()))
    chosen = [pid for c in sorted(per_class) for pid in per_class[c]]
    if not chosen:
        raise RuntimeError(f"{out}: no defect-free hard negative to show in the gallery")
    pixels = [f"{p}_{b}" for p in ("image", "invvar") for b in "grz"]
    images, labels = {}, {}
    for chunk in iter_chunks(out, columns + pixels, filter=ds.field("parent_id").isin(chosen)):
        size = int(chunk.table.column("stamp_size")[0].as_py())
        batch = stamps_of(Chunk(chunk.table, chunk.source, chunk.row_offset), size)
        for k, m in enumerate(chunk.table.select(columns).to_pylist()):
            images[m["parent_id"]] = batch.image[k]
            snr = m["hn_annulus_snr"]
            labels[m["parent_id"]] = (f"{m['hn_class']} r={m['lrg_mag_r']:.1f}/{m['hn_feature_mag_r']:.1f} "
                                      f"R={m['hn_feature_radius_arcsec']:.1f}\"" +
                                      (f" S/N={snr:.0f}" if snr == snr else ""))
    png = gallery_png(np.stack([images[p] for p in chosen]), [labels[p] for p in chosen],
                      columns=max(1, hn.gallery_per_class),
                      title="Hard negatives per class (grz; label: core r / feature r mag, feature radius, "
                            "annulus S/N)", stretch=GALLERY_STRETCH, q=GALLERY_Q)
    atomic_write_bytes(path, png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--assignment", default="data/split/assignment.parquet")
    parser.add_argument("--out", default="data/hard_negatives")
    parser.add_argument("--metrics", default="metrics/hard_negatives.json")
    parser.add_argument("--gallery", default="plots/hard_negatives_gallery.png")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    config = survey_config(params, args.params)
    hn = hard_negatives_config(params, args.params)
    split_map = read_split_map(args.assignment)
    if hn.mode == "embedded":
        counts, extra = run_embedded(config, hn, split_map, args.out)
    else:
        counts, extra = run_galaxy_zoo(config, hn, split_map, args.out, args.params)
    catalogue = read_table(args.out, columns=CATALOGUE_COLUMNS)
    metrics = summarise(catalogue, counts, {**extra, "split_nside": split_map.nside, "healpix_scheme": "NESTED"})
    write_json(args.metrics, metrics)
    if hn.gallery_per_class > 0:
        write_gallery(args.out, hn, args.gallery)
    lost = metrics["dropped"]
    print(f"hard_negatives: wrote {metrics['n_written']} ({', '.join(f'{s} {sum(v.values())}' for s, v in metrics['counts'].items())}); "
          f"not written: guard band {sum(lost['guard_band'].values())}, unassigned pixels "
          f"{sum(lost['unassigned_pixel'].values())}")


if __name__ == "__main__":
    run_stage(main)

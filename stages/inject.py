"""DVC stages `inject@<generation>` and `benchmark_injections`: positives and their paired controls.

``--generation NAME`` uses ``generations.NAME``; ``--benchmark`` uses the frozen
benchmark's design (``benchmark.injection``, test split only).

Generations are injected into the train and val regions only (the test region is the frozen
benchmark's). Reads the survey (data/survey) and the split assignment; writes
``data/inject/<generation>/region_split=<split>/part-NNNNN.parquet`` (native
layout, controls and positives) and ``metrics/<generation>/inject.json``.
Two passes over the survey shards when the generation targets an arc-S/N
distribution (candidate S/N, then injection), one otherwise.
"""
from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import torch

from darkhalo.io.dataset import Chunk, read_table, stamps_of, write_parquet
from darkhalo.sim.injection import (InjectConfig, benchmark_spec, candidate_snrs, engine_settings, fit_acceptance,
                                generation_spec,
                                inject_parents, summarise_injection)
from darkhalo.core.outputs import run_stage, write_json
from darkhalo.io.parallel import join_uri, make_dirs, map_shards, part_files, shard_output
from darkhalo.core.params import load_params
from darkhalo.io.stamps import PIXEL_COLUMNS
from darkhalo.sim.split import GENERATION_SPLITS, SPLITS
from darkhalo.sim.survey import survey_config


def load_assignment(path: str, splits=SPLITS) -> pa.Table:
    """Assignment rows of ``splits`` (guard-band rows never), sorted by parent_id."""
    table = read_table(path, columns=["parent_id", "region_split", "healpix_pixel"])
    keep = np.isin(table.column("region_split").to_numpy(zero_copy_only=False), list(splits))
    return table.filter(pa.array(keep)).sort_by("parent_id")


def parents_of_shard(survey_file: str, assignment: pa.Table, size: int):
    """(catalogue with region_split/healpix_pixel, pixels) of the assigned parents of one survey file."""
    table = read_table(survey_file)
    ids = table.column("parent_id").to_numpy()
    assigned = assignment.column("parent_id").to_numpy()
    pos = np.clip(np.searchsorted(assigned, ids), 0, max(len(assigned) - 1, 0))
    hit = (assigned[pos] == ids) if len(assigned) else np.zeros(len(ids), bool)
    table = table.filter(pa.array(hit))
    stamps = stamps_of(Chunk(table, survey_file, 0), size)
    catalogue = table.drop_columns(list(PIXEL_COLUMNS))
    for name in ("region_split", "healpix_pixel"):
        catalogue = catalogue.append_column(name, assignment.column(name).take(pa.array(pos[hit])))
    return catalogue, stamps, int((~hit).sum())


def first_pass(config: InjectConfig, survey_file: str, assignment: pa.Table) -> np.ndarray:
    torch.set_num_threads(1)
    catalogue, stamps, _ = parents_of_shard(survey_file, assignment, config.stamp_size)
    return candidate_snrs(config, catalogue, stamps)


def second_pass(config: InjectConfig, survey_file: str, assignment: pa.Table, snr, acceptance, shard: int,
                out_dir: str) -> tuple[dict, pa.Table]:
    torch.set_num_threads(1)
    catalogue, stamps, unassigned = parents_of_shard(survey_file, assignment, config.stamp_size)
    rows, stats = inject_parents(config, catalogue, stamps, snr, acceptance)
    stats["unassigned_parents"] = unassigned
    splits = rows.column("region_split").to_numpy(zero_copy_only=False)
    for split in SPLITS:
        part = rows.filter(pa.array(splits == split)).drop_columns(["region_split"])
        if part.num_rows:
            folder = join_uri(out_dir, f"region_split={split}")
            make_dirs(folder)
            write_parquet(part, join_uri(folder, f"part-{shard:05d}.parquet"), config.engine.row_group_rows)
    summary_cols = [c for c in rows.column_names if c not in PIXEL_COLUMNS]
    return stats, rows.select(summary_cols)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--generation")
    which.add_argument("--benchmark", action="store_true", help="the frozen benchmark (test split only)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--survey", default="data/survey")
    parser.add_argument("--split", default="data/split/assignment.parquet")
    parser.add_argument("--out", default=None, help="default data/inject/<generation> or data/benchmark/injections")
    parser.add_argument("--metrics", default=None, help="default metrics/<generation>/inject.json or "
                                                        "metrics/benchmark/inject.json")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    survey = survey_config(params, args.params)
    spec = benchmark_spec(params, args.params) if args.benchmark else generation_spec(params, args.generation,
                                                                                      args.params)
    config = InjectConfig(survey.seed, survey.stamp_size, engine_settings(params, args.params), spec)
    name = "benchmark" if args.benchmark else args.generation
    out = args.out or ("data/benchmark/injections" if args.benchmark else f"data/inject/{name}")
    metrics = args.metrics or f"metrics/{name}/inject.json"
    assignment = load_assignment(args.split, ("test",) if args.benchmark else GENERATION_SPLITS)
    files = part_files(args.survey)
    if not files:
        raise FileNotFoundError(f"{args.survey}: no survey shards (part-*.parquet)")
    workers, engine = config.engine.workers, config.engine.engine
    target = config.generation.arc_snr_target
    snrs, acceptance = [None] * len(files), None
    if target is not None:
        snrs = map_shards(first_pass, [(config, f, assignment) for f in files], workers,
                          desc=f"inject@{name} candidates", engine=engine)
        acceptance = fit_acceptance(np.concatenate(snrs), target, config.engine.acceptance_bins,
                                    config.engine.acceptance_cap_quantile)
    with shard_output(out, engine, workers) as tmp:
        results = map_shards(second_pass, [(config, f, assignment, snrs[i], acceptance, i, tmp)
                                           for i, f in enumerate(files)], workers,
                             desc=f"inject@{name}", engine=engine)
    rows = pa.concat_tables([r[1] for r in results])
    counts = {k: sum(r[0][k] for r in results) for k in results[0][0]}
    all_snr = np.concatenate(snrs) if target is not None else None
    write_json(metrics, summarise_injection(config, rows, counts, all_snr, acceptance))


if __name__ == "__main__":
    run_stage(main)

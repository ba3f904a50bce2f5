"""DVC stage `survey`: the DR10 LRG parent sample, simulated (default) or real.

Writes ``data/survey/part-NNNNN.parquet`` (native layout, one row per parent)
and ``metrics/survey.json``.  ``survey.mode``: ``embedded`` simulates the
parents; shards are pure functions of (params, shard index), rendered on
``runtime.engine``: a local process pool or Spark (``--out`` may then be an
``s3://`` / ``s3a://`` prefix).  ``manifest`` and ``targets`` read the users'
cutouts or fetch them (darkhalo/sim/real_parents.py).
"""
from __future__ import annotations

import argparse

import numpy as np

from darkhalo.io.dataset import read_table, write_parquet
from darkhalo.core.outputs import run_stage, write_json
from darkhalo.io.parallel import join_uri, map_shards, shard_output
from darkhalo.core.params import load_params
from darkhalo.sim.survey import CATALOGUE_FIELDS, SurveyConfig, simulate_parents, sky_patches, summarise_survey, survey_config


def render_shard(config: SurveyConfig, patches: np.ndarray, shard: int, out_dir: str) -> int:
    """Simulate and write shard ``shard``; returns its row count."""
    first = shard * config.shard_rows
    ids = np.arange(first, min(first + config.shard_rows, config.n_parents), dtype=np.int64)
    table = simulate_parents(config, patches, ids)
    write_parquet(table, join_uri(out_dir, f"part-{shard:05d}.parquet"), config.row_group_rows)
    return table.num_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/survey")
    parser.add_argument("--metrics", default="metrics/survey.json")
    args = parser.parse_args(argv)
    config = survey_config(load_params(args.params), args.params)
    if config.mode != "embedded":
        from darkhalo.sim.real_parents import manifest_parents, summarise_real, target_parents

        with shard_output(args.out, "local", 1) as tmp:
            source = (manifest_parents if config.mode == "manifest" else target_parents)(config, tmp, args.params)
        catalogue = read_table(args.out, columns=[f.name for f in CATALOGUE_FIELDS])
        write_json(args.metrics, summarise_real(catalogue, source))
        return
    patches = sky_patches(config)
    n_shards = -(-config.n_parents // config.shard_rows)
    with shard_output(args.out, config.engine, config.workers) as tmp:
        map_shards(render_shard, [(config, patches, s, tmp) for s in range(n_shards)],
                   config.workers, desc="survey", engine=config.engine)
    catalogue = read_table(args.out, columns=[f.name for f in CATALOGUE_FIELDS])
    write_json(args.metrics, summarise_survey(catalogue))


if __name__ == "__main__":
    run_stage(main)

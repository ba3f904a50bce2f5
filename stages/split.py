"""DVC stage `split`: region-disjoint HEALPix train/val/test assignment of the survey parents.

Reads ``parent_id, ra, dec`` of the survey catalogue; writes
``data/split/assignment.parquet`` (one row per parent: ``parent_id``, ``ra``,
``dec`` in deg, ``nside``, ``healpix_pixel`` (NESTED), ``split_unit`` (the
connected group of pixels assigned together), ``region_split`` in train/val/test/guard) and
``metrics/split.json`` (parents, pixels, area in deg^2 and fractions per split,
guard-band loss).  Algorithm: darkhalo/sim/split.py.
"""
from __future__ import annotations

import argparse

from darkhalo.io.dataset import parquet_bytes, read_table
from darkhalo.core.outputs import atomic_write_bytes, run_stage, write_json
from darkhalo.core.params import load_params
from darkhalo.sim.split import assignment_table, split_config, summarise_split

ROW_GROUP_ROWS = 65536
MAX_QUIET_DEVIATION = 0.02   # warn above this |achieved - declared| fraction (data_gates enforces its tolerance)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--survey", default="data/survey")
    parser.add_argument("--out", default="data/split/assignment.parquet")
    parser.add_argument("--metrics", default="metrics/split.json")
    args = parser.parse_args(argv)
    config = split_config(load_params(args.params), args.params)
    catalogue = read_table(args.survey, columns=["parent_id", "ra", "dec"])
    table, result = assignment_table(catalogue.column("parent_id").to_numpy(), catalogue.column("ra").to_numpy(),
                                     catalogue.column("dec").to_numpy(), config)
    atomic_write_bytes(args.out, parquet_bytes(table, ROW_GROUP_ROWS))
    metrics = summarise_split(table, config, result)
    write_json(args.metrics, metrics)
    splits = ", ".join(f"{k} {v['n_parents']} ({v['fraction_of_kept_parents']:.3f} vs {v['declared_fraction']:.3f})"
                       for k, v in metrics["splits"].items())
    if metrics["max_abs_fraction_deviation"] > MAX_QUIET_DEVIATION:
        print(f"WARNING split: fractions deviate from the declared ones by up to "
              f"{metrics['max_abs_fraction_deviation']:.3f}; the largest unit holds "
              f"{metrics['largest_unit_fraction']:.1%} of the parents (contiguous data: set split.region_nside)")
    print(f"split: {splits}; guard band dropped {metrics['guard']['n_parents']} parents "
          f"({metrics['guard']['fraction_of_parents_lost']:.2%}), {metrics['guard']['area_deg2']:.1f} deg^2")


if __name__ == "__main__":
    run_stage(main)

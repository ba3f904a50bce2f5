"""DVC stage `compare`: candidate minus baseline generation on the frozen benchmark, paired bootstrap.

Reads data/eval/<generation>/scores.parquet and metrics/<generation>/{evaluate,data_gates,train}.json
of ``compare.baseline`` and ``compare.candidate`` (with ``train.seeds`` > 1 also each extra seed's
scores_seed<k>.parquet and evaluate_seed<k>.json: seeds are paired by index and the intervals
combine their spread with the bootstrap); refuses generations evaluated on different benchmarks; writes metrics/compare.json (every metric), metrics/summary.json (the headline a
reviewer reads in ``dvc metrics diff``) and DVC plot data in plots/compare/. compare.json's ``judgement``
(darkhalo/eval/judgement.py) also reads metrics/<generation>/{model_gates,inject}.json and
metrics/{split,anchors,hard_negatives}.json: every verdict the report states.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from darkhalo.io.dataset import read_table
from darkhalo.eval.compare import combine_seeds, compare, compare_config
from darkhalo.eval.compare_rows import generation
from darkhalo.eval.compare_summary import headline_summary, plot_tables
from darkhalo.eval.judgement import judge
from darkhalo.core.outputs import atomic_write_bytes, run_stage, write_json
from darkhalo.core.params import load_params, section
from darkhalo.ml.config import seed_file_name, train_config


def read_optional(path: Path) -> dict:
    """A metrics file's content, {} when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def load(name: str, scores: str, summary: str):
    return generation(name, read_table(scores), json.loads(Path(summary).read_text()), summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".", help="directory holding data/eval/ and metrics/")
    parser.add_argument("--out", default="metrics/compare.json")
    parser.add_argument("--plots-dir", default="plots/compare")
    parser.add_argument("--summary", default=None, help="the review's headline metrics (default: summary.json "
                        "beside --out)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    config = compare_config(params, args.params)
    root = Path(args.root)
    names = (config.baseline, config.candidate)
    n_seeds = min(train_config(params, g, args.params).seeds for g in names)

    def seed_run(g: str, k: int):   # seed 0's summary is the generation's evaluate metrics
        evaluate = root / f"metrics/{g}/evaluate.json" if k == 0 else root / f"data/eval/{g}" / seed_file_name("evaluate", ".json", k)
        return load(g, str(root / f"data/eval/{g}" / seed_file_name("scores", ".parquet", k)), str(evaluate))

    runs = [[seed_run(g, k) for g in names] for k in range(n_seeds)]
    bins = {g.name: (g.summary.get("calibration") or {}).get("n_bins") for g in runs[0]}
    if len(set(bins.values())) != 1 or None in bins.values():
        raise ValueError(f"calibration bins differ or are missing in the evaluate metrics: {bins}")
    result = combine_seeds([compare(a, b, config, int(next(iter(bins.values())))) for a, b in runs], config)
    # the generations' stage metrics join the headline and the judgement when present (the pipeline has them all)
    detail = {kind: {g: read_optional(root / f"metrics/{g}/{kind}.json") for g in names}
              for kind in ("data_gates", "train", "model_gates", "evaluate", "inject")}
    detail.update({kind: read_optional(root / f"metrics/{kind}.json") for kind in ("split", "anchors", "hard_negatives")})
    summary = headline_summary(result, detail["data_gates"], detail["train"], detail["model_gates"], runs[0][1].summary)
    evaluate = section(params, "evaluate", args.params)
    result["judgement"] = judge(result, summary, detail, config, {
        key: float(evaluate[key]) for key in ("operating_fpr", "gate13_max_fraction_above", "gate17_max_retained_fraction")})
    write_json(args.out, result)
    write_json(args.summary or Path(args.out).with_name("summary.json"), summary)
    for name, table in plot_tables(result).items():
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        atomic_write_bytes(Path(args.plots_dir) / name, sink.getvalue().to_pybytes())
    counts = result["verdict_counts"]
    print(f"compare {config.candidate} - {config.baseline}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" (of {result['n_metrics']} metrics; {config.n_bootstrap} paired bootstrap replicates)")


if __name__ == "__main__":
    run_stage(main)

"""DVC stage `evaluate@<generation>`: score the frozen benchmark and compute metrics and model gates.

Writes data/eval/<generation>/scores.parquet (one row per benchmark stamp:
score and diagnostic scores), metrics/<generation>/evaluate.json (with the
benchmark hash), metrics/<generation>/model_gates.json, and DVC plot data in
plots/<generation>/ (roc.csv, completeness_*.csv, selection_*.csv: the selection function,
darkhalo/eval/selection.py).  With ``train.seeds`` > 1 every
extra training seed k is scored the same way (its own operating threshold):
data/eval/<generation>/scores_seed<k>.parquet and evaluate_seed<k>.json, and
evaluate.json gains ``seed_spread`` (mean and sd over seeds of the headline metrics).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from tqdm import tqdm

from darkhalo.core import metrics as M
from darkhalo.io.dataset import content_hash, parquet_bytes
from darkhalo.eval.evaluation import (evaluate_config, model_gates, roc_points, score_injections, score_negatives,
                                 score_split, summarise)
from darkhalo.ml.inference import Scorer
from darkhalo.sim.injection import engine_settings
from darkhalo.physics.lensing import RenderSettings
from darkhalo.core.outputs import atomic_dir, atomic_write_bytes, run_stage, write_json
from darkhalo.core.params import load_params
from darkhalo.core.runtime import runtime_config
from darkhalo.eval.selection import selection_function
from darkhalo.sim.survey import survey_config
from darkhalo.ml.config import seed_file_name, train_config

SEED_SPREAD_KEYS = (("auc", ("roc", "auc")), ("completeness", ("completeness_at_threshold", "rate")),
                    ("hard_negative_fpr", ("hard_negative_fpr", "rate")))


def check_benchmark(manifest_path: str) -> dict:
    """The benchmark manifest, after checking every part still has its recorded hash."""
    manifest = json.loads(Path(manifest_path).read_text())
    for name, part in manifest["parts"].items():
        actual = content_hash(part["path"])
        if actual != part["sha256"]:
            raise RuntimeError(f"benchmark part '{name}' ({part['path']}) has sha256 {actual[:12]}..., "
                               f"not the frozen {part['sha256'][:12]}... of {manifest_path}: rebuild the benchmark")
    return manifest


def write_csv(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def score_benchmark(scorer: Scorer, manifest: dict, inject_uri: str, config, seed: int, render: RenderSettings,
                    core_radius_pix: float, desc: str) -> tuple[pa.Table, float, dict]:
    """(scores table, operating threshold from the generation's val controls, skipped rows) of one model."""
    skipped = {}
    val_labels, val_scores = score_split(scorer, inject_uri, "val", config, skipped)
    threshold = M.operating_threshold_for_fpr(val_labels, val_scores, config.operating_fpr)
    parts = manifest["parts"]
    with tqdm(total=parts["injections"]["rows"], desc=desc, unit="stamp") as bar:
        tables = [score_injections(scorer, parts["injections"]["path"], config, seed, render, core_radius_pix,
                                   skipped, bar.update, parts["injections"]["rows"])]
    tables.append(score_negatives(scorer, parts["hard_negatives"]["path"], "hard_negative", "hn_class", config,
                                  skipped))
    if "anchors" in parts:
        tables.append(score_negatives(scorer, parts["anchors"]["path"], "anchor", "anchor_group", config, skipped,
                                      label=1))
    return pa.concat_tables([t for t in tables if t.num_rows], promote_options="default"), threshold, skipped


def seed_spread(summaries: list[dict]) -> dict:
    """Mean and sd (ddof 1) over training seeds of the headline metrics of each seed's summary."""
    spread = {}
    for name, keys in SEED_SPREAD_KEYS:
        values = []
        for summary in summaries:
            node = summary
            for key in keys:
                node = (node or {}).get(key)
            values.append(float("nan") if node is None else float(node))
        spread[name] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "n": len(values),
                        "per_seed": values}
    return spread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", default=None, help="model directory, default data/models/<generation>")
    parser.add_argument("--benchmark", default="metrics/benchmark.json")
    parser.add_argument("--inject", default=None, help="the generation's own data (val split sets the threshold)")
    parser.add_argument("--scores-dir", default=None, help="default data/eval/<generation>")
    parser.add_argument("--metrics-dir", default=None)
    parser.add_argument("--plots-dir", default=None)
    args = parser.parse_args(argv)
    gen = args.generation
    params = load_params(args.params)
    survey = survey_config(params, args.params)
    config = evaluate_config(params, args.params)
    engine = engine_settings(params, args.params)
    render = RenderSettings(survey.stamp_size, engine.supersample, engine.moffat_beta, tile_pix=engine.tile_pix,
                            refine_rel=engine.refine_rel)
    metrics_dir = Path(args.metrics_dir or f"metrics/{gen}")
    plots_dir = Path(args.plots_dir or f"plots/{gen}")
    threads = runtime_config(params, args.params).threads
    torch.set_num_threads(threads)
    manifest = check_benchmark(args.benchmark)
    n_negatives = manifest["parts"]["injections"]["rows"] // 2 + manifest["parts"]["hard_negatives"]["rows"]
    if n_negatives < config.min_benchmark_negatives:
        raise SystemExit(f"evaluate@{gen}: the benchmark holds {n_negatives} negatives (test controls + hard "
                         f"negatives), fewer than evaluate.min_benchmark_negatives = {config.min_benchmark_negatives} "
                         f"({args.params}): FPR 1e-3 would rest on under {config.min_benchmark_negatives / 1000:g} "
                         "expected false positives. Raise survey.n_parents or split.test_frac, or lower the param.")
    train = train_config(params, gen, args.params)
    model_dir = Path(args.models or f"data/models/{gen}")
    inject_uri = args.inject or f"data/inject/{gen}"
    runs = []
    for k in range(train.seeds):
        scorer = Scorer.load(str(model_dir / seed_file_name("model", ".pt", k)), expected=train.input_spec,
                             threads=threads)
        scores, threshold, skipped = score_benchmark(
            scorer, manifest, inject_uri, config, survey.seed, render, engine.core_radius_pix,
            f"evaluate@{gen}" + (f" seed {k}" if k else ""))
        summary = summarise(scores, threshold, config)
        summary.update(generation=gen, benchmark_sha256=manifest["sha256"], skipped_rows=skipped,
                       model_source=scorer.checkpoint.get("source", "trained"), seed_index=k)
        runs.append((scores, threshold, summary))
    with atomic_dir(args.scores_dir or f"data/eval/{gen}") as tmp:
        for k, (scores_k, _, summary_k) in enumerate(runs):
            (tmp / seed_file_name("scores", ".parquet", k)).write_bytes(parquet_bytes(scores_k))
            if k:
                write_json(tmp / seed_file_name("evaluate", ".json", k), summary_k)
    scores, threshold, summary = runs[0]
    if train.seeds > 1:
        summary["seed_spread"] = seed_spread([r[2] for r in runs])
    columns = {n: scores.column(n).to_numpy(zero_copy_only=False) for n in scores.column_names}
    summary["selection_function"], selection_tables = selection_function(columns, threshold, config.selection_grid)
    gates = model_gates(scores, threshold, config)
    write_json(metrics_dir / "evaluate.json", summary)
    write_json(metrics_dir / "model_gates.json", {"generation": gen, "benchmark_sha256": manifest["sha256"],
                                                 "gates": gates, "all_passed": all(g["passed"] for g in gates)})
    roc_rows = (columns["part"] == "injection") | (columns["part"] == "hard_negative")
    write_csv(plots_dir / "roc.csv", roc_points(columns["label"][roc_rows], columns["score"][roc_rows]))
    for name, table in selection_tables.items():
        write_csv(plots_dir / f"{name}.csv", table)
    for key in ("theta_e", "arc_snr", "src_mag_r"):
        bins = summary[f"completeness_vs_{key}"]["bins"]
        write_csv(plots_dir / f"completeness_{key}.csv", pa.table(
            {key: [b["centre"] for b in bins], "completeness": [b["rate"] for b in bins],
             "lo": [b["lo"] for b in bins], "hi": [b["hi"] for b in bins], "n": [b["n"] for b in bins]}))
    failed = [g for g in gates if not g["passed"]]
    for g in failed:
        line = (f"GATE {g['gate']} FAILED [{gen}] {g['column']} {g['statistic']} = {g['value']:.4g} outside "
                f"{g['tolerance']} ({g['name']})")
        print(line if config.gates_blocking else f"warning (model gates not blocking): {line}", file=sys.stderr)
    print(f"evaluate@{gen}: AUC {summary['roc']['auc']:.4f}, completeness {summary['completeness_at_threshold']['rate']:.3f}"
          f" at threshold {threshold:.4f}")
    if failed and config.gates_blocking:
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main)

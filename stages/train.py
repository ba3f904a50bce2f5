"""DVC stage `train@<generation>`: train (or import) one generation's lens finder.

Single process by default; several GPUs: ``torchrun --nproc_per_node=N -m stages.train
--generation gen5p`` (DDP; NCCL on CUDA, gloo on CPU; rank 0 writes the outputs).

Reads data/inject/<generation> (train and val splits) minus the rows in
data/gates/<generation>/quarantine.parquet, and hard negatives (train split);
writes data/models/<generation>/model.pt (state_dict + architecture +
normalisation + metadata transform + data hashes; with ``train.seeds`` > 1 also
model_seed<k>.pt, one per extra training seed), DVCLive logs of seed 0 in
dvclive/<generation>/ and metrics/<generation>/train.json.
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
import torch

from darkhalo.io.dataset import content_hash, read_table
from darkhalo.ml.models import import_gen5_checkpoint
from darkhalo.core.outputs import atomic_dir, run_stage, write_json
from darkhalo.core.params import load_params
from darkhalo.core.stats import rate_with_interval
from darkhalo.sim.survey import survey_config
from darkhalo.ml.config import seed_file_name, train_config
from darkhalo.ml.training import (MetadataTransform, checkpoint_dict, distributed_context, load_stamps,
                               mix_hard_negatives, take, train_model)


def main(argv: list[str] | None = None) -> None:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        run(argv)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--inject", default=None, help="default data/inject/<generation>")
    parser.add_argument("--quarantine", default=None, help="default data/gates/<generation>/quarantine.parquet")
    parser.add_argument("--hard-negatives", default="data/hard_negatives")
    parser.add_argument("--out", default=None, help="model directory, default data/models/<generation>")
    parser.add_argument("--live", default=None, help="default dvclive/<generation>")
    parser.add_argument("--metrics", default=None, help="default metrics/<generation>/train.json")
    args = parser.parse_args(argv)
    gen = args.generation
    params = load_params(args.params)
    seed = survey_config(params, args.params).seed
    config = train_config(params, gen, args.params)
    inject_dir = args.inject or f"data/inject/{gen}"
    quarantine = args.quarantine or f"data/gates/{gen}/quarantine.parquet"
    out = Path(args.out or f"data/models/{gen}")
    live_dir = args.live or f"dvclive/{gen}"
    metrics_path = args.metrics or f"metrics/{gen}/train.json"
    hashes = {"inject": content_hash(inject_dir), "quarantine": content_hash(quarantine)}

    if config.import_checkpoint:
        model, info = import_gen5_checkpoint(config.import_checkpoint)
        hashes["imported_checkpoint"] = content_hash(config.import_checkpoint)
        meta_tf = MetadataTransform(config.metadata_transform, [0.0, 0.0], [1.0, 1.0])
        checkpoints = [checkpoint_dict(model, config, meta_tf, config.input_spec, gen, info["epoch"], hashes,
                                       source=f"imported:{config.import_checkpoint}")]
        metrics = {"source": "imported", "epoch": info["epoch"]}
        history = []
    else:
        excluded = read_table(quarantine, columns=["task_id"]).column("task_id").to_numpy()
        cols = config.metadata_columns
        spec = config.input_spec
        train = load_stamps(inject_dir, "train", spec, cols, excluded, threads=config.threads)
        val = load_stamps(inject_dir, "val", spec, cols, excluded, threads=config.threads)
        n_hard = 0
        if config.hard_negative_frac > 0:
            hashes["hard_negatives"] = content_hash(args.hard_negatives)
            hard = load_stamps(args.hard_negatives, "train", spec, cols, id_column="parent_id",
                                threads=config.threads)
            train, n_hard = mix_hard_negatives(train, hard, config.hard_negative_frac, seed)
        if config.max_train_rows and len(train) > config.max_train_rows:
            from darkhalo.core.rng import keyed_rng

            keep = np.sort(keyed_rng(seed, f"train:{gen}:subsample").choice(len(train), config.max_train_rows,
                                                                             replace=False))
            train = take(train, keep)
        if distributed_context()[1] != 0:  # other ranks train, rank 0 logs and writes
            for k in range(config.seeds):
                train_model(config, train, val, seed, gen, seed_index=k)
            return
        from dvclive import Live

        with Live(dir=live_dir, save_dvc_exp=False, dvcyaml=None, report=None) as live:
            def log(epoch, entry):   # DVCLive follows seed 0, the generation's default run
                for key, value in entry.items():
                    if key not in ("epoch", "is_best"):
                        live.log_metric(key, value)
                live.next_step()

            runs = [train_model(config, train, val, seed, gen, log if k == 0 else None, seed_index=k)
                    for k in range(config.seeds)]
        checkpoints, per_seed = [], []
        for k, (model, meta_tf, history) in enumerate(runs):
            best = [h for h in history if h["is_best"]][-1] if config.early_stopping_patience else history[-1]
            checkpoints.append(checkpoint_dict(model, config, meta_tf, spec, gen, best["epoch"] + 1, hashes))
            per_seed.append({"seed_index": k, "epochs_run": len(history), "best_epoch": best["epoch"] + 1,
                             "best_val_auc": best["val_auc"]})
        history = runs[0][2]
        last = history[-1] if history else {}
        metrics = {"source": "trained", "epochs": config.epochs, "epochs_run": per_seed[0]["epochs_run"],
                   "best_epoch": per_seed[0]["best_epoch"], "best_val_auc": per_seed[0]["best_val_auc"],
                   "early_stopping_patience": config.early_stopping_patience, "seeds": config.seeds,
                   "preprocessing": spec.to_dict(), "architecture": config.architecture,
                   "train_rows": {"positives": int(train.labels.sum()), "negatives": int((train.labels == 0).sum()),
                                  "hard_negatives": n_hard},
                   "val_rows": len(val), "skipped_rows": {"train": train.skipped, "val": val.skipped},
                   "final": {k: v for k, v in last.items() if k not in ("epoch", "is_best")},
                   "hard_negative_share_of_negatives": rate_with_interval(
                       n_hard, max(int((train.labels == 0).sum()), 1))}
        if config.seeds > 1:
            aucs = np.array([r["best_val_auc"] for r in per_seed])
            metrics["per_seed"] = per_seed
            metrics["best_val_auc_seed_spread"] = {"mean": float(aucs.mean()), "sd": float(aucs.std(ddof=1)),
                                                   "n": config.seeds}
    with atomic_dir(out) as tmp:
        for k, ckpt in enumerate(checkpoints):
            buffer = io.BytesIO()
            torch.save(ckpt, buffer)
            (tmp / seed_file_name("model", ".pt", k)).write_bytes(buffer.getvalue())
    metrics["data_hashes"] = hashes
    write_json(metrics_path, metrics)
    if history:
        print(f"train@{gen}: " + ", ".join(f"epoch {h['epoch']}: loss {h['train_loss']:.4f} val AUC {h['val_auc']:.4f}"
                                           for h in history))


if __name__ == "__main__":
    run_stage(main)

"""Training one generation's lens finder (torch, CPU by default).

Data: positives and controls of ``data/inject/<generation>`` minus the rows the
data gates quarantined, plus hard negatives mixed in at ``hard_negative_frac``
of the negatives; every stamp goes through the one named normalisation
(darkhalo/physics/normalize.py) whose parameters are stored in the checkpoint, so
inference (darkhalo/ml/inference.py) cannot differ from training.

The stamp loading and the loop are one contract: the loop reads every TrainConfig field
(darkhalo/ml/config.py) and the StampSet layout; the checkpoint dict records both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.dataset as ds
import torch
from torch import nn

from darkhalo.io.dataset import iter_chunks, stamps_of
from darkhalo.ml.config import TrainConfig, run_key
from darkhalo.ml.models import build_model
from darkhalo.physics.normalize import Normalization, normalize, outer_mask, radius_map_pix
from darkhalo.core.rng import keyed_rng


@dataclass
class StampSet:
    """Normalised stamps with labels and what training/evaluation needs per row."""

    images: np.ndarray        # (N, 3, S, S) float32, normalised
    labels: np.ndarray        # (N,) float32, 1 = lens
    task_id: np.ndarray       # (N,) int64 (hard negatives: their row id)
    metadata: np.ndarray      # (N, M) float64, raw catalogue values
    theta_e_arcsec: np.ndarray  # (N,) NaN where not a positive
    skipped: dict             # reason -> count

    def __len__(self):
        return len(self.labels)


def load_stamps(uri: str, split: str, spec: Normalization, metadata_columns: tuple, exclude_task_ids=None,
                label_column: str = "is_control", stamp_size: int = 64, id_column: str = "task_id",
                threads: int = 1) -> StampSet:
    """Stream one split of a dataset into memory, normalised; rows failing contracts are skipped and counted.

    Labels: 1 - is_control for injection datasets; hard-negative datasets
    (no ``is_control``) are all 0.  ``exclude_task_ids`` (the quarantine) are
    dropped first; any remaining row with a non-finite pixel or a missing band
    is skipped and counted (the gates should have caught it).
    """
    exclude = np.asarray(sorted(exclude_task_ids if exclude_task_ids is not None else []), dtype=np.int64)
    images, labels, ids, meta, theta = [], [], [], [], []
    skipped = {"quarantined": 0, "non_finite_or_missing_band": 0}
    for chunk in iter_chunks(uri, filter=ds.field("region_split") == split):
        table = chunk.table
        names = table.column_names
        task = table.column(id_column).to_numpy() if id_column in names else table.column("parent_id").to_numpy()
        keep = ~np.isin(task, exclude)
        skipped["quarantined"] += int((~keep).sum())
        stamps = stamps_of(chunk, stamp_size)
        finite = np.isfinite(stamps.image).all(axis=(1, 2, 3)) & stamps.present.all(axis=1)
        skipped["non_finite_or_missing_band"] += int((keep & ~finite).sum())
        keep &= finite
        if not keep.any():
            continue
        images.append(normalize(stamps.image[keep], spec, threads=threads))
        lab = (1 - table.column(label_column).to_numpy()[keep]) if label_column in names else np.zeros(keep.sum())
        labels.append(lab.astype(np.float32))
        ids.append(task[keep])
        meta.append(np.stack([table.column(c).to_numpy(zero_copy_only=False)[keep].astype(np.float64)
                              for c in metadata_columns], 1) if metadata_columns else np.zeros((keep.sum(), 0)))
        th = table.column("theta_e_arcsec").to_numpy(zero_copy_only=False)[keep] if "theta_e_arcsec" in names \
            else np.full(keep.sum(), np.nan)
        theta.append(np.asarray(th, dtype=np.float64))
    if not images:
        return StampSet(np.zeros((0, 3, stamp_size, stamp_size), np.float32), np.zeros(0, np.float32),
                        np.zeros(0, np.int64), np.zeros((0, len(metadata_columns))), np.zeros(0), skipped)
    return StampSet(np.concatenate(images), np.concatenate(labels), np.concatenate(ids), np.concatenate(meta),
                    np.concatenate(theta), skipped)


def concat(sets: list[StampSet]) -> StampSet:
    skipped = {}
    for s in sets:
        for k, v in s.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return StampSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in
                      ("images", "labels", "task_id", "metadata", "theta_e_arcsec")), skipped)


def take(s: StampSet, idx: np.ndarray) -> StampSet:
    return StampSet(s.images[idx], s.labels[idx], s.task_id[idx], s.metadata[idx], s.theta_e_arcsec[idx],
                    dict(s.skipped))


def mix_hard_negatives(base: StampSet, hard: StampSet, frac: float, seed: int) -> tuple[StampSet, int]:
    """Add hard negatives so they are ``frac`` of all negatives (as many as available)."""
    if frac <= 0 or len(hard) == 0:
        return base, 0
    n_neg = int((base.labels == 0).sum())
    want = int(round(frac / (1 - frac) * n_neg))
    n = min(want, len(hard))
    idx = np.sort(keyed_rng(seed, "train:hard-negatives").choice(len(hard), size=n, replace=False))
    return concat([base, take(hard, idx)]), n


class MetadataTransform:
    """Metadata columns -> model input: raw, or standardised with the training mean/std."""

    def __init__(self, kind: str, mean=None, std=None):
        self.kind, self.mean, self.std = kind, mean, std

    @classmethod
    def fit(cls, kind: str, values: np.ndarray):
        if kind == "raw" or values.shape[1] == 0:
            return cls(kind, [0.0] * values.shape[1], [1.0] * values.shape[1])
        return cls(kind, values.mean(axis=0).tolist(), np.maximum(values.std(axis=0), 1e-12).tolist())

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}


def augment(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations, independently per stamp."""
    n = x.shape[0]
    if config.augment_flips:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if config.augment_rot90:
        k = torch.randint(0, 4, (n,), generator=gen)
        x = x.clone()
        for turns in range(1, 4):
            sel = k == turns
            x[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
    return x


def centre_mask(x: torch.Tensor, theta_e_arcsec: np.ndarray, config: TrainConfig, gen: torch.Generator,
                spec: Normalization, pixel_scale_arcsec: float) -> torch.Tensor:
    """With probability ``centre_mask_prob``, refill the centre with pixels drawn from the outer annulus.

    Radius: ``centre_mask_radius_pix`` or ``centre_mask_radius_theta_e`` x theta_E
    (rows without theta_E, i.e. negatives, borrow a random positive's theta_E).
    """
    n, _, size, _ = x.shape
    hit = (torch.rand(n, generator=gen) < config.centre_mask_prob).numpy()
    if not hit.any():
        return x
    theta = np.array(theta_e_arcsec, dtype=np.float64)
    pool = theta[np.isfinite(theta)]
    missing = ~np.isfinite(theta)
    if missing.any():
        fill = pool if len(pool) else np.array([1.0])
        picks = torch.randint(0, len(fill), (int(missing.sum()),), generator=gen).numpy()
        theta[missing] = fill[picks]
    radius = np.where(config.centre_mask_radius_theta_e > 0,
                      config.centre_mask_radius_theta_e * theta / pixel_scale_arcsec, config.centre_mask_radius_pix)
    r = radius_map_pix(size)
    outer = torch.as_tensor(outer_mask(size, spec.outer_radius_pix).reshape(-1))
    out = x.clone()
    for i in np.flatnonzero(hit):
        inside = torch.as_tensor(r < radius[i]).reshape(-1)
        n_in = int(inside.sum())
        if n_in == 0:
            continue
        src = out[i].reshape(3, -1)[:, outer]
        pick = torch.randint(0, src.shape[1], (n_in,), generator=gen)
        flat = out[i].reshape(3, -1)
        flat[:, inside] = src[:, pick]
    return out


def distributed_context() -> tuple[int, int]:
    """(world size, rank) of an initialised torch.distributed group (torchrun), else (1, 0)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def training_device(name: str) -> torch.device:
    """The device to train on; under torchrun each rank takes GPU LOCAL_RANK."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device = cuda but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def train_model(config: TrainConfig, train: StampSet, val: StampSet, seed: int, generation: str,
                log=None, pixel_scale_arcsec: float = 0.262,
                seed_index: int = 0) -> tuple[nn.Module, MetadataTransform, list[dict]]:
    """Train a fresh model; returns (model, metadata transform, per-epoch history).

    ``seed_index`` selects the training seed (initial weights, batch order, augmentation): 0 is
    the generation's default run, ``1 .. seeds - 1`` the extra runs of ``train.seeds``.

    ``log(epoch, metrics)`` is called after every epoch (DVCLive in the stage).
    Early stopping (``early_stopping_patience`` > 0): training stops after that many epochs
    without a val AUC gain of at least ``early_stopping_min_delta``, and the weights of the best
    epoch are returned (``history[i]["is_best"]`` marks each new best).  The cosine schedule spans ``epochs``,
    the budget.  A non-finite loss stops training naming the batch's task ids.  Inside an
    initialised torch.distributed group (torchrun, DDP) every global batch is
    split across the ranks, gradients are averaged by DDP, and rank 0's buffers
    (batch-norm statistics) are broadcast at the end, so all ranks return the
    same weights.
    """
    world, rank = distributed_context()
    device = training_device(config.device)
    torch.set_num_threads(config.threads)
    key = run_key(generation, seed_index)
    torch.manual_seed(keyed_rng(seed, f"train:{key}:init").integers(2**62))
    model = build_model(config.architecture, config.n_metadata, config.width).to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    meta_tf = MetadataTransform.fit(config.metadata_transform, train.metadata)
    gen = torch.Generator().manual_seed(int(keyed_rng(seed, f"train:{key}:augment", rank).integers(2**62)))
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    total = max(1, steps_per_epoch * config.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))) if config.lr_schedule == "cosine"
        else (lambda step: 1.0))
    # the averaged weights (ema_decay > 0) are what is validated, early-stopped on and returned: one epoch's
    # weights carry the noise of its last batches, their average over ~1 / (1 - ema_decay) steps does not
    averaged = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay > 0 else None)
    scored = averaged.module if averaged is not None else model
    loss_fn = nn.BCEWithLogitsLoss()
    meta_all = torch.as_tensor(meta_tf(train.metadata))
    history = []
    best_auc, best_state, since_best = -np.inf, None, 0
    for epoch in range(config.epochs):
        net.train()
        order = keyed_rng(seed, f"train:{key}:order", epoch).permutation(len(train))
        losses = []
        for start in range(0, len(order), config.batch_size):
            idx = np.sort(order[start:start + config.batch_size])[rank::world]
            x = augment(torch.as_tensor(train.images[idx]), config, gen)
            if config.centre_mask_prob > 0:
                x = centre_mask(x, train.theta_e_arcsec[idx], config, gen, config.input_spec, pixel_scale_arcsec)
            y = torch.as_tensor(train.labels[idx]).to(device)
            loss = loss_fn(net(x.to(device), meta_all[idx].to(device)), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train@{generation}: non-finite loss {loss.item()} at epoch {epoch}, "
                                         f"batch starting {start}; task ids {train.task_id[idx].tolist()}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(loss.item())
        val_scores = predict(scored, val.images, meta_tf(val.metadata), config.batch_size)
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                 "val_loss": float(binary_cross_entropy(val.labels, val_scores)),
                 "val_auc": float(auc_or_nan(val.labels, val_scores))}
        improved = entry["val_auc"] >= best_auc + config.early_stopping_min_delta or best_state is None
        if improved:
            best_auc, since_best = entry["val_auc"], 0
            best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        else:
            since_best += 1
        entry["best_val_auc"], entry["is_best"] = float(best_auc), bool(improved)
        history.append(entry)
        if log is not None:
            log(epoch, entry)
        if config.early_stopping_patience and since_best >= config.early_stopping_patience:
            break
    if (config.early_stopping_patience or averaged is not None) and best_state is not None:
        model.load_state_dict(best_state)
    if world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    return model.cpu(), meta_tf, history


def predict(model: nn.Module, images: np.ndarray, metadata: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Sigmoid scores of normalised images (eval mode, no grad)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            logits = model(torch.as_tensor(images[sl]).to(device), torch.as_tensor(metadata[sl]).to(device))
            out.append(torch.sigmoid(logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def binary_cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))) if len(p) else float("nan")


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (NaN when one class is absent)."""
    from darkhalo.core.metrics import roc_auc

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc(labels, scores))


def checkpoint_dict(model: nn.Module, config: TrainConfig, meta_tf: MetadataTransform, spec: Normalization,
                    generation: str, epoch: int, data_hashes: dict, source: str = "trained") -> dict:
    """Everything inference needs, loadable with torch.load(weights_only=True)."""
    cfg = asdict(config)
    cfg["metadata_columns"] = list(config.metadata_columns)
    return {"state_dict": model.state_dict(), "architecture": config.architecture, "width": config.width,
            "metadata_columns": list(config.metadata_columns), "metadata_transform": meta_tf.to_dict(),
            "normalization": spec.to_dict(), "generation": generation, "epoch": epoch, "source": source,
            "train_config": cfg, "data_hashes": dict(data_hashes)}

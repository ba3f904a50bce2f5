"""Distributed data-parallel training: two CPU processes (gloo) end with identical weights."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from darkhalo.ml.models import build_model
from darkhalo.core.rng import keyed_rng
from darkhalo.ml.config import TrainConfig
from darkhalo.ml.training import StampSet, train_model


def tiny_set(n: int, seed: int) -> StampSet:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.float32)
    images = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    images[labels == 1, :, 28:36, 28:36] += 2.0  # something to learn
    return StampSet(images, labels, np.arange(n), np.zeros((n, 0)), np.full(n, 1.0), {})


def rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        config = TrainConfig(epochs=2, batch_size=16, threads=1, centre_mask_prob=0.5, centre_mask_radius_pix=4)
        model, _, history = train_model(config, tiny_set(48, 1), tiny_set(16, 2), seed=5, generation="ddp")
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and a real optimisation ran: the weights left their (seeded) initial values
    torch.manual_seed(keyed_rng(5, "train:ddp:init").integers(2**62))
    initial = build_model("resnet_small", 0).state_dict()
    assert not torch.equal(a["head.2.weight"], initial["head.2.weight"])

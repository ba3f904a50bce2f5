"""Training and inference throughput of the lens finders, stamps per second, as JSON.

Measures, on random 3x64x64 inputs (throughput does not depend on content):
training steps (forward + backward + AdamW) and inference (eval, no grad) for
``resnet_small``, ``resnet18`` and ``gen5_convnext`` on the CPU with ``--threads``
threads, and on CUDA when a device is present (``--device auto``).  The relative
speed of the architectures is measured in the same process.  The GPU profile:
``--profile-rows R --profile-epochs E`` adds each architecture's projected training
time (minutes) for R training stamps x E epochs at the measured rate (Gen5' at 10x the
default data: R = 77,600, E = 10; README "Performance").
Run from the repository root: python -m benchmarks.train_throughput [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from darkhalo.ml.models import build_model


def rate(model, device, batch: int, steps: int, train: bool, size: int = 64) -> float:
    """Stamps per second of ``steps`` training steps (``train``) or inference batches of ``size`` px stamps."""
    n_meta = 2 if model.__class__.__name__ == "Gen5ConvNeXt" else 0
    x = torch.randn(batch, 3, size, size, device=device)
    meta = torch.randn(batch, n_meta, device=device)
    y = (torch.rand(batch, device=device) > 0.5).float()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train(train)

    def step():
        if train:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, meta), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x, meta)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=64, help="stamp side (px): 64 full, 32 Gen5' residual crop")
    parser.add_argument("--profile-rows", type=int, default=0, help="training stamps for the projected time")
    parser.add_argument("--profile-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"cpu_threads": args.threads, "batch": args.batch, "stamp_px": args.size}
    if args.profile_rows:
        result["profile"] = {"train_rows": args.profile_rows, "epochs": args.profile_epochs}
    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        result["cuda_device"] = torch.cuda.get_device_name(0)
    for device in devices:
        for arch in ("resnet_small", "resnet18", "gen5_convnext"):
            n_meta = 2 if arch == "gen5_convnext" else 0
            torch.manual_seed(0)
            model = build_model(arch, n_meta).to(device)
            steps = args.steps if (device.type == "cuda" or arch == "resnet_small") else max(1, args.steps // 5)
            train_rate = rate(model, device, args.batch, steps, True, args.size)
            result[f"{device.type}_{arch}_train_stamps_per_s"] = train_rate
            result[f"{device.type}_{arch}_inference_stamps_per_s"] = rate(model, device, args.batch, steps, False,
                                                                          args.size)
            if args.profile_rows:
                result[f"{device.type}_{arch}_projected_train_minutes"] = (
                    args.profile_rows * args.profile_epochs / train_rate / 60.0)
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()

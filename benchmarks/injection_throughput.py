"""Injection engine throughput vs lenstronomy, 3-band 64x64 arcs, as JSON.

In one process, on one core (torch and BLAS threads = 1): the torch engine
(adaptive supersampling 4, analytic Moffat transfer functions) and lenstronomy
(SIE+SHEAR+SERSIC_ELLIPSE+clump GAUSSIANs, uniform supersampling 4, the same
Moffat kernel as a PIXEL PSF; one ImageModel per band, since the PSF differs per
stamp and band), on the same random gen5p-like parameter sets.  Accuracy is
reported alongside (engine vs lenstronomy, worst over the set), so the speed
ratio is at matched accuracy.  With --device cuda (or a CUDA device present and
--device auto) the engine's GPU rate is measured too.
Run from the repository root: python -m benchmarks.injection_throughput [--n 400]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from darkhalo.injection import render_columns  # noqa: E402
from darkhalo.lensing import RenderSettings  # noqa: E402
from darkhalo.lenstronomy_reference import random_arc_rows, redraw_arc, rows_to_columns  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="arcs for the engine")
    parser.add_argument("--n-reference", type=int, default=40, help="arcs for lenstronomy")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = random_arc_rows(args.n, np.random.default_rng(0), n_clumps=2)
    cols = rows_to_columns(rows)
    settings = RenderSettings(supersample=4)
    render_columns(cols, settings, batch_size=64)  # warm-up
    start = time.perf_counter()
    ours, _ = render_columns(cols, settings, batch_size=64)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    refs = [redraw_arc(r) for r in rows[:args.n_reference]]
    t_ref = time.perf_counter() - start
    worst = max(float(np.abs(a - r).max() / r.max()) for a, r in zip(ours, refs))
    result = {
        "cores": 1,
        "engine_cpu_stamps_per_s": args.n / t_ours,
        "lenstronomy_stamps_per_s": args.n_reference / t_ref,
        "speedup_vs_lenstronomy_per_core": (args.n / t_ours) / (args.n_reference / t_ref),
        "max_abs_diff_over_peak": worst,
        "supersample": 4,
    }
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        big = rows_to_columns(random_arc_rows(20000, np.random.default_rng(1), n_clumps=2))
        render_columns(big, settings, device="cuda", batch_size=2048)
        torch.cuda.synchronize()
        start = time.perf_counter()
        gpu, _ = render_columns(big, settings, device="cuda", batch_size=2048)
        torch.cuda.synchronize()
        result["engine_cuda_stamps_per_s"] = 20000 / (time.perf_counter() - start)
        result["cuda_device"] = torch.cuda.get_device_name(0)
        cpu, _ = render_columns({k: v[:64] for k, v in big.items()}, settings)
        result["cuda_vs_cpu_max_abs_diff_over_peak"] = float(np.abs(gpu[:64] - cpu).max() / np.abs(cpu).max())
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()

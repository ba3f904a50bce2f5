"""Injection engine throughput vs its peers, 3-band 64x64 arcs with two clumps, as JSON.

In one process on one thread (torch, BLAS and OpenMP pools pinned to 1), on
the same random parameter sets (SIE + shear + Sersic + 2 Gaussian clumps, three
Moffat PSFs per stamp):
  * ``engine``: darkhalo's torch engine as params.yaml configures it (``inject``:
    adaptive supersampling on ``tile_pix`` tiles, analytic Moffat transfer functions);
    ``engine_tile8``: the same with 8-px tiles (RenderSettings' default);
  * ``lenstronomy_uniform``: lenstronomy as its experts would set it up
    (darkhalo.physics.lenstronomy_reference.ArcRenderer: models and grid built once, one
    ray-shoot for the three bands, unit components, per-band pixel-kernel FFT),
    uniform supersampling;
  * ``lenstronomy_adaptive``: the same on lenstronomy's AdaptiveGrid, supersampled
    on the engine's tile rule (pixel-centre pass, tiles above refine_rel x peak,
    grown by one tile), the mask found per stamp inside the timed region;
  * ``caustics``: caustics (batched torch) as its experts would set it up
    (benchmarks/caustics_peer.py: functional API, SIE + shear + Sersic + Gaussian clumps,
    one ray-shoot for the three bands, uniform supersampling, pixel-kernel FFT per band,
    64 stamps per call, columns prepared outside the timed region as the engine's are);
    reported as not installed when it cannot be imported.
Every contestant is built and called once before timing (imports, set-up and
first-call costs reported under ``first_call``); then ``--rounds`` interleaved
rounds over all rows, medians of CPU time and wall time.  Agreement: the worst
row's max |engine - peer| / peak, on the same rows.
Run from the repository root: python -m benchmarks.injection_throughput [--n 400 --rounds 5]
"""
from __future__ import annotations

from benchmarks import _timing  # first: sets the thread environment before numpy/torch load

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from darkhalo.sim.injection import engine_settings, render_columns  # noqa: E402
from darkhalo.physics.lensing import RenderSettings  # noqa: E402
from darkhalo.physics.lenstronomy_reference import ArcRenderer, random_arc_rows, rows_to_columns  # noqa: E402
from darkhalo.core.units import PIXEL_SCALE_ARCSEC  # noqa: E402

N_CLUMPS = 2
CAUSTICS_NOTE = "caustics is not installed (requirements.txt pins it: make env)"


def engine_settings_from_params(path: str = "params.yaml") -> RenderSettings:
    """The injection engine's rendering as params.yaml configures it (64-px stamps)."""
    e = engine_settings(yaml.safe_load(Path(path).read_text()), path)
    return RenderSettings(64, e.supersample, e.moffat_beta, PIXEL_SCALE_ARCSEC, e.tile_pix, e.refine_rel)


def cuda_rate(settings: RenderSettings, n: int = 20000) -> dict:
    """The engine's throughput on the GPU (warmed up first), and its agreement with the CPU."""
    cols = rows_to_columns(random_arc_rows(n, np.random.default_rng(1), n_clumps=N_CLUMPS))
    render_columns(cols, settings, device="cuda", batch_size=2048)
    torch.cuda.synchronize()
    _, start = _timing.clock()
    gpu, _ = render_columns(cols, settings, device="cuda", batch_size=2048)
    torch.cuda.synchronize()
    wall = _timing.clock()[1] - start
    cpu, _ = render_columns({k: v[:64] for k, v in cols.items()}, settings)
    return {"device": torch.cuda.get_device_name(0), "stamps_per_wall_s": round(n / wall, 1),
            "vs_cpu_max_abs_diff_over_peak": _timing.max_diff_over_peak(gpu[:64], cpu)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="parameter sets, rendered by every contestant each round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (medians reported)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda/auto to add the engine's GPU rate")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    threads = _timing.single_thread()
    rows = random_arc_rows(args.n, np.random.default_rng(0), n_clumps=N_CLUMPS)
    cols = rows_to_columns(rows)
    settings = engine_settings_from_params(args.params)
    tile8 = RenderSettings(64, settings.supersample, settings.moffat_beta, PIXEL_SCALE_ARCSEC, 8, settings.refine_rel)

    def engine(s):
        return lambda: render_columns(cols, s, batch_size=64)[0]

    def lenstronomy(adaptive):
        renderer = ArcRenderer(64, settings.supersample, N_CLUMPS, settings.tile_pix if adaptive else None,
                               settings.refine_rel)
        return lambda: np.stack([renderer.render(r) for r in rows])

    def caustics():
        from benchmarks.caustics_peer import CausticsRenderer

        renderer = CausticsRenderer(settings, N_CLUMPS, batch=64)
        prepared = renderer.columns(rows)
        return lambda: renderer.render(prepared)

    builders = {"engine": lambda: engine(settings), "engine_tile8": lambda: engine(tile8),
                "lenstronomy_uniform": lambda: lenstronomy(False), "lenstronomy_adaptive": lambda: lenstronomy(True)}
    has_caustics = importlib.util.find_spec("caustics") is not None
    if has_caustics:
        builders["caustics"] = caustics
    first, fns, outputs = {}, {}, {}
    for name, build in builders.items():   # imports, set-up and the first call, outside the timed rounds
        fns[name], setup = _timing.first_call(build)
        outputs[name], call = _timing.first_call(fns[name])
        first[name] = {"setup": setup, "first_call_all_rows": call}
    timings = _timing.interleaved({name: (args.n, fn) for name, fn in fns.items()}, args.rounds)
    peers = ("lenstronomy_uniform", "lenstronomy_adaptive") + (("caustics",) if has_caustics else ())
    result = {
        "ratios": {"engine_vs_" + p: _timing.ratio(timings, "engine", p) for p in peers}
        | {"engine_tile8_vs_" + p: _timing.ratio(timings, "engine_tile8", p) for p in peers}
        | ({} if has_caustics else {"engine_vs_caustics": "not installed"}),
        "absolute": timings | ({} if has_caustics else {"caustics": {"status": "not installed", "note": CAUSTICS_NOTE}}),
        "agreement_max_abs_diff_over_peak": {
            **{f"engine_vs_{p}": _timing.max_diff_over_peak(outputs["engine"], outputs[p]) for p in peers},
            "engine_tile8_vs_lenstronomy_uniform": _timing.max_diff_over_peak(outputs["engine_tile8"],
                                                                              outputs["lenstronomy_uniform"]),
            "lenstronomy_adaptive_vs_uniform": _timing.max_diff_over_peak(outputs["lenstronomy_adaptive"],
                                                                          outputs["lenstronomy_uniform"]),
            **({"caustics_vs_lenstronomy_uniform": _timing.max_diff_over_peak(outputs["caustics"],
                                                                              outputs["lenstronomy_uniform"])}
               if has_caustics else {}),
        },
        "first_call": first,
        "config": {"rows": args.n, "rounds": args.rounds, "stamp": "3 x 64 x 64", "clumps": N_CLUMPS,
                   "supersample": settings.supersample, "tile_pix": settings.tile_pix,
                   "refine_rel": settings.refine_rel, "moffat_beta": settings.moffat_beta, "engine_batch": 64},
    }
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        result["engine_cuda"] = cuda_rate(settings)
    result["machine"] = _timing.machine(threads, load_before, ("torch", "numpy", "scipy", "lenstronomy", "caustics"))
    _timing.emit(result)


if __name__ == "__main__":
    main()

"""Survey rendering throughput, stamps per second per core, as JSON.

Measures, in one process on one core:
  * `survey_full`: simulate_parents end to end (LRG, neighbours, stars, PSF,
    noise, defects) for grz 64x64 stamps;
  * `lrg_only`: our LRG light (Sersic, supersample 4, adaptive centre) convolved
    with each band's Moffat PSF, the part with a reference implementation;
  * `lenstronomy_lrg_only`: the same LRG images with lenstronomy's ImageModel
    (SERSIC_ELLIPSE, PIXEL PSF from the same Moffat kernel, supersampling 4),
    the model rebuilt per stamp and band because the PSF differs per stamp.
Run from the repository root: python -m benchmarks.survey_throughput [--n 300]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.signal import fftconvolve  # noqa: E402

from darkhalo.profiles import render_sersic, sersic_sb_at_reff  # noqa: E402
from darkhalo.psf import moffat_kernels  # noqa: E402
from darkhalo.survey import SurveyConfig, simulate_parents, sky_patches  # noqa: E402
from darkhalo.units import PIXEL_SCALE_ARCSEC  # noqa: E402


def timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    config = SurveyConfig(seed=1, n_parents=args.n, workers=1)
    patches = sky_patches(config)
    ids = np.arange(args.n)
    t_full = timed(lambda: simulate_parents(config, patches, ids), repeats=2)

    rng = np.random.default_rng(0)
    n_lrg = 60
    reff = rng.uniform(0.4, 2.0, n_lrg)
    n_s = rng.choice([1.0, 4.0], n_lrg)
    q = rng.uniform(0.5, 1.0, n_lrg)
    phi = rng.uniform(0, np.pi, n_lrg)
    fwhm = rng.uniform(1.0, 1.5, (n_lrg, 3))

    def ours():
        shape = render_sersic(np.ones(n_lrg), reff, n_s, q, phi, np.zeros(n_lrg), np.zeros(n_lrg), 64, supersample=4)
        for j in range(3):
            fftconvolve(shape, moffat_kernels(fwhm[:, j], 64), mode="same", axes=(1, 2))

    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel
    import lenstronomy.Util.simulation_util as sim_util

    kwargs_data = sim_util.data_configure_simple(num_pix=64, delta_pix=PIXEL_SCALE_ARCSEC, exposure_time=1,
                                                 background_rms=1)
    light = LightModel(["SERSIC_ELLIPSE"])

    def theirs():
        for i in range(n_lrg):
            e = (1 - q[i]) / (1 + q[i])
            kw = [{"amp": float(sersic_sb_at_reff(1.0, reff[i], n_s[i])), "R_sersic": reff[i], "n_sersic": n_s[i],
                   "e1": e * np.cos(2 * phi[i]), "e2": e * np.sin(2 * phi[i]), "center_x": 0.0, "center_y": 0.0}]
            for j in range(3):
                psf = PSF(psf_type="PIXEL", kernel_point_source=moffat_kernels([fwhm[i, j]], 64)[0])
                model = ImageModel(ImageData(**kwargs_data), psf, lens_light_model_class=light,
                                   kwargs_numerics={"supersampling_factor": 4, "supersampling_convolution": False})
                model.image(kwargs_lens_light=kw)

    t_ours, t_theirs = timed(ours), timed(theirs, repeats=1)
    result = {
        "cores": 1,
        "survey_full_stamps_per_s": args.n / t_full,
        "lrg_only_stamps_per_s": n_lrg / t_ours,
        "lenstronomy_lrg_only_stamps_per_s": n_lrg / t_theirs,
        "lrg_only_speedup_vs_lenstronomy": t_theirs / t_ours,
        "n_stamps": args.n,
    }
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()

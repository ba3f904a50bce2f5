"""Hard-negative and arc-visibility throughput, per core, as JSON.

Measures, in one process on one core:
  * `hard_negatives_simulation`: simulate_hard_negatives without the visibility
    measurement (site, core, features, neighbours, PSF, noise, defects), stamps/s;
  * `arc_visibility`: darkhalo.physics.visibility.arc_visibility (Sersic lens-light fit,
    annulus S/N) on survey LRG stamps, stamps/s;
  * `visibility_null` / `visibility_arc_22p5`: percentiles 5/50/95 of the
    annulus S/N (theta_E 1.5") on the same stamps without an arc and with a
    22.5 mag (r) test arc, and its median for a 21.3 mag arc.
Run from the repository root: python -m benchmarks.hard_negatives_throughput [--n 80]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from darkhalo.sim.hard_negatives import HardNegativesConfig, simulate_hard_negatives  # noqa: E402
from darkhalo.physics.profiles import pixel_coords_arcsec  # noqa: E402
from darkhalo.physics.psf import convolve_moffat  # noqa: E402
from darkhalo.io.stamps import stamps_from_native  # noqa: E402
from darkhalo.sim.survey import SurveyConfig, simulate_parents, sky_patches  # noqa: E402
from darkhalo.physics.visibility import arc_visibility  # noqa: E402

THETA_E = 1.5


def arc(flux_r, fwhm):
    """Gaussian ring segment at THETA_E (radial sigma 0.1", angular sigma 0.5 rad), PSF-convolved."""
    x, y = pixel_coords_arcsec(64)
    shape = np.exp(-0.5 * ((np.hypot(x, y) - THETA_E) / 0.1) ** 2) * np.exp(-0.5 * (np.arctan2(y, x) / 0.5) ** 2)
    shape /= shape.sum()
    return convolve_moffat(np.stack([shape * flux_r * c for c in (0.9, 1.0, 0.85)]), np.asarray(fwhm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=80)
    args = parser.parse_args()
    config = SurveyConfig(seed=20261128, n_parents=args.n, n_sky_patches=50)
    patches = sky_patches(config)
    hn = HardNegativesConfig(measure_visibility=False)
    start = time.perf_counter()
    simulate_hard_negatives(config, hn, patches, np.arange(args.n))
    hn_rate = args.n / (time.perf_counter() - start)

    table = simulate_parents(config, patches, np.arange(args.n))
    batch = stamps_from_native(table)
    meta = table.select(["sim_defect", "psfsize_g", "psfsize_r", "psfsize_z"]).to_pylist()
    clean = [i for i, m in enumerate(meta) if not m["sim_defect"]]
    results = {0.0: [], 1.0: [], 3.0: []}
    start = time.perf_counter()
    for i in clean:
        fwhm = [meta[i][f"psfsize_{b}"] for b in "grz"]
        results[0.0].append(arc_visibility(batch.image[i], batch.invvar[i], fwhm, THETA_E).snr)
    vis_rate = len(clean) / (time.perf_counter() - start)
    for i in clean:
        fwhm = [meta[i][f"psfsize_{b}"] for b in "grz"]
        for flux in (1.0, 3.0):
            image = batch.image[i] + arc(flux, fwhm)
            results[flux].append(arc_visibility(image, batch.invvar[i], fwhm, THETA_E).snr)
    print(json.dumps({
        "hard_negatives_simulation_stamps_per_s": round(hn_rate, 1),
        "arc_visibility_stamps_per_s": round(vis_rate, 1),
        "visibility_null_5_50_95": [round(float(v), 2) for v in np.percentile(results[0.0], [5, 50, 95])],
        "visibility_arc_22p5_5_50_95": [round(float(v), 2) for v in np.percentile(results[1.0], [5, 50, 95])],
        "visibility_arc_21p3_median": round(float(np.median(results[3.0])), 2),
        "n_stamps": len(clean),
    }, indent=2))


if __name__ == "__main__":
    main()

"""Survey rendering throughput vs lenstronomy, grz 64x64 LRG stamps, as JSON.

In one process on one thread (torch, BLAS and OpenMP pools pinned to 1):
  * ``lrg_ours``: our LRG light (darkhalo.physics.profiles.render_sersic: supersample 4, the
    3x3 central pixels at 32) coloured per band and convolved with each band's
    Moffat kernel (darkhalo.physics.psf.convolve_moffat: real FFTs at 96), batched as
    darkhalo.sim.survey does;
  * ``lrg_lenstronomy``: lenstronomy as its experts would set it up: one LightModel
    and one supersampled grid (RegularGrid, supersampling 4) built once, one
    render per stamp, three convolutions (PixelKernelConvolution, FFT) with the
    same kernels;
  * ``lrg_lenstronomy_centre32``: the same plus the 3x3 central pixels redone at
    32x32 (a 3x3-pixel RegularGrid built once, shifted per stamp), i.e. our
    sampling (matched accuracy);
  * ``survey_full``: simulate_parents end to end (LRG, neighbours, stars, PSF,
    noise, defects), no peer.
Every contestant is built and called once before timing (``first_call``); then
``--rounds`` interleaved rounds, medians of CPU time and wall time.  Agreement:
the worst stamp's max |ours - lenstronomy| / peak, on the same LRGs.
Run from the repository root: python -m benchmarks.survey_throughput [--n-lrg 200 --n-full 200 --rounds 5]
"""
from __future__ import annotations

from benchmarks import _timing  # first: sets the thread environment before numpy/torch load

import argparse  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402

from darkhalo.physics.lenstronomy_reference import pixel_frame  # noqa: E402
from darkhalo.physics.profiles import render_sersic, sersic_sb_at_reff  # noqa: E402
from darkhalo.physics.psf import convolve_moffat, moffat_kernels  # noqa: E402
from darkhalo.sim.survey import SurveyConfig, simulate_parents, sky_patches  # noqa: E402
from darkhalo.core.units import PIXEL_SCALE_ARCSEC  # noqa: E402

SIZE, SUPERSAMPLE, CENTRE_SUPERSAMPLE, CENTRE_BOX = 64, 4, 32, 3


def random_lrgs(n: int, rng: np.random.Generator) -> dict:
    """Random LRG shapes, small centre offsets, grz fluxes and grz PSF FWHMs."""
    return {"reff": rng.uniform(0.4, 2.0, n), "n": rng.choice([1.0, 4.0], n), "q": rng.uniform(0.5, 1.0, n),
            "phi": rng.uniform(0, np.pi, n), "x0": rng.uniform(-0.13, 0.13, n), "y0": rng.uniform(-0.13, 0.13, n),
            "flux": rng.uniform(1.0, 20.0, (n, 3)), "fwhm": rng.uniform(1.0, 1.5, (n, 3))}


def ours(lrg: dict):
    """Our renderer over all LRGs: (N, 3, S, S)."""
    n = len(lrg["reff"])
    shape = render_sersic(np.ones(n), lrg["reff"], lrg["n"], lrg["q"], lrg["phi"], lrg["x0"], lrg["y0"], SIZE,
                          supersample=SUPERSAMPLE, centre_supersample=CENTRE_SUPERSAMPLE, centre_box_pix=CENTRE_BOX)
    coloured = shape[:, None] * lrg["flux"][:, :, None, None]   # (N, 3, S, S), the bands batched as the survey does
    return convolve_moffat(coloured.reshape(-1, SIZE, SIZE), lrg["fwhm"].reshape(-1)).reshape(n, 3, SIZE, SIZE)


class LenstronomyLRG:
    """lenstronomy's LRG light + PSF, models and grid built once (optionally the centre box at 32x)."""

    def __init__(self, centre_refined: bool):
        from lenstronomy.ImSim.Numerics.convolution import PixelKernelConvolution
        from lenstronomy.ImSim.Numerics.grid import RegularGrid
        from lenstronomy.LightModel.light_model import LightModel

        self.frame = pixel_frame(SIZE)
        self.light = LightModel(["SERSIC_ELLIPSE"])
        self.grid = RegularGrid(SIZE, SIZE, *self.frame, supersampling_factor=SUPERSAMPLE)
        # the central box: a CENTRE_BOX^2-pixel grid at the stamp's first pixels, shifted per stamp
        self.box = RegularGrid(CENTRE_BOX, CENTRE_BOX, *self.frame, supersampling_factor=CENTRE_SUPERSAMPLE)
        self.centre_refined, self.convolution = centre_refined, PixelKernelConvolution

    def _draw(self, grid, kwargs, shift=(0.0, 0.0)):
        """Flux per pixel of the unit-flux Sersic on ``grid`` moved by ``shift`` (arcsec)."""
        x, y = grid.coordinates_evaluate
        sb = self.light.surface_brightness(x + shift[0], y + shift[1], kwargs)
        return grid.flux_array2image_low_high(sb)[0] * PIXEL_SCALE_ARCSEC**2

    def __call__(self, lrg: dict):
        """All LRGs: (N, 3, S, S)."""
        n = len(lrg["reff"])
        kernels = [moffat_kernels(lrg["fwhm"][:, j], SIZE) for j in range(3)]
        out = np.empty((n, 3, SIZE, SIZE))
        for i in range(n):
            e = (1 - lrg["q"][i]) / (1 + lrg["q"][i])
            kwargs = [{"amp": float(sersic_sb_at_reff(1.0, lrg["reff"][i], lrg["n"][i])), "R_sersic": lrg["reff"][i],
                       "n_sersic": lrg["n"][i], "e1": e * np.cos(2 * lrg["phi"][i]), "e2": e * np.sin(2 * lrg["phi"][i]),
                       "center_x": lrg["x0"][i], "center_y": lrg["y0"][i]}]
            unit = self._draw(self.grid, kwargs)
            if self.centre_refined:   # the box around the centre, as render_sersic picks it
                col, row = (int(np.clip(np.rint(c / PIXEL_SCALE_ARCSEC + (SIZE - 1) / 2.0) - CENTRE_BOX // 2,
                                        0, SIZE - CENTRE_BOX)) for c in (lrg["x0"][i], lrg["y0"][i]))
                unit[row:row + CENTRE_BOX, col:col + CENTRE_BOX] = self._draw(
                    self.box, kwargs, (col * PIXEL_SCALE_ARCSEC, row * PIXEL_SCALE_ARCSEC))
            for j in range(3):
                out[i, j] = self.convolution(kernels[j][i], convolution_type="fft").convolution2d(unit * lrg["flux"][i, j])
        return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-lrg", type=int, default=200, help="LRGs rendered by each renderer each round")
    parser.add_argument("--n-full", type=int, default=200, help="parents simulated end to end each round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (medians reported)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    threads = _timing.single_thread()
    lrg = random_lrgs(args.n_lrg, np.random.default_rng(0))
    config = SurveyConfig(seed=1, n_parents=args.n_full, workers=1)
    patches = sky_patches(config)
    ids = np.arange(args.n_full)

    def lenstronomy(centre_refined):
        model = LenstronomyLRG(centre_refined)
        return lambda: model(lrg)

    builders = {"lrg_ours": lambda: (lambda: ours(lrg)),
                "lrg_lenstronomy": lambda: lenstronomy(False),
                "lrg_lenstronomy_centre32": lambda: lenstronomy(True),
                "survey_full": lambda: (lambda: simulate_parents(config, patches, ids))}
    first, fns, outputs = {}, {}, {}
    for name, build in builders.items():   # imports, set-up and the first call, outside the timed rounds
        fns[name], setup = _timing.first_call(build)
        outputs[name], call = _timing.first_call(fns[name])
        first[name] = {"setup": setup, "first_call_all_rows": call}
    sizes = {name: args.n_full if name == "survey_full" else args.n_lrg for name in fns}
    timings = _timing.interleaved({name: (sizes[name], fn) for name, fn in fns.items()}, args.rounds)
    peers = ("lrg_lenstronomy", "lrg_lenstronomy_centre32")
    result = {
        "ratios": {"lrg_ours_vs_" + p.removeprefix("lrg_"): _timing.ratio(timings, "lrg_ours", p) for p in peers},
        "absolute": timings,
        "agreement_max_abs_diff_over_peak": {
            "lrg_ours_vs_" + p.removeprefix("lrg_"): _timing.max_diff_over_peak(outputs["lrg_ours"], outputs[p])
            for p in peers},
        "first_call": first,
        "config": {"lrg_stamps": args.n_lrg, "survey_parents": args.n_full, "rounds": args.rounds,
                   "stamp": "3 x 64 x 64", "supersample": SUPERSAMPLE, "centre_box_pix": CENTRE_BOX,
                   "centre_supersample": CENTRE_SUPERSAMPLE},
        "machine": _timing.machine(threads, load_before, ("torch", "numpy", "scipy", "lenstronomy")),
    }
    _timing.emit(result)


if __name__ == "__main__":
    main()

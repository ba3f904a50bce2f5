"""Positives for one generation: priors -> candidate arcs -> arc-SNR rejection -> injected stamps.

Pure functions over batches of parent rows (survey catalogue + pixels + split),
so the same code runs in a local process pool or on Spark.  Every draw of a
task (parent, replicate) comes from ``task_seed64``, recorded in its row:

    candidates   attempt k = 0..n_candidates-1 drawn in order from the task's stream
    arc_snr      matched-filter S/N of each candidate's noiseless arc on its parent
    acceptance   a(arc_snr) = min(1, target(s) / (c * proposal(s))), proposal estimated
                 from all candidates of the dataset (first pass); first accepted wins
    injection    parent + arc (+ the arc's photon noise), masked pixels stay masked

One module because the two passes (candidate S/N, then acceptance and injection) share the task
streams, the candidate layout and the written columns; split, each half would import the other's
internals.

Without an arc-SNR target every task takes its first candidate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import torch
from scipy.stats import kstest

from darkhalo.physics.lensing import CLUMP_KEYS, LENS_KEYS, SOURCE_KEYS, RenderSettings, render_arcs
from darkhalo.physics.normalize import core_mask
from darkhalo.core.params import FRACTION, POSITIVE, PRIOR_NAMES, ParamError, build, section
from darkhalo.sim.priors import Prior, PriorSet, parse_prior
from darkhalo.core.rng import stream_id
from darkhalo.core.runtime import runtime_config
from darkhalo.io.source_bank import SourceBank
from darkhalo.io.stamps import StampBatch, native_columns
from darkhalo.core.units import BANDS, PIXEL_SCALE_ARCSEC, catalogue_precision, flux_nmgy_from_mag, pixel_area_arcsec2

CLUMP_BLUE_DGR, CLUMP_BLUE_DRZ = -0.3, -0.2  # star-forming clumps are bluer than the disc (mag)


@dataclass(frozen=True)
class EngineSettings:
    """``inject:`` params shared by every generation (rendering, noise, batching)."""

    supersample: int = 4
    moffat_beta: float = 3.5
    tile_pix: int = 8
    refine_rel: float = 1e-3
    noise: bool = True
    sky_mag_per_arcsec2_g: float = 22.0
    sky_mag_per_arcsec2_r: float = 21.0
    sky_mag_per_arcsec2_z: float = 19.9
    core_radius_pix: float = 4.0
    batch_size: int = 64
    acceptance_bins: int = 24
    acceptance_cap_quantile: float = 0.95
    row_group_rows: int = 256
    # Execution settings, from ``runtime:`` (darkhalo/core/runtime.py), not from ``inject:``.
    device: str = "cpu"    # runtime.device: cpu | cuda | auto
    workers: int = 2       # runtime.workers: shard processes
    engine: str = "local"  # runtime.engine: where shards run, local (process pool) | spark (darkhalo/io/parallel.py)


ENGINE_RULES = {
    "supersample": POSITIVE, "moffat_beta": (lambda v: v > 1, "must be > 1"), "tile_pix": POSITIVE,
    "refine_rel": FRACTION, "core_radius_pix": POSITIVE, "batch_size": POSITIVE,
    "acceptance_bins": POSITIVE, "acceptance_cap_quantile": FRACTION, "row_group_rows": POSITIVE,
}


@dataclass(frozen=True)
class GenerationSpec:
    """One generation's injection design (``generations.<name>`` in params)."""

    name: str
    priors: PriorSet
    n_clumps: int = 0
    arc_snr_target: Prior | None = None
    n_candidates: int = 1
    replicates: int = 1
    source_bank: str = ""  # HDF5 bank of real morphologies (source_bank.py); "" = Sersic sources


@dataclass(frozen=True)
class InjectConfig:
    seed: int
    stamp_size: int
    engine: EngineSettings
    generation: GenerationSpec

    @property
    def render(self) -> RenderSettings:
        e = self.engine
        return RenderSettings(self.stamp_size, e.supersample, e.moffat_beta, PIXEL_SCALE_ARCSEC, e.tile_pix,
                              e.refine_rel)


def engine_settings(params: dict, path: str) -> EngineSettings:
    """EngineSettings from the ``inject`` params section (its ``default_priors`` excluded) and ``runtime``."""
    values = {k: v for k, v in section(params, "inject", path).items() if k != "default_priors"}
    rt = runtime_config(params, path)
    return build(EngineSettings, values, "inject", path, ENGINE_RULES, device=rt.device, workers=rt.workers,
                 engine=rt.engine)


def generation_spec(params: dict, name: str, path: str) -> GenerationSpec:
    """GenerationSpec of ``generations.<name>``: default priors overridden by the generation's."""
    gens = section(params, "generations", path)
    if name not in gens or not isinstance(gens[name], dict):
        raise ParamError(f"{path}: generations.{name} is not defined (have: {', '.join(gens)})")
    defaults = section(params, "inject", path).get("default_priors") or {}
    return injection_spec(name, gens[name], defaults, f"generations.{name}", path)


def benchmark_spec(params: dict, path: str) -> GenerationSpec:
    """The frozen benchmark's injection design (``benchmark.injection``): complete in itself, so that no
    generation's params (nor ``inject.default_priors``) can change it."""
    spec = section(section(params, "benchmark", path), "injection", path)
    return injection_spec("benchmark", spec, {}, "benchmark.injection", path)


def injection_spec(name: str, spec: dict, default_priors: dict, key: str, path: str) -> GenerationSpec:
    """GenerationSpec from a mapping with priors / n_clumps / arc_snr_target / n_candidates / replicates."""
    where = f"{path}: {key}"
    merged = {**default_priors, **(spec.get("priors") or {})}
    priors = PriorSet.from_specs(merged, f"{path}: {key}.priors (+ inject.default_priors)", PRIOR_NAMES)
    target = spec.get("arc_snr_target")
    target_prior = None
    if target is not None:
        target_prior = parse_prior("arc_snr_target", target, where, ("uniform", "log_uniform"))
    ints = {}
    for k, default, minimum in (("n_clumps", 0, 0), ("n_candidates", 1, 1), ("replicates", 1, 1)):
        value = spec.get(k, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ParamError(f"{where}.{k} = {value!r}: must be an integer >= {minimum}")
        ints[k] = value
    if target_prior is None and ints["n_candidates"] != 1:
        raise ParamError(f"{where}.n_candidates = {ints['n_candidates']}: needs an arc_snr_target")
    bank = spec.get("source_bank", "") or ""
    if not isinstance(bank, str):
        raise ParamError(f"{where}.source_bank = {bank!r}: must be a path (or empty)")
    if bank and ints["n_clumps"]:
        raise ParamError(f"{where}: a source_bank source has its own morphology; set n_clumps: 0")
    return GenerationSpec(name, priors, ints["n_clumps"], target_prior, ints["n_candidates"], ints["replicates"],
                          bank)


def task_seed64(seed: int, generation: str, parent_id: int, replicate: int) -> int:
    """Non-negative 63-bit seed of one task; every draw of the task descends from it."""
    state = np.random.SeedSequence([seed, stream_id(f"inject:{generation}"), parent_id, replicate])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def draw_candidates(config: InjectConfig, parents: dict, parent_rows: np.ndarray) -> dict:
    """Candidate injections for tasks (one per (parent, replicate)), ``n_candidates`` each.

    ``parents`` holds catalogue columns as numpy arrays; returns flat arrays with
    one entry per candidate: task/parent row indices, attempt, seeds, all physical
    parameters (arcsec, rad, nmgy) and the clump layout.
    """
    gen = config.generation
    out = {k: [] for k in ("row", "replicate", "attempt", "task_seed64", "config_id", *PRIOR_NAMES,
                           "lens_q", "lens_phi_rad", "src_x_arcsec", "src_y_arcsec", "src_phi_rad", "shear_phi_rad")}
    clumps = {k: [] for k in ("clump_dx_arcsec", "clump_dy_arcsec", "clump_sigma_arcsec", "clump_share")}
    n_bank = 0
    if gen.source_bank:
        bank = SourceBank(gen.source_bank)
        n_bank = bank.n_sources
        bank.close()
    out["src_bank_index"] = []
    for row in parent_rows:
        for rep in range(gen.replicates):
            seed64 = task_seed64(config.seed, gen.name, int(parents["parent_id"][row]), rep)
            rng = np.random.default_rng(seed64)
            for attempt in range(gen.n_candidates):
                v = gen.priors.draw(rng)
                radius = v["src_offset_theta_e"] * v["theta_e_arcsec"]
                angle = rng.uniform(0, 2 * np.pi)
                v.update(
                    row=row, replicate=rep, attempt=attempt, task_seed64=seed64,
                    lens_q=float(np.clip(parents["lrg_q"][row] + v["lens_dq"], 0.3, 1.0)),
                    lens_phi_rad=float((parents["lrg_phi_rad"][row] + v["lens_dphi_rad"]) % np.pi),
                    src_x_arcsec=float(parents["lrg_x_arcsec"][row] + radius * np.cos(angle)),
                    src_y_arcsec=float(parents["lrg_y_arcsec"][row] + radius * np.sin(angle)),
                    src_phi_rad=float(rng.uniform(0, np.pi)), shear_phi_rad=float(rng.uniform(0, np.pi)))
                v["src_bank_index"] = int(rng.integers(n_bank)) if n_bank else -1
                for key in out:
                    out[key].append(v[key])
                k = gen.n_clumps
                share = rng.dirichlet(np.ones(k)) if k else np.zeros(0)
                clumps["clump_dx_arcsec"].append(rng.normal(0, v["src_reff_arcsec"], k))
                clumps["clump_dy_arcsec"].append(rng.normal(0, v["src_reff_arcsec"], k))
                clumps["clump_sigma_arcsec"].append(np.full(k, v["clump_sigma_arcsec"]))
                clumps["clump_share"].append(share)
    ints = {"row", "replicate", "attempt", "config_id", "task_seed64", "src_bank_index"}
    cands = {k: np.asarray(v, dtype=np.int64 if k in ints else np.float64) for k, v in out.items()}
    for k, v in clumps.items():
        cands[k] = np.asarray(v, dtype=np.float64).reshape(len(cands["row"]), gen.n_clumps)
    # Fluxes: src_dmag is the unlensed source r mag minus the LRG's observed r mag.
    src_mag_r = parents["lrg_mag_r"][cands["row"]] + cands["src_dmag"]
    flux_r = catalogue_precision(flux_nmgy_from_mag(src_mag_r))
    colour = catalogue_precision({"g": 10 ** (-0.4 * cands["src_gr"]), "r": np.ones_like(flux_r),
                                  "z": 10 ** (0.4 * cands["src_rz"])})
    clump_colour = catalogue_precision({"g": 10 ** (-0.4 * (cands["src_gr"] + CLUMP_BLUE_DGR)), "r": np.ones_like(flux_r),
                                        "z": 10 ** (0.4 * (cands["src_rz"] + CLUMP_BLUE_DRZ))})
    frac = cands["src_clump_flux_frac"] if gen.n_clumps else np.zeros_like(flux_r)
    cands["src_mag_r"] = src_mag_r
    cands["sersic_flux_nmgy"] = np.stack([flux_r * (1 - frac) * colour[b] for b in BANDS], axis=1)
    cands["clump_flux_nmgy"] = np.stack([(flux_r * frac)[:, None] * cands["clump_share"] * clump_colour[b][:, None]
                                         for b in BANDS], axis=2)  # (N, K, 3)
    return cands


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = cuda but no CUDA device is available")
    return torch.device(name)


def render_columns(cols: dict, settings: RenderSettings, device: str = "cpu",
                   batch_size: int = 64, source_images: np.ndarray | None = None,
                   source_pixel_scale_arcsec: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless arcs (N, 3, S, S) float32 and pre-PSF lensed flux (N, 3) from injection columns.

    ``cols`` maps the output column names (theta_e_arcsec, lens_q, ..., src_flux_nmgy_<band>
    = total source flux, src_clump_*  (N, K) arrays, psf_fwhm_used_<band>) to arrays: this is
    how any written row is redrawn by the engine from its columns alone.  With
    ``source_images`` (N, H, W) (a source bank's stamps at ``source_pixel_scale_arcsec``)
    the source is that image, centred on (src_x, src_y) and rotated by src_phi_rad.
    """
    dev = _device(device)
    f32 = dict(dtype=torch.float32, device=dev)
    n = len(cols["theta_e_arcsec"])
    if n == 0:
        return np.zeros((0, 3, settings.stamp_size, settings.stamp_size), np.float32), np.zeros((0, 3), np.float32)
    k = np.asarray(cols.get("src_clump_dx_arcsec", np.zeros((n, 0)))).reshape(n, -1).shape[1]
    clump_flux = np.stack([np.asarray(cols[f"src_clump_flux_nmgy_{b}"], np.float64).reshape(n, k)
                           for b in BANDS], axis=2) if k else np.zeros((n, 0, 3))
    sersic_flux = np.stack([np.asarray(cols[f"src_flux_nmgy_{b}"], np.float64) for b in BANDS], 1) - \
        clump_flux.sum(axis=1)
    fwhm = np.stack([np.asarray(cols[f"psf_fwhm_used_{b}"], np.float64) for b in BANDS], 1)
    arcs_out, lensed_out = [], []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        p = {key: torch.tensor(np.asarray(cols[key], np.float64)[sl], **f32) for key in LENS_KEYS + SOURCE_KEYS}
        p["src_flux_nmgy"] = torch.as_tensor(sersic_flux[sl], **f32)
        p["psf_fwhm_arcsec"] = torch.as_tensor(fwhm[sl], **f32)
        clumps = None
        if k:
            for key in CLUMP_KEYS:
                p[key] = torch.tensor(np.asarray(cols[f"src_{key}"], np.float64).reshape(n, k)[sl], **f32)
            clumps = torch.as_tensor(clump_flux[sl], **f32)
        images = None if source_images is None else torch.tensor(source_images[sl], **f32)
        with torch.no_grad():
            arcs, lensed = render_arcs(p, settings, clumps, images, source_pixel_scale_arcsec)
        arcs_out.append(arcs.cpu().numpy())
        lensed_out.append(lensed.cpu().numpy())
    return np.concatenate(arcs_out), np.concatenate(lensed_out)


def candidate_columns(cands: dict, idx: np.ndarray, parents: dict) -> dict:
    """Injection columns (as written) of candidates ``idx``."""
    rows = cands["row"][idx]
    cols = {key: cands[key][idx] for key in ("theta_e_arcsec", "lens_q", "lens_phi_rad", "shear", "shear_phi_rad",
                                              "src_x_arcsec", "src_y_arcsec", "src_reff_arcsec", "src_n_sersic",
                                              "src_q", "src_phi_rad")}
    cols["lens_x_arcsec"] = parents["lrg_x_arcsec"][rows]
    cols["lens_y_arcsec"] = parents["lrg_y_arcsec"][rows]
    total = cands["sersic_flux_nmgy"][idx] + cands["clump_flux_nmgy"][idx].sum(axis=1)
    for j, band in enumerate(BANDS):
        cols[f"src_flux_nmgy_{band}"] = total[:, j]
        cols[f"psf_fwhm_used_{band}"] = parents[f"psfsize_{band}"][rows]
        cols[f"src_clump_flux_nmgy_{band}"] = cands["clump_flux_nmgy"][idx][:, :, j]
    for key in CLUMP_KEYS:
        cols[f"src_{key}"] = cands[key][idx]
    cols["src_bank_index"] = cands["src_bank_index"][idx] if "src_bank_index" in cands else np.full(len(idx), -1)
    return cols


def source_images(config: InjectConfig, cols: dict) -> tuple[np.ndarray | None, float]:
    """(bank images of these rows, bank pixel scale) for a source-bank generation, else (None, 0)."""
    if not config.generation.source_bank:
        return None, 0.0
    bank = SourceBank(config.generation.source_bank)
    try:
        return bank.images(cols["src_bank_index"]), bank.pixel_scale_arcsec
    finally:
        bank.close()


def render_candidates(config: InjectConfig, cands: dict, idx: np.ndarray, parents: dict) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless arcs and pre-PSF lensed flux of candidates ``idx`` (see render_columns)."""
    cols = candidate_columns(cands, idx, parents)
    images, scale = source_images(config, cols)
    return render_columns(cols, config.render, config.engine.device, config.engine.batch_size, images, scale)


def good_pixels(stamps: StampBatch) -> np.ndarray:
    """Pixels with data: band present, finite image, invvar > 0 (N, 3, S, S) bool."""
    with np.errstate(invalid="ignore"):
        return stamps.present[:, :, None, None] & np.isfinite(stamps.image) & (np.nan_to_num(stamps.invvar) > 0)


def arc_snr(arcs: np.ndarray, invvar: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Matched-filter S/N sqrt(sum a^2 invvar) over good pixels of all three bands (docs/domain.md)."""
    iv = np.where(good, invvar, 0.0).astype(np.float64)
    return np.sqrt(np.sum(arcs.astype(np.float64) ** 2 * iv, axis=(1, 2, 3)))


def arc_snr_aperture(arcs: np.ndarray, invvar: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Aperture S/N: sum a / sqrt(sum 1/invvar) over good pixels (all bands) where a > 1 sigma."""
    iv = np.where(good, invvar, 0.0).astype(np.float64)
    a = arcs.astype(np.float64)
    sel = good & (a * np.sqrt(iv) > 1.0)
    var = np.where(sel, 1.0 / np.where(sel, iv, 1.0), 0.0)
    total_var = var.sum(axis=(1, 2, 3))
    signal = np.where(sel, a, 0.0).sum(axis=(1, 2, 3))
    return np.where(total_var > 0, signal / np.sqrt(np.maximum(total_var, 1e-300)), 0.0)


@dataclass(frozen=True)
class Acceptance:
    """Acceptance probability per log-S/N bin: a = min(1, target / (c * proposal))."""

    edges_log10: np.ndarray
    probability: np.ndarray

    def __call__(self, snr: np.ndarray) -> np.ndarray:
        logs = np.log10(np.maximum(snr, 1e-300))
        idx = np.searchsorted(self.edges_log10, logs, side="right") - 1
        inside = (idx >= 0) & (idx < len(self.probability))
        return np.where(inside, self.probability[np.clip(idx, 0, len(self.probability) - 1)], 0.0)


def fit_acceptance(snr: np.ndarray, target: Prior, n_bins: int, cap_quantile: float) -> Acceptance:
    """Acceptance function turning candidates with these S/N values into the target distribution.

    The proposal density is a histogram of log10(S/N) over the target range;
    the ratio target/proposal is scaled so its ``cap_quantile`` quantile (over
    in-range candidates) is 1: sparse bins then fall short of the target rather
    than forcing every other bin's acceptance down (the KS distance reports it).
    """
    lo, hi = np.log10(target.args[0]), np.log10(target.args[1])
    edges = np.linspace(lo, hi, n_bins + 1)
    logs = np.log10(np.maximum(snr, 1e-300))
    counts, _ = np.histogram(logs, edges)
    width = np.diff(edges)
    proposal = counts / max(len(snr), 1) / width  # density in log10 S/N
    target_mass = np.diff(target.cdf(10 ** edges))
    target_density = target_mass / width
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(counts > 0, target_density / proposal, 0.0)
    in_range = (logs >= lo) & (logs < hi)
    if not in_range.any():
        raise ValueError(f"no candidate arc_snr inside the target range [{target.args[0]}, {target.args[1]}]")
    bin_of = np.clip(np.searchsorted(edges, logs[in_range], side="right") - 1, 0, n_bins - 1)
    scale = np.quantile(ratio[bin_of], cap_quantile)
    return Acceptance(edges, np.minimum(1.0, ratio / scale))


def ks_distance_to_target(snr: np.ndarray, target: Prior) -> float:
    """Kolmogorov-Smirnov D between accepted S/N values and the target distribution (scipy's one-sample
    ``kstest`` statistic; NaN without values)."""
    if len(snr) == 0:
        return float("nan")
    return float(kstest(np.asarray(snr, np.float64), target.cdf, method="asymp").statistic)


def arc_photon_noise(config: InjectConfig, arcs: np.ndarray, invvar: np.ndarray, good: np.ndarray,
                     seeds: np.ndarray) -> np.ndarray:
    """Gaussian approximation to the arc's own photon noise, (N, 3, S, S) nmgy.

    The effective gain per pixel is G = sky / sigma^2 (counts per nmgy), with the
    sky level from ``sky_mag_per_arcsec2_<band>`` and sigma^2 = 1/invvar, so that
    var(arc) = a / G.  Each task draws from its own stream (task_seed64, 2).
    """
    e = config.engine
    sky_nmgy_pix = np.array([flux_nmgy_from_mag(getattr(e, f"sky_mag_per_arcsec2_{b}")) for b in BANDS]) * \
        pixel_area_arcsec2()
    iv = np.where(good, invvar, 0.0)
    gain = sky_nmgy_pix[None, :, None, None] * iv  # sky / sigma^2
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(good & (gain > 0), np.sqrt(np.maximum(arcs, 0.0) / np.where(gain > 0, gain, 1.0)), 0.0)
    normal = np.stack([np.random.default_rng([int(s), 2]).standard_normal(arcs.shape[1:]) for s in seeds]) \
        if len(seeds) else np.zeros_like(arcs)
    return (sigma * normal).astype(np.float32)


def catalogue_arrays(table: pa.Table) -> dict:
    """Columns of a parent catalogue table (no pixel columns) as numpy arrays."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def candidate_snrs(config: InjectConfig, parents: pa.Table, stamps: StampBatch) -> np.ndarray:
    """First pass: arc_snr of every candidate of every task of these parents (task-major order)."""
    cat = catalogue_arrays(parents)
    cands = draw_candidates(config, cat, np.arange(parents.num_rows))
    arcs, _ = render_candidates(config, cands, np.arange(len(cands["row"])), cat)
    good = good_pixels(stamps)
    return arc_snr(arcs, stamps.invvar[cands["row"]], good[cands["row"]])


def choose_candidates(config: InjectConfig, cands: dict, snr: np.ndarray | None,
                      acceptance: Acceptance | None) -> np.ndarray:
    """Index of the accepted candidate of each task (-1 if every candidate was rejected)."""
    k = config.generation.n_candidates
    n_tasks = len(cands["row"]) // k
    if acceptance is None:
        return np.arange(n_tasks) * k
    prob = acceptance(snr).reshape(n_tasks, k)
    seeds = cands["task_seed64"].reshape(n_tasks, k)[:, 0]
    u = np.stack([np.random.default_rng([int(s), 1]).uniform(size=k) for s in seeds]) if n_tasks else np.zeros((0, k))
    ok = u < prob
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    return np.where(first >= 0, np.arange(n_tasks) * k + first, -1)


def _masked(values, mask, dtype):
    return pa.array(np.asarray(values), type=dtype, mask=np.asarray(mask, dtype=bool))


def inject_parents(config: InjectConfig, parents: pa.Table, stamps: StampBatch, snr: np.ndarray | None,
                   acceptance: Acceptance | None) -> tuple[pa.Table, dict]:
    """Second pass: control + positive rows for every accepted task of these parents.

    ``parents`` holds catalogue columns only (incl. region_split, healpix_pixel),
    ``stamps`` their pixels;
    ``snr`` is this shard's first-pass output (None without an arc-SNR target).
    Returns the rows (controls and positives interleaved, native pixel layout)
    and counts: tasks, accepted, rejected.
    """
    cat = catalogue_arrays(parents)
    cands = draw_candidates(config, cat, np.arange(parents.num_rows))
    chosen = choose_candidates(config, cands, snr, acceptance)
    stats = {"tasks": int(len(chosen)), "accepted": int((chosen >= 0).sum()), "rejected": int((chosen < 0).sum())}
    sel = chosen[chosen >= 0]
    rows = cands["row"][sel]
    cols = candidate_columns(cands, sel, cat)
    images, scale = source_images(config, cols)
    arcs, lensed = render_columns(cols, config.render, config.engine.device, config.engine.batch_size, images, scale)
    good = good_pixels(stamps)[rows]
    invvar = stamps.invvar[rows]
    seeds = cands["task_seed64"][sel]
    if config.engine.noise:
        arcs_noisy = arcs + arc_photon_noise(config, arcs, invvar, good, seeds)
    else:
        arcs_noisy = arcs
    data_mask = invvar > 0  # masked pixels (invvar = 0) stay masked
    positive = stamps.image[rows] + np.where(data_mask, arcs_noisy, 0.0).astype(np.float32)
    core = core_mask(config.stamp_size, config.engine.core_radius_pix)
    parent_core = np.nansum(np.where(core, stamps.image[rows], 0.0), axis=(1, 2, 3))
    arc_core = np.sum(np.where(core, arcs, 0.0), axis=(1, 2, 3))
    src_total = np.stack([cols[f"src_flux_nmgy_{b}"] for b in BANDS], axis=1)  # (N, 3)
    n = len(sel)
    # Interleave: control of task i at 2i, its positive at 2i+1.
    order = np.repeat(np.arange(n), 2)
    is_control = np.tile(np.array([1, 0], np.int8), n)
    ctrl = is_control == 1
    out = parents.take(pa.array(rows[order]))
    out = out.append_column("generation", pa.array([config.generation.name] * (2 * n), pa.string()))
    replicate = cands["replicate"][sel][order].astype(np.int32)
    task_id = (cat["parent_id"][rows][order] * config.generation.replicates + replicate) * 2 + (1 - is_control)
    out = out.append_column("task_id", pa.array(task_id.astype(np.int64)))
    out = out.append_column("replicate", pa.array(replicate))
    out = out.append_column("is_control", pa.array(is_control))

    def add(name, values, dtype=pa.float64()):
        nonlocal out
        out = out.append_column(name, _masked(np.asarray(values)[order], ctrl, dtype))

    add("config_id", cands["config_id"][sel], pa.int32())
    add("attempt", cands["attempt"][sel], pa.int32())
    add("task_seed64", seeds, pa.int64())
    for key in ("src_dmag", "src_mag_r", "src_gr", "src_rz", "src_clump_flux_frac"):
        add(key, cands[key][sel])
    for key, values in cols.items():
        if key == "src_bank_index":
            add(key, values, pa.int32())
        elif not key.startswith("src_clump_"):
            add(key, values)
    add("src_n_clumps", np.full(n, config.generation.n_clumps), pa.int32())
    for j, band in enumerate(BANDS):
        add(f"total_injected_flux_{band}", arcs[:, j].sum(axis=(1, 2), dtype=np.float64))
    add("moffat_beta", np.full(n, config.engine.moffat_beta))
    add("supersample", np.full(n, config.engine.supersample), pa.int32())
    add("magnification", catalogue_precision(lensed.sum(axis=1, dtype=np.float64) / src_total.sum(axis=1)))
    add("arc_snr", arc_snr(arcs, invvar, good))
    add("arc_snr_aperture", arc_snr_aperture(arcs, invvar, good))
    with np.errstate(divide="ignore", invalid="ignore"):
        add("core_flux_ratio", np.where(parent_core > 0, arc_core / parent_core, np.nan))
    k = config.generation.n_clumps
    offsets = pa.array(np.arange(0, 2 * n * k + 1, max(k, 1))[: 2 * n + 1] if k else np.zeros(2 * n + 1, np.int32),
                       pa.int32())

    def add_list(name, values):  # (2n, k) -> list<double> column, null for controls
        nonlocal out
        out = out.append_column(name, pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), pa.float64()),
                                                               mask=pa.array(ctrl)))

    for key, values in cols.items():
        if key.startswith("src_clump_"):
            add_list(key, np.asarray(values)[order])
    pix = StampBatch(np.where(ctrl[:, None, None, None], stamps.image[rows][order], positive[order]),
                     invvar[order], stamps.present[rows][order], stamps.has_invvar[rows][order])
    for name, column in native_columns(pix).items():
        out = out.append_column(name, column)
    return out, stats


def summarise_injection(config: InjectConfig, rows: pa.Table, counts: dict, candidate_snr: np.ndarray | None,
                        acceptance: Acceptance | None) -> dict:
    """Metrics of one generation's injections (catalogue columns of the written rows)."""
    from darkhalo.core.stats import percentiles, rate_with_interval

    gen = config.generation
    pos = rows.filter(pa.compute.equal(rows.column("is_control"), 0))
    col = {name: pos.column(name).to_numpy(zero_copy_only=False) for name in
           ("arc_snr", "arc_snr_aperture", "magnification", "core_flux_ratio", "theta_e_arcsec", "region_split",
            "total_injected_flux_r")}
    per_split = {}
    splits = rows.column("region_split").to_numpy(zero_copy_only=False)
    ctrl = rows.column("is_control").to_numpy()
    for split in np.unique(splits):
        per_split[str(split)] = {"positives": int(np.sum((splits == split) & (ctrl == 0))),
                                 "controls": int(np.sum((splits == split) & (ctrl == 1)))}
    out = {
        "generation": gen.name,
        "priors": gen.priors.summary(),
        "n_clumps": gen.n_clumps,
        "tasks": counts["tasks"],
        "positives": int(pos.num_rows),
        "unassigned_parents": counts["unassigned_parents"],
        "task_acceptance": rate_with_interval(counts["accepted"], counts["tasks"]),
        "per_split": per_split,
        "arc_snr": percentiles(col["arc_snr"]),
        "arc_snr_aperture": percentiles(col["arc_snr_aperture"]),
        "magnification": percentiles(col["magnification"]),
        "core_flux_ratio": {**percentiles(col["core_flux_ratio"]), "mean": float(np.nanmean(col["core_flux_ratio"]))},
        "total_injected_flux_r_nmgy": percentiles(col["total_injected_flux_r"]),
        "theta_e_arcsec": percentiles(col["theta_e_arcsec"]),
    }
    if gen.arc_snr_target is not None:
        lo, hi = gen.arc_snr_target.args
        out["arc_snr_target"] = {"kind": gen.arc_snr_target.kind, "lo": lo, "hi": hi,
                                 "candidates": int(len(candidate_snr)),
                                 "candidate_acceptance": rate_with_interval(counts["accepted"], len(candidate_snr)),
                                 "candidate_arc_snr": percentiles(candidate_snr),
                                 "ks_distance_achieved_vs_target": ks_distance_to_target(col["arc_snr"],
                                                                                        gen.arc_snr_target)}
    return out

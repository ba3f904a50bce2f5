"""The embedded DR10 LRG survey: a pure function from parent ids to cutouts.

``simulate_parents(config, patches, parent_ids)`` draws everything about a
parent from its own random stream (seed, 'survey', parent_id), so output rows
do not depend on batching, sharding or engine.  Per cutout: sky position,
observing conditions, the LRG (Tractor type, Sersic light), neighbouring
galaxies and stars, Moffat PSF per band, background noise from the depth,
inverse variance, and defects (masked pixels, NaN pixels, missing bands).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from darkhalo.sim import footprint, population
from darkhalo.core.params import FRACTION, ParamError, NON_NEGATIVE, POSITIVE, build, section
from darkhalo.physics.profiles import render_sersic
from darkhalo.physics.psf import convolve_moffat, moffat_image, moffat_kernels, noise_equivalent_area_pix
from darkhalo.core.rng import keyed_rng
from darkhalo.core.runtime import runtime_config
from darkhalo.io.stamps import StampBatch, native_columns
from darkhalo.core.units import AB_ZP_NMGY, BANDS, PIXEL_SCALE_ARCSEC, catalogue_precision, depth_mag_from_psfdepth, mag_from_flux_nmgy, mw_transmission, pixel_sigma_nmgy

DEFECT_NONE, DEFECT_NAN, DEFECT_MISSING_BAND = "", "nan_pixels", "missing_band"
SURVEY_MODES = ("embedded", "manifest", "targets")


@dataclass(frozen=True)
class SurveyConfig:
    """Parameters of the embedded survey (``survey:`` in params.yaml)."""

    seed: int
    n_parents: int
    stamp_size: int = 64
    n_sky_patches: int = 400
    supersample: int = 4
    neighbour_supersample: int = 2
    moffat_beta: float = 3.5
    galaxy_density_r22_per_deg2: float = 12000.0
    star_density_r22_per_deg2: float = 2500.0
    masked_stamp_frac: float = 0.1
    nan_stamp_frac: float = 0.003
    missing_band_frac: float = 0.002
    defect_cutout_ok_frac: float = 0.3
    shard_rows: int = 2000
    row_group_rows: int = 256
    noise: bool = True  # False renders noiseless stamps (audits and physics tests)
    # Real parents (darkhalo/sim/real_parents.py); the fields above that shape the simulation are then unused.
    mode: str = "embedded"  # embedded (simulate) | manifest (users' parquet cutouts) | targets (fetch cutouts)
    manifest: str = ""      # manifest mode: parquet file or dataset (local, s3://, s3a://)
    targets: str = ""       # targets mode: CSV or parquet target list
    cutout: dict | None = None  # targets mode: CutoutConfig fields (darkhalo/io/cutouts.py; checked by real_parents)
    cache_dir: str = "data/cache/cutouts"  # targets mode: the cutout client's cache
    max_failed_fraction: float = 0.02      # targets mode: more failed fetches than this fail the stage
    # Execution settings, from ``runtime:`` (darkhalo/core/runtime.py), not from ``survey:``.
    workers: int = 2        # runtime.workers: shard processes
    engine: str = "local"   # runtime.engine: where shards run, local (process pool) | spark (darkhalo/io/parallel.py)
    cutout_workers: int = 4  # runtime.cutout_workers: targets mode, fetch threads


SURVEY_RULES = {
    "n_parents": POSITIVE, "n_sky_patches": POSITIVE, "supersample": POSITIVE, "neighbour_supersample": POSITIVE,
    "stamp_size": (lambda v: v >= 16, "must be >= 16 pixels"), "moffat_beta": (lambda v: v > 1, "must be > 1"),
    "galaxy_density_r22_per_deg2": NON_NEGATIVE, "star_density_r22_per_deg2": NON_NEGATIVE,
    "masked_stamp_frac": FRACTION, "nan_stamp_frac": FRACTION, "missing_band_frac": FRACTION,
    "defect_cutout_ok_frac": FRACTION, "shard_rows": POSITIVE, "row_group_rows": POSITIVE,
    "mode": (lambda v: v in SURVEY_MODES, f"must be one of {list(SURVEY_MODES)}"),
    "max_failed_fraction": FRACTION,
    "cutout": (lambda v: v is None or isinstance(v, dict), "must be a mapping (keys: params.py SCHEMA)"),
}


def survey_config(params: dict, path: str) -> SurveyConfig:
    """SurveyConfig from the ``seed``, ``survey`` and ``runtime`` entries of a params mapping."""
    seed = params.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamError(f"{path}: seed = {seed!r}: must be a non-negative integer")
    rt = runtime_config(params, path)
    config = build(SurveyConfig, section(params, "survey", path), "survey", path, SURVEY_RULES, seed=seed,
                   workers=rt.workers, engine=rt.engine, cutout_workers=rt.cutout_workers)
    if config.nan_stamp_frac + config.missing_band_frac > 1:
        raise ParamError(f"{path}: survey.nan_stamp_frac + survey.missing_band_frac must be <= 1")
    if config.mode in ("manifest", "targets") and not getattr(config, config.mode):
        raise ParamError(f"{path}: survey.mode = {config.mode!r} needs survey.{config.mode} (a path)")
    return config


def sky_patches(config: SurveyConfig) -> np.ndarray:
    """The survey's NSIDE=32 patches (a pure function of the seed)."""
    return footprint.footprint_patches(config.n_sky_patches, keyed_rng(config.seed, "footprint"))


def draw_site(patches: np.ndarray, parent_id: int, rng: np.random.Generator) -> dict:
    """Where and how a cutout was observed: sky position in one of ``patches``, brick,
    depth mode, seeing (FWHM arcsec), depth (nmgy^-2), E(B-V) and MW transmission.

    Shared by every simulation of survey-like cutouts (survey parents, hard negatives).
    """
    ra, dec = footprint.position_in_patch(patches[rng.integers(len(patches))], rng)
    return draw_site_at(ra, dec, parent_id, rng)


def draw_site_at(ra: float, dec: float, parent_id: int, rng: np.random.Generator) -> dict:
    """``draw_site`` at a given position (deg), e.g. a known lens's catalogue position."""
    gal_b = catalogue_precision(footprint.galactic_latitude_deg(ra, dec))
    mode = footprint.depth_mode(ra, dec)
    row = {"parent_id": parent_id, "ra": ra, "dec": dec, "brickname": footprint.brickname(ra, dec),
           "gal_b_deg": gal_b, "depth_mode": mode}
    row.update(population.draw_observing_conditions(rng, mode, gal_b))
    for band in BANDS:
        row[f"mw_transmission_{band}"] = catalogue_precision(mw_transmission(row["ebv"], band))
    return row


def draw_neighbours(config: SurveyConfig, rng: np.random.Generator, gal_b_deg: float) -> dict:
    """Field galaxies and stars of one stamp at the survey's number-count densities."""
    stamp_half_arcsec = 0.5 * config.stamp_size * PIXEL_SCALE_ARCSEC
    return population.draw_neighbours(
        rng, stamp_half_arcsec, gal_b_deg, config.galaxy_density_r22_per_deg2, config.star_density_r22_per_deg2)


def _draw_parent(config: SurveyConfig, patches: np.ndarray, parent_id: int, rng: np.random.Generator) -> dict:
    """Catalogue-level draws of one parent (everything but pixels)."""
    row = draw_site(patches, parent_id, rng)
    row.update(population.draw_deflector(rng, row["ebv"]))
    half_pix = 0.5 * PIXEL_SCALE_ARCSEC
    row["lrg_x_arcsec"] = float(rng.uniform(-half_pix, half_pix))
    row["lrg_y_arcsec"] = float(rng.uniform(-half_pix, half_pix))
    row["_neighbours"] = draw_neighbours(config, rng, row["gal_b_deg"])
    return row


def render_noiseless(config: SurveyConfig, rows: list[dict], extra_pre_psf: np.ndarray | None = None) -> np.ndarray:
    """Noiseless PSF-convolved images (B, 3, S, S) in nmgy/pixel.

    ``extra_pre_psf`` (3, B, S, S), nmgy/pixel before the PSF, is added to the
    extended light of each row before convolution (e.g. the lens-like features
    of hard negatives); rows need the keys ``_draw_parent`` sets (``lrg_*`` of
    the central galaxy, ``psfsize_*``, ``ebv``, ``_neighbours``).
    """
    size, n_rows = config.stamp_size, len(rows)
    centre = (size - 1) / 2.0
    pre_psf = np.zeros((3, n_rows, size, size))
    # LRGs with an extended profile: one unit-flux shape per row, scaled per band.
    ext = [i for i, r in enumerate(rows) if r["lrg_type"] != "PSF"]
    if ext:
        shape = render_sersic(np.ones(len(ext)), *(np.array([rows[i][k] for i in ext]) for k in
                              ("lrg_reff_arcsec", "lrg_n_sersic", "lrg_q", "lrg_phi_rad", "lrg_x_arcsec",
                               "lrg_y_arcsec")), size, supersample=config.supersample)
        for j, band in enumerate(BANDS):
            pre_psf[j, ext] += shape * np.array([rows[i][f"lrg_flux_nmgy_{band}"] for i in ext])[:, None, None]
    # Neighbour galaxies, all rows at once.
    owner, params, fluxes = [], [], {b: [] for b in BANDS}
    for i, r in enumerate(rows):
        gal = r["_neighbours"]["galaxies"]
        for k in range(len(gal["mag_r"])):
            owner.append(i)
            params.append((gal["reff_arcsec"][k], gal["n_sersic"][k], gal["q"][k], gal["phi_rad"][k],
                           gal["xy_arcsec"][k, 0], gal["xy_arcsec"][k, 1]))
        band_flux = population.band_fluxes_nmgy(gal["mag_r"], gal["gr"], gal["rz"], r["ebv"])
        for band in BANDS:
            fluxes[band].extend(band_flux[band])
    if owner:
        params = np.array(params)
        shapes = render_sersic(np.ones(len(owner)), *params.T, size, supersample=config.neighbour_supersample)
        for j, band in enumerate(BANDS):
            np.add.at(pre_psf[j], np.array(owner), shapes * np.array(fluxes[band])[:, None, None])
    if extra_pre_psf is not None:
        pre_psf += extra_pre_psf
    # the three bands in one batch, each stamp with its band's PSF
    fwhm = np.array([[r[f"psfsize_{band}"] for r in rows] for band in BANDS])
    convolved = convolve_moffat(pre_psf.reshape(-1, size, size), fwhm.reshape(-1), config.moffat_beta)
    images = np.ascontiguousarray(convolved.reshape(3, n_rows, size, size).transpose(1, 0, 2, 3))
    # Point sources (stars and PSF-type LRGs): the PSF itself at their position.
    for i, r in enumerate(rows):
        star = r["_neighbours"]["stars"]
        xs = list(star["xy_arcsec"][:, 0]) + ([r["lrg_x_arcsec"]] if r["lrg_type"] == "PSF" else [])
        ys = list(star["xy_arcsec"][:, 1]) + ([r["lrg_y_arcsec"]] if r["lrg_type"] == "PSF" else [])
        if not xs:
            continue
        star_flux = population.band_fluxes_nmgy(star["mag_r"], star["gr"], star["rz"], r["ebv"])
        for j, band in enumerate(BANDS):
            flux = list(star_flux[band]) + ([r[f"lrg_flux_nmgy_{band}"]] if r["lrg_type"] == "PSF" else [])
            psf = moffat_image(np.full(len(xs), r[f"psfsize_{band}"]), np.array(xs) / PIXEL_SCALE_ARCSEC + centre,
                               np.array(ys) / PIXEL_SCALE_ARCSEC + centre, size, config.moffat_beta)
            images[i, j] += np.tensordot(np.array(flux), psf, axes=1)
    return images


def add_noise_and_defects(config: SurveyConfig, row: dict, noiseless: np.ndarray,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy image, invvar and band-present flags of one stamp; fills defect columns of ``row``."""
    size = config.stamp_size
    image = np.empty((3, size, size), np.float32)
    invvar = np.empty((3, size, size), np.float32)
    for j, band in enumerate(BANDS):
        nea = noise_equivalent_area_pix(moffat_kernels([row[f"psfsize_{band}"]], size, config.moffat_beta))[0]
        sigma = pixel_sigma_nmgy(row[f"psfdepth_{band}"], nea)
        noise = rng.standard_normal((size, size))
        image[j] = noiseless[j] + sigma * noise if config.noise else noiseless[j]
        invvar[j] = 1.0 / sigma**2
    # Masked pixels (invvar = 0, image = 0 as in Legacy Surveys coadds).
    if rng.uniform() < config.masked_stamp_frac:
        mask = np.zeros((3, size, size), bool)
        if rng.uniform() < 0.5:  # a bad column segment in one band
            col, lo = rng.integers(size), rng.integers(size // 2)
            mask[rng.integers(3), lo:lo + rng.integers(8, size // 2), col:col + rng.integers(1, 3)] = True
        else:  # a saturated-star blob in all bands
            cy, cx, rad = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2.0, 5.0)
            yy, xx = np.mgrid[:size, :size]
            mask[:, (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2] = True
        image[mask] = 0.0
        invvar[mask] = 0.0
    row["bad_pixel_frac"] = float(np.mean((invvar == 0).any(axis=0)))
    present = np.ones(3, bool)
    defect = DEFECT_NONE
    u = rng.uniform()
    if u < config.nan_stamp_frac:
        defect = DEFECT_NAN
        band = rng.integers(3)
        cy, cx, n_pix = rng.integers(size), rng.integers(size), rng.integers(1, 30)
        flat = (cy * size + cx + np.arange(n_pix)) % (size * size)
        image[band].reshape(-1)[flat] = np.nan
    elif u < config.nan_stamp_frac + config.missing_band_frac:
        defect = DEFECT_MISSING_BAND
        present[rng.integers(3)] = False
    row["sim_defect"] = defect
    row["cutout_ok"] = 1 if defect == DEFECT_NONE or rng.uniform() < config.defect_cutout_ok_frac else 0
    return image, invvar, present


def simulate_parents(config: SurveyConfig, patches: np.ndarray, parent_ids: np.ndarray) -> pa.Table:
    """Cutouts of the given parents as a native-layout table (one row per parent)."""
    rngs = [keyed_rng(config.seed, "survey", int(pid)) for pid in parent_ids]
    rows = [_draw_parent(config, patches, int(pid), rng) for pid, rng in zip(parent_ids, rngs)]
    return observe(config, rows, rngs, render_noiseless(config, rows), CATALOGUE_FIELDS)


def observe(config: SurveyConfig, rows: list[dict], rngs: list[np.random.Generator], noiseless: np.ndarray,
            fields: list[pa.Field]) -> pa.Table:
    """Noise, defects and catalogue finishing of rendered rows -> native-layout table.

    ``noiseless`` (B, 3, S, S) nmgy/pixel; each row's stream in ``rngs`` draws
    its noise and defects; the table has ``fields`` then the pixel columns.
    """
    size = config.stamp_size
    images = np.empty((len(rows), 3, size, size), np.float32)
    invvars = np.empty_like(images)
    present = np.empty((len(rows), 3), bool)
    for i, (row, rng) in enumerate(zip(rows, rngs)):
        images[i], invvars[i], present[i] = add_noise_and_defects(config, row, noiseless[i], rng)
    for row in rows:
        neighbours = row.pop("_neighbours")
        row["sim_n_neighbour_galaxies"] = len(neighbours["galaxies"]["mag_r"])
        row["sim_n_stars"] = len(neighbours["stars"]["mag_r"])
        for band in BANDS:
            row[f"lrg_mag_{band}"] = catalogue_precision(mag_from_flux_nmgy(row[f"lrg_flux_nmgy_{band}"]))
        row.update(stamp_size=size, bandset="grz", ab_zp_nmgy=AB_ZP_NMGY)
    table = pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in fields})
    batch = StampBatch(images, invvars, present, np.ones_like(present))
    for name, col in native_columns(batch).items():
        table = table.append_column(name, col)
    return table


# Former private names, kept for callers written against them.
_render_noiseless, _add_noise_and_defects = render_noiseless, add_noise_and_defects


def arrow_fields(spec: str, dtype: pa.DataType) -> list[pa.Field]:
    """Arrow fields of type ``dtype``, one per whitespace-separated name in ``spec``."""
    return [pa.field(name, dtype) for name in spec.split()]


# Catalogue columns of a survey row, in order (pixel columns follow; see stamps.py).
CATALOGUE_FIELDS = (
    arrow_fields("parent_id", pa.int64())
    + arrow_fields("ra dec", pa.float64())
    + arrow_fields("brickname depth_mode", pa.string())
    + arrow_fields("gal_b_deg ebv psfsize_g psfsize_r psfsize_z psfdepth_g psfdepth_r psfdepth_z "
                   "mw_transmission_g mw_transmission_r mw_transmission_z", pa.float64())
    + arrow_fields("lrg_type", pa.string())
    + arrow_fields("lrg_flux_nmgy_g lrg_flux_nmgy_r lrg_flux_nmgy_z lrg_mag_g lrg_mag_r lrg_mag_z lrg_reff_arcsec "
                   "lrg_n_sersic lrg_q lrg_phi_rad lrg_x_arcsec lrg_y_arcsec bad_pixel_frac ab_zp_nmgy", pa.float64())
    + arrow_fields("cutout_ok", pa.int8())
    + arrow_fields("stamp_size", pa.int16())
    + arrow_fields("bandset sim_defect", pa.string())
    + arrow_fields("sim_n_neighbour_galaxies sim_n_stars", pa.int32())
)


def summarise_survey(catalogue: pa.Table) -> dict:
    """Metrics of a survey catalogue (no pixels needed): sizes, mixes, conditions, defects."""
    import healpy as hp   # here: at module level healpy loads matplotlib + astropy into every stage (~1.5 s)

    cols = {name: catalogue.column(name).to_numpy(zero_copy_only=False) for name in catalogue.column_names}
    n = len(cols["parent_id"])
    def fractions(values):
        names, counts = np.unique(values, return_counts=True)
        return {str(k): c / n for k, c in zip(names, counts)}

    depth = {}
    for mode in np.unique(cols["depth_mode"]):
        sel = cols["depth_mode"] == mode
        depth[str(mode)] = {b: float(np.median(depth_mag_from_psfdepth(cols[f"psfdepth_{b}"][sel]))) for b in BANDS}
    defect = cols["sim_defect"]
    ok = cols["cutout_ok"] == 1
    return {
        "n_parents": n,
        "n_healpix_pixels_nside32": int(len(np.unique(hp.ang2pix(32, cols["ra"], cols["dec"], lonlat=True)))),
        "lrg_type_fraction": fractions(cols["lrg_type"]),
        "depth_mode_fraction": fractions(cols["depth_mode"]),
        "psfsize_median_arcsec": {b: float(np.median(cols[f"psfsize_{b}"])) for b in BANDS},
        "depth_mag_5sigma_median": depth,
        "lrg_mag_percentiles_5_25_50_75_95": {
            b: [float(v) for v in np.percentile(cols[f"lrg_mag_{b}"], [5, 25, 50, 75, 95])] for b in BANDS},
        "ebv_median": float(np.median(cols["ebv"])),
        "neighbours_per_stamp_mean": {"galaxies": float(np.mean(cols["sim_n_neighbour_galaxies"])),
                                      "stars": float(np.mean(cols["sim_n_stars"]))},
        "defects": {
            "masked_stamps": int(np.sum(cols["bad_pixel_frac"] > 0)),
            "bad_pixel_frac_mean": float(np.mean(cols["bad_pixel_frac"])),
            "nan_pixel_stamps": int(np.sum(defect == DEFECT_NAN)),
            "nan_pixel_stamps_cutout_ok": int(np.sum((defect == DEFECT_NAN) & ok)),
            "missing_band_stamps": int(np.sum(defect == DEFECT_MISSING_BAND)),
            "missing_band_stamps_cutout_ok": int(np.sum((defect == DEFECT_MISSING_BAND) & ok)),
        },
    }

"""Real parent cutouts for the `survey` stage: ``survey.mode`` = ``manifest`` or ``targets``.

Both write the native layout with exactly the embedded survey's schema (CATALOGUE_FIELDS,
then the pixel columns), so every later stage runs unchanged.

* ``manifest``: the users' parquet cutouts (a file or dataset, local or ``s3://``; legacy
  ``stamp_npz`` or native pixel columns).  A manifest with ``is_control`` (a Gen5 stamp
  manifest) contributes its controls only (``is_control == 1``: LRG cutouts without arcs).
* ``targets``: a CSV/parquet target list; each cutout comes from the Legacy Survey cutout
  client (darkhalo/io/cutouts.py, with its cache).

``parent_id`` is the rank of (ra, dec) among all input rows (ra first, ties by dec, then
input order): the same input gives the same ids; rows dropped later leave gaps.

Catalogue columns, in order of preference (``provenance`` in metrics/survey.json counts rows):
  - taken from the input when present and finite: ``psfsize_*``, ``psfdepth_*``, ``ebv``,
    ``brickname``, ``bad_pixel_frac``, ``lrg_*`` (native manifests) or their Tractor names
    (``type``, ``flux_<band>``, ``shape_r``, ``sersic``);
  - ``psfsize_g``/``psfsize_z`` missing: ``psfsize_r`` times the DR10 median seeing ratio
    (population.PSF_FWHM_MEDIAN_ARCSEC);
  - ``psfdepth_<band>`` missing: measured, median pixel invvar of the band / NEA of its Moffat PSF;
  - missing invvar planes: constant 1/sigma^2 from the pixels' MAD (cutouts.estimate_invvar);
  - the central galaxy (what inject needs to place a lens on it), measured on the pixels:
    ``lrg_x/y_arcsec`` Gaussian-weighted centroid, ``lrg_q``/``lrg_phi_rad`` from the weighted
    second moments (PSF-convolved light: rounder than the Tractor model), ``lrg_flux_nmgy_<band>``
    (when the input has none) background-subtracted flux within APERTURE_RADIUS_ARCSEC (a lower
    bound on the model flux, ~0.7-0.9 of a typical LRG's);
  - ``lrg_reff_arcsec``/``lrg_n_sersic``: input only (NaN otherwise; no later stage reads them);
  - ``depth_mode``, ``gal_b_deg``, ``mw_transmission_*`` from position and ``ebv``;
  - ``cutout_ok`` = input flag (when present) and all bands present and finite;
    ``sim_defect`` = "", ``sim_n_*`` = -1 (as cutout_table).
Rows whose central r flux is not positive and finite cannot host a lens (inject sets the
source brightness relative to ``lrg_mag_r``): they are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from darkhalo.sim import footprint
from darkhalo.io.cutouts import CUTOUT_RULES, CutoutClient, CutoutConfig, estimate_invvar
from darkhalo.io.dataset import iter_chunks, open_dataset, stamps_of, write_parquet
from darkhalo.io.parallel import join_uri
from darkhalo.core.params import build
from darkhalo.sim.population import PSF_FWHM_MEDIAN_ARCSEC
from darkhalo.physics.psf import moffat_kernels, noise_equivalent_area_pix
from darkhalo.io.stamps import PIXEL_COLUMNS, StampBatch, native_columns
from darkhalo.sim.survey import CATALOGUE_FIELDS, SurveyConfig, summarise_survey
from darkhalo.core.units import AB_ZP_NMGY, BANDS, PIXEL_SCALE_ARCSEC, mag_from_flux_nmgy, mw_transmission

REQUIRED_COLUMNS = ("ra", "dec", "psfsize_r", "ebv")
APERTURE_RADIUS_ARCSEC = 3.0       # central-galaxy aperture flux radius
CENTROID_SIGMA_ARCSEC = 1.0        # Gaussian weight of the centroid and second moments
BACKGROUND_MIN_RADIUS = 0.375      # background from pixels beyond this fraction of the stamp size
# Input names accepted for a catalogue column (first match wins): native name, then Tractor's.
ALIASES = {"lrg_type": ("lrg_type", "type"), "lrg_reff_arcsec": ("lrg_reff_arcsec", "shape_r"),
           "lrg_n_sersic": ("lrg_n_sersic", "sersic"),
           **{f"lrg_flux_nmgy_{b}": (f"lrg_flux_nmgy_{b}", f"flux_{b}") for b in BANDS}}
PASSTHROUGH = ("brickname", "ebv", "bad_pixel_frac", *(f"psf{k}_{b}" for k in ("size", "depth") for b in BANDS),
               "lrg_q", "lrg_phi_rad", "lrg_x_arcsec", "lrg_y_arcsec")


def input_columns(names) -> list[str]:
    """Input columns the real modes read, of those in ``names``."""
    wanted = {"cutout_ok", "is_control", *PASSTHROUGH, *(a for v in ALIASES.values() for a in v), *REQUIRED_COLUMNS}
    return [n for n in names if n in wanted]


def require_columns(names, where: str) -> None:
    """ValueError naming ``where`` and each required column that ``names`` lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; survey real modes need {list(REQUIRED_COLUMNS)} "
                         f"(plus pixels: stamp_npz or image_g/r/z in manifest mode)")


def check_positions(ra: np.ndarray, dec: np.ndarray, where: list[str]) -> None:
    """ValueError naming the first row (``where[i]``) whose ra/dec (deg) is not a finite sky position."""
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{where[i]}: ra = {float(ra[i])!r}, dec = {float(dec[i])!r}: not a finite sky position "
                         f"({int(bad.sum())} such rows)")


def parent_ids_by_position(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """parent_id of each row: its rank in (ra, dec) order, ties by input order (int64)."""
    order = np.lexsort((np.arange(len(ra)), dec, ra))
    ids = np.empty(len(ra), np.int64)
    ids[order] = np.arange(len(ra), dtype=np.int64)
    return ids


@dataclass
class Provenance:
    """Row counts per (catalogue column, source) and dropped rows, for metrics/survey.json."""

    counts: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)

    def add(self, column: str, source: str, n: int) -> None:
        if n:
            key = self.counts.setdefault(column, {})
            key[source] = key.get(source, 0) + int(n)


def _column(values: dict, name: str, n: int) -> np.ndarray:
    """Float column ``name`` of the input (first alias present), NaN where absent."""
    for alias in ALIASES.get(name, (name,)):
        if alias in values:
            return np.asarray(pd.to_numeric(pd.Series(values[alias]), errors="coerce"), np.float64)
    return np.full(n, np.nan)


def measure_central(image: np.ndarray, good: np.ndarray) -> dict:
    """Central galaxy of one stamp: image (3, S, S) nmgy/pixel, good (3, S, S) bool.

    Returns centroid (x, y arcsec from the stamp centre), axis ratio q and major-axis angle
    phi (rad, counter-clockwise from +x, as profiles.py) from Gaussian-weighted moments of
    the r band (all present bands summed when r is missing), and per-band aperture fluxes (nmgy;
    NaN for a band without good pixels).  Backgrounds: median of good pixels beyond
    BACKGROUND_MIN_RADIUS of the size from the centre.
    """
    size = image.shape[-1]
    axis = np.arange(size) - (size - 1) / 2.0
    x, y = np.meshgrid(axis, axis)
    rad = np.hypot(x, y)
    data = np.zeros(image.shape)
    for j in range(3):
        outer = good[j] & (rad > BACKGROUND_MIN_RADIUS * size)
        if good[j].any():
            bg = float(np.median(image[j][outer])) if outer.any() else 0.0
            data[j] = np.where(good[j], image[j] - bg, 0.0)
    light = data[1] if good[1].any() else data.sum(axis=0)
    sigma = CENTROID_SIGMA_ARCSEC / PIXEL_SCALE_ARCSEC
    xc = yc = 0.0
    for _ in range(5):
        w = np.exp(-((x - xc) ** 2 + (y - yc) ** 2) / (2 * sigma**2)) * np.clip(light, 0, None)
        total = w.sum()
        if total <= 0:
            xc = yc = 0.0
            break
        xc, yc = float(np.clip((w * x).sum() / total, -3, 3)), float(np.clip((w * y).sum() / total, -3, 3))
    q, phi = 1.0, 0.0
    if total > 0:
        mxx, myy = (w * (x - xc) ** 2).sum() / total, (w * (y - yc) ** 2).sum() / total
        mxy = (w * (x - xc) * (y - yc)).sum() / total
        half_diff = np.hypot(0.5 * (mxx - myy), mxy)
        major, minor = 0.5 * (mxx + myy) + half_diff, 0.5 * (mxx + myy) - half_diff
        q = float(np.sqrt(max(minor, 0.0) / major)) if major > 0 else 1.0
        phi = float((0.5 * np.arctan2(2 * mxy, mxx - myy)) % np.pi)
    aperture = np.hypot(x - xc, y - yc) < APERTURE_RADIUS_ARCSEC / PIXEL_SCALE_ARCSEC
    flux = [float(data[j][aperture].sum()) if good[j].any() else np.nan for j in range(3)]
    return {"x_arcsec": xc * PIXEL_SCALE_ARCSEC, "y_arcsec": yc * PIXEL_SCALE_ARCSEC, "q": q, "phi_rad": phi,
            "flux_nmgy": flux}


def parent_table(values: dict, batch: StampBatch, parent_ids: np.ndarray, where: list[str], config: SurveyConfig,
                 prov: Provenance) -> pa.Table:
    """Native-layout survey rows (CATALOGUE_FIELDS, pixels) of real cutouts.

    ``values``: input columns (arrays, one entry per row of ``batch``); ``where[i]`` names row i
    in messages and the dropped-row list.  Fills missing invvar planes in ``batch``.
    """
    n, size = len(parent_ids), config.stamp_size
    if batch.image.shape[-1] != size:
        raise ValueError(f"{where[0] if where else 'input'}: stamps are {batch.image.shape[-1]} px, "
                         f"survey.stamp_size = {size}")
    cols = {f.name: np.full(n, np.nan) for f in CATALOGUE_FIELDS if pa.types.is_floating(f.type)}
    for name in PASSTHROUGH + ("lrg_reff_arcsec", "lrg_n_sersic") + tuple(f"lrg_flux_nmgy_{b}" for b in BANDS):
        if name in cols:
            cols[name] = _column(values, name, n)
    ra, dec = _column(values, "ra", n), _column(values, "dec", n)
    cols["ra"], cols["dec"] = ra, dec
    for band in BANDS:
        given = np.isfinite(cols[f"psfsize_{band}"])
        prov.add(f"psfsize_{band}", "input", given.sum())
        if band != "r":
            ratio = PSF_FWHM_MEDIAN_ARCSEC[band] / PSF_FWHM_MEDIAN_ARCSEC["r"]
            cols[f"psfsize_{band}"] = np.where(given, cols[f"psfsize_{band}"], cols["psfsize_r"] * ratio)
            prov.add(f"psfsize_{band}", f"psfsize_r * {ratio:.4f} (DR10 median ratio)", (~given).sum())
    for name, lowest, rule in (("psfsize_r", 1e-6, "> 0 arcsec"), ("ebv", 0.0, ">= 0 mag")):
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(cols[name]) & (cols[name] >= lowest))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where[i]}: column {name} = {float(cols[name][i])!r}: must be finite and {rule}")
    invvar = np.stack([estimate_invvar(batch.image[i], batch.invvar[i], batch.present[i], batch.has_invvar[i])
                       for i in range(n)]) if n else batch.invvar
    prov.add("invvar", "estimated from pixel MAD", (batch.present & ~batch.has_invvar).sum())
    batch = StampBatch(batch.image, invvar, batch.present, batch.present.copy())
    with np.errstate(invalid="ignore"):
        good = batch.present[:, :, None, None] & np.isfinite(batch.image) & (np.nan_to_num(invvar) > 0)
    beta = config.moffat_beta
    for j, band in enumerate(BANDS):
        depth = cols[f"psfdepth_{band}"]
        need = ~(np.isfinite(depth) & (depth > 0))
        prov.add(f"psfdepth_{band}", "input", (~need).sum())
        for i in np.flatnonzero(need):
            nea = noise_equivalent_area_pix(moffat_kernels([cols[f"psfsize_{band}"][i]], size, beta))[0]
            depth[i] = float(np.median(invvar[i, j][good[i, j]])) / nea if good[i, j].any() else np.nan
        prov.add(f"psfdepth_{band}", "measured: median invvar / PSF NEA", need.sum())
    strings = {"lrg_type": [""] * n, "brickname": [footprint.brickname(r, d) for r, d in zip(ra, dec)]}
    for name in ("lrg_type", "brickname"):
        src = next((a for a in ALIASES.get(name, (name,)) if a in values), None)
        if src is not None:
            strings[name] = [str(v) if v is not None and not (isinstance(v, float) and np.isnan(v)) else fallback
                             for v, fallback in zip(list(values[src]), strings[name])]
    for i in range(n):
        m = measure_central(batch.image[i], good[i])
        for key, name in (("x_arcsec", "lrg_x_arcsec"), ("y_arcsec", "lrg_y_arcsec"), ("q", "lrg_q"),
                          ("phi_rad", "lrg_phi_rad")):
            if not np.isfinite(cols[name][i]):
                cols[name][i] = m[key]
                prov.add(name, "measured: weighted moments", 1)
            else:
                prov.add(name, "input", 1)
        for j, band in enumerate(BANDS):
            flux = cols[f"lrg_flux_nmgy_{band}"]
            if np.isfinite(flux[i]) and flux[i] > 0:
                prov.add(f"lrg_flux_nmgy_{band}", "input", 1)
            else:
                flux[i] = m["flux_nmgy"][j]
                prov.add(f"lrg_flux_nmgy_{band}", f"measured: aperture r < {APERTURE_RADIUS_ARCSEC} arcsec", 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        for band in BANDS:
            flux = cols[f"lrg_flux_nmgy_{band}"]
            cols[f"lrg_mag_{band}"] = np.where(flux > 0, mag_from_flux_nmgy(np.where(flux > 0, flux, 1.0)), np.nan)
            cols[f"mw_transmission_{band}"] = mw_transmission(cols["ebv"], band)
    measured_bad = (np.nan_to_num(invvar) == 0) | ~np.isfinite(invvar)
    bad_frac = np.mean((measured_bad & batch.present[:, :, None, None]).any(axis=1), axis=(1, 2)) if n else np.zeros(0)
    prov.add("bad_pixel_frac", "input", np.isfinite(cols["bad_pixel_frac"]).sum())
    prov.add("bad_pixel_frac", "measured: invvar 0 or NaN", (~np.isfinite(cols["bad_pixel_frac"])).sum())
    cols["bad_pixel_frac"] = np.where(np.isfinite(cols["bad_pixel_frac"]), cols["bad_pixel_frac"], bad_frac)
    cols["gal_b_deg"] = np.asarray(footprint.galactic_latitude_deg(ra, dec), np.float64) if n else np.zeros(0)
    cols["ab_zp_nmgy"] = np.full(n, AB_ZP_NMGY)
    pixels_ok = batch.present.all(axis=1) & np.isfinite(batch.image).all(axis=(1, 2, 3))
    flag = np.asarray(values["cutout_ok"], np.float64) == 1 if "cutout_ok" in values else np.ones(n, bool)
    table = {**cols, **strings,
             "parent_id": parent_ids, "depth_mode": [footprint.depth_mode(r, d) for r, d in zip(ra, dec)],
             "cutout_ok": (flag & pixels_ok).astype(np.int8), "stamp_size": np.full(n, size, np.int16),
             "bandset": ["grz"] * n, "sim_defect": [""] * n,
             "sim_n_neighbour_galaxies": np.full(n, -1, np.int32), "sim_n_stars": np.full(n, -1, np.int32)}
    keep = np.isfinite(cols["lrg_flux_nmgy_r"]) & (cols["lrg_flux_nmgy_r"] > 0)
    prov.dropped += [f"{where[i]}: central r flux {float(cols['lrg_flux_nmgy_r'][i])!r} nmgy not positive"
                     for i in np.flatnonzero(~keep)]
    out = pa.table({f.name: pa.array(np.asarray(table[f.name])[keep] if len(keep) else [], type=f.type)
                    for f in CATALOGUE_FIELDS})
    kept = StampBatch(*(np.asarray(a)[keep] for a in (batch.image, batch.invvar, batch.present, batch.has_invvar)))
    for name, column in native_columns(kept).items():
        out = out.append_column(name, column)
    return out.sort_by("parent_id")


class _ShardWriter:
    """Writes ``part-NNNNN.parquet`` files of ``shard_rows`` rows (the last may hold fewer), each sorted by
    parent_id, as rows arrive."""

    def __init__(self, out_dir: str, config: SurveyConfig):
        self.out_dir, self.config, self.pending, self.shard = out_dir, config, None, 0

    def add(self, table: pa.Table) -> None:
        self.pending = table if self.pending is None else pa.concat_tables([self.pending, table])
        while self.pending.num_rows >= self.config.shard_rows:
            self._write(self.pending.slice(0, self.config.shard_rows))
            self.pending = self.pending.slice(self.config.shard_rows)

    def flush(self) -> None:
        if self.pending is not None and self.pending.num_rows:
            self._write(self.pending)
        self.pending = None

    def _write(self, table: pa.Table) -> None:
        write_parquet(table.sort_by("parent_id").combine_chunks(),
                      join_uri(self.out_dir, f"part-{self.shard:05d}.parquet"), self.config.row_group_rows)
        self.shard += 1


def manifest_parents(config: SurveyConfig, out_dir: str, params_path: str = "params.yaml") -> dict:
    """Manifest mode: write the survey shards from ``config.manifest``; returns the metrics' ``source`` entry."""
    uri = config.manifest
    dataset = open_dataset(uri)
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
        names = fragment.physical_schema.names
        require_columns(names, fragment.path)
        if not ({"stamp_npz"} | {f"image_{b}" for b in BANDS}) & set(names):
            raise ValueError(f"{fragment.path}: no pixel columns (need stamp_npz or image_g/r/z)")
    names = dataset.schema.names
    controls_only = ds.field("is_control") == 1 if "is_control" in names else None
    # Pass 1: positions of every row (in iter_chunks order) -> parent ids.
    ra, dec, where = [], [], []
    for chunk in iter_chunks(uri, ["ra", "dec"], controls_only):
        ra.append(chunk.table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64))
        dec.append(chunk.table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64))
        where += [f"{chunk.source}: row {chunk.row_offset + i}" + (" of its is_control == 1 rows" if controls_only
                  is not None else "") for i in range(chunk.table.num_rows)]
    ra, dec = (np.concatenate(a) if a else np.zeros(0) for a in (ra, dec))
    if not len(ra):
        raise ValueError(f"{uri}: the manifest has no parent rows" + (" (is_control == 1)" if controls_only else ""))
    check_positions(ra, dec, where)
    ids = parent_ids_by_position(ra, dec)
    n_all = dataset.count_rows()
    # Pass 2: pixels, chunk by chunk, in the same order.
    pixel_cols = [c for c in names if c == "stamp_npz" or c in PIXEL_COLUMNS]
    writer, prov, start = _ShardWriter(out_dir, config), Provenance(), 0
    for chunk in iter_chunks(uri, input_columns(names) + pixel_cols, controls_only, batch_rows=config.shard_rows):
        n = chunk.table.num_rows
        values = {c: chunk.table.column(c).to_numpy(zero_copy_only=False) for c in input_columns(names)}
        batch = stamps_of(chunk, config.stamp_size)
        writer.add(parent_table(values, batch, ids[start:start + n], where[start:start + n], config, prov))
        start += n
    writer.flush()
    return {"mode": "manifest", "manifest": uri, "input_rows": n_all, "parents_in": len(ra),
            "not_controls_skipped": n_all - len(ra), "parent_id": "rank of (ra, dec), ties by input order",
            "dropped": len(prov.dropped), "dropped_rows": prov.dropped[:20], "provenance": prov.counts}


def read_targets(path: str) -> pd.DataFrame:
    """The target list (CSV, or parquet by extension) with its required columns checked; errors name file and row."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: target list not found")
    table = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    require_columns(table.columns, path)
    line = 2 if p.suffix not in (".parquet", ".pq") else None
    where = [f"{path}: row {i}" + (f" (line {i + line})" if line else "") for i in range(len(table))]
    ra = pd.to_numeric(table["ra"], errors="coerce").to_numpy(np.float64)
    dec = pd.to_numeric(table["dec"], errors="coerce").to_numpy(np.float64)
    check_positions(ra, dec, where)
    table = table.assign(ra=ra, dec=dec, _where=where)
    return table


def target_parents(config: SurveyConfig, out_dir: str, params_path: str = "params.yaml") -> dict:
    """Targets mode: fetch each target's cutout and write the survey shards; returns the metrics' ``source`` entry.

    Raises RuntimeError when more than ``max_failed_fraction`` of the fetches fail (listing some).
    """
    cutout_config = build(CutoutConfig, config.cutout or {}, "survey.cutout", params_path, CUTOUT_RULES,
                          workers=config.cutout_workers)
    if cutout_config.size_pix != config.stamp_size or abs(cutout_config.pixscale_arcsec - PIXEL_SCALE_ARCSEC) > 1e-9:
        raise ValueError(f"survey.cutout: size_pix {cutout_config.size_pix} / pixscale_arcsec "
                         f"{cutout_config.pixscale_arcsec} must equal survey.stamp_size {config.stamp_size} / "
                         f"{PIXEL_SCALE_ARCSEC}")
    targets = read_targets(config.targets)
    ids = parent_ids_by_position(targets["ra"].to_numpy(), targets["dec"].to_numpy())
    targets = targets.assign(parent_id=ids).sort_values("parent_id", kind="stable").reset_index(drop=True)
    client = CutoutClient(cutout_config, config.cache_dir)
    writer, prov, failures = _ShardWriter(out_dir, config), Provenance(), []
    columns = input_columns(targets.columns)
    for start in range(0, len(targets), config.shard_rows):   # fetched shard by shard: memory bounded by a shard
        part = targets.iloc[start:start + config.shard_rows]
        names = [f"parent {pid}" for pid in part["parent_id"]]
        cutouts, failed = client.fetch_many(list(zip(names, part["ra"], part["dec"])), desc="survey cutouts")
        failures += failed
        part = part[[name in cutouts for name in names]]
        if not len(part):
            continue
        cuts = [cutouts[f"parent {pid}"] for pid in part["parent_id"]]
        batch = StampBatch(np.stack([c.image for c in cuts]), np.stack([c.invvar for c in cuts]),
                           np.stack([c.present for c in cuts]), np.stack([c.has_invvar for c in cuts]))
        values = {c: part[c].to_numpy() for c in columns}
        writer.add(parent_table(values, batch, part["parent_id"].to_numpy(np.int64), list(part["_where"]),
                                config, prov))
    failed_fraction = len(failures) / len(targets) if len(targets) else 0.0
    if failed_fraction > config.max_failed_fraction:
        shown = "\n  ".join(str(f) for f in sorted(failures, key=str)[:10])
        raise RuntimeError(f"survey: {len(failures)} of {len(targets)} cutouts failed ({failed_fraction:.3f} > "
                           f"survey.max_failed_fraction {config.max_failed_fraction}), e.g.\n  {shown}")
    writer.flush()
    return {"mode": "targets", "targets": config.targets, "parents_in": len(targets),
            "parent_id": "rank of (ra, dec), ties by input order",
            "cutouts": {**client.stats, "requested": len(targets), "failed_fraction": failed_fraction,
                        "failures": sorted(str(f) for f in failures)[:20]},
            "dropped": len(prov.dropped), "dropped_rows": prov.dropped[:20], "provenance": prov.counts}


def summarise_real(catalogue: pa.Table, source: dict) -> dict:
    """metrics/survey.json of a real-mode survey: summarise_survey's entries that real data has, plus ``source``."""
    if catalogue.num_rows == 0:
        raise ValueError(f"survey ({source['mode']} mode): no parent rows written ({source.get('dropped', 0)} dropped)")
    out = summarise_survey(catalogue)
    out.pop("neighbours_per_stamp_mean")
    out["source"] = source
    return out

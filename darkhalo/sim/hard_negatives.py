"""Hard negatives: lens-like non-lenses in survey-like cutouts, and their split assignment.

Embedded mode simulates four classes of galaxies that a lens finder confuses
with arcs around a red galaxy -- ``ring`` (collisional / resonance rings, often
lopsided and knotty), ``spiral`` (grand-design two-armed spirals), ``merger``
(a companion plus curved tidal tails) and ``edge_on`` (thin dusty disks
through a bulge) -- each with a red-ish central component at LRG-like
magnitudes and blue-ish features at arc-like radii (``feature_radius_arcsec_range``)
and magnitudes (``core_mag_r_range`` + ``feature_dmag_range``); their light is
darkhalo/sim/hard_negative_shapes.py's.

Everything else is the survey's own machinery (``darkhalo.sim.survey``): sky
position inside the survey's sky patches, observing conditions, Moffat PSF per
band, neighbours and stars, background noise from the depth, invvar and
defects (masked pixels, NaN pixels, missing bands at the survey's rates).
The central component fills the survey's ``lrg_*`` columns (so metadata,
normalisation and gates apply unchanged); ``hn_*`` columns describe the class
and its features.

parent_id namespace: hard negative number k (0-based) has
``parent_id = HARD_NEGATIVE_PARENT_ID_BASE + k`` with the base 2**40, far above
any survey parent (0 .. n_parents-1); ``check_namespace`` enforces it.  Random
draws come from ``keyed_rng(seed, "hard_negatives", parent_id)``, so a row
depends only on (params, k), never on sharding or workers.

Split: each row takes the ``region_split`` of the HEALPix pixel (NESTED, the
split table's nside) holding its position (``darkhalo.sim.split.attach_split``);
rows in guard-band pixels or in pixels the split did not assign are counted,
not written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from darkhalo.sim import survey
from darkhalo.core.params import NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.sim.cutout_table import table_from_cutouts
from darkhalo.physics.profiles import pixel_coords_arcsec
from darkhalo.core.rng import keyed_rng
from darkhalo.core.runtime import runtime_config
from darkhalo.sim.split import GUARD, SPLITS, UNASSIGNED
from darkhalo.io.stamps import stamps_from_native
from darkhalo.sim.survey import arrow_fields
from darkhalo.core.units import BANDS, catalogue_precision, mag_from_flux_nmgy
from darkhalo.physics.visibility import arc_visibility
from darkhalo.sim.hard_negative_shapes import CLASS_MODELS, draw_core, render_features

CLASSES = ("ring", "spiral", "merger", "edge_on")
HARD_NEGATIVE_PARENT_ID_BASE = 1 << 40
RNG_STREAM = "hard_negatives"
SOURCE_EMBEDDED = "embedded"   # hn_source; real mode: "galaxy_zoo_decals" / "ring_catalogue" (galaxy_zoo.py)
# Feature r mag minus core r mag, per class: disks and spiral arms outshine their bulges,
# rings and tidal features are about as bright as lensed arcs are next to their deflectors.
DEFAULT_FEATURE_DMAG_RANGE = {"ring": (-0.5, 2.0), "spiral": (-1.5, 1.0), "merger": (-0.5, 2.0),
                              "edge_on": (-1.5, 0.5)}


@dataclass(frozen=True)
class HardNegativesConfig:
    """``hard_negatives:`` in params.yaml (magnitudes AB, radii arcsec)."""

    mode: str = "embedded"                      # embedded | galaxy_zoo
    classes: list = CLASSES                     # (defaults are tuples; params give lists)
    n_per_class: int = 300
    core_mag_r_range: list = (19.5, 21.5)
    feature_dmag_range: dict | None = None      # per class; None: DEFAULT_FEATURE_DMAG_RANGE
    feature_radius_arcsec_range: list = (0.6, 3.0)
    measure_visibility: bool = True
    shard_rows: int = 200
    row_group_rows: int = 256
    gallery_per_class: int = 6
    galaxy_zoo: dict | None = None              # real mode, see darkhalo/io/galaxy_zoo.py
    workers: int = 2                            # runtime.workers (darkhalo/core/runtime.py): shard processes

    @property
    def dmag_range(self) -> dict:
        """Feature r mag minus core r mag range per class."""
        return dict(DEFAULT_FEATURE_DMAG_RANGE if self.feature_dmag_range is None else self.feature_dmag_range)


def _range_rule(lo_min: float, hi_max: float):
    return (lambda v: len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            and lo_min <= v[0] <= v[1] <= hi_max, f"must be [low, high] with {lo_min} <= low <= high <= {hi_max}")


HN_RULES = {
    "mode": (lambda v: v in ("embedded", "galaxy_zoo"), "must be 'embedded' or 'galaxy_zoo'"),
    "classes": (lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(CLASSES),
                f"must be a non-empty list of distinct names from {list(CLASSES)}"),
    "n_per_class": POSITIVE, "shard_rows": POSITIVE, "row_group_rows": POSITIVE,
    "gallery_per_class": NON_NEGATIVE,
    "core_mag_r_range": _range_rule(14.0, 25.0),
    "feature_dmag_range": (lambda v: isinstance(v, dict) and set(v) <= set(CLASSES) and all(_range_rule(-4.0, 6.0)[0](r) for r in v.values()),
                           f"must map class names {list(CLASSES)} to [low, high] with -4 <= low <= high <= 6"),
    "feature_radius_arcsec_range": _range_rule(0.2, 6.0),
}


def hard_negatives_config(params: dict, path: str) -> HardNegativesConfig:
    """HardNegativesConfig from the ``hard_negatives`` entry of a params mapping (``workers``: ``runtime``)."""
    config = build(HardNegativesConfig, section(params, "hard_negatives", path), "hard_negatives", path, HN_RULES,
                   workers=runtime_config(params, path).workers)
    missing = [c for c in config.classes if c not in config.dmag_range]
    if missing:
        raise ParamError(f"{path}: hard_negatives.feature_dmag_range has no range for class(es) {missing}")
    return config


def check_namespace(n_parents: int, n_rows: int) -> None:
    """Raise if survey parent ids (0..n_parents-1) could reach the hard-negative namespace."""
    if n_parents >= HARD_NEGATIVE_PARENT_ID_BASE or n_rows >= HARD_NEGATIVE_PARENT_ID_BASE:
        raise ValueError(f"parent_id namespace: survey ids 0..{n_parents - 1} and hard negatives "
                         f"{HARD_NEGATIVE_PARENT_ID_BASE}+0..{n_rows - 1} must stay below/above 2**40")


# ---------------------------------------------------------------------------------------------
# Columns

# hn_* columns, after the survey catalogue columns (pixel columns follow; see stamps.py).
HN_EXTRA_FIELDS = (
    arrow_fields("hn_class hn_source hn_source_id", pa.string())
    + arrow_fields("hn_feature_flux_nmgy_g hn_feature_flux_nmgy_r hn_feature_flux_nmgy_z hn_feature_mag_r "
                   "hn_feature_radius_arcsec hn_feature_mean_radius_arcsec hn_vote_fraction hn_annulus_snr",
                   pa.float64())
    + arrow_fields("hn_shape_json", pa.string())
    + arrow_fields("nside", pa.int32())
    + arrow_fields("healpix_pixel", pa.int64())
)
HN_FIELDS = list(survey.CATALOGUE_FIELDS) + list(HN_EXTRA_FIELDS)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def draw_hard_negative(config: survey.SurveyConfig, hn: HardNegativesConfig, patches: np.ndarray,
                       index: int) -> tuple[dict, np.ndarray, np.random.Generator]:
    """Row (catalogue values), pre-PSF feature light (3, S, S) and stream of hard negative ``index``."""
    hn_class = hn.classes[index % len(hn.classes)]
    parent_id = HARD_NEGATIVE_PARENT_ID_BASE + index
    rng = keyed_rng(config.seed, RNG_STREAM, parent_id)
    row = survey.draw_site(patches, parent_id, rng)
    builder, n_rng, re_rng, q_rng, gr_rng, rz_rng, fgr_rng, frz_rng = CLASS_MODELS[hn_class]
    core_mag_r = float(rng.uniform(*hn.core_mag_r_range))
    row.update(catalogue_precision(draw_core(rng, core_mag_r, n_rng, re_rng, q_rng, gr_rng, rz_rng, row["ebv"])))
    feature_mag_r = core_mag_r + float(rng.uniform(*hn.dmag_range[hn_class]))
    feature_gr, feature_rz = float(rng.uniform(*fgr_rng)), float(rng.uniform(*frz_rng))
    radius = float(rng.uniform(*hn.feature_radius_arcsec_range))
    components, shape = builder(rng, radius, row)
    row["_neighbours"] = survey.draw_neighbours(config, rng, row["gal_b_deg"])
    features = render_features(components, row, feature_mag_r, feature_gr, feature_rz, row["ebv"],
                                config.stamp_size, config.supersample)
    x, y = pixel_coords_arcsec(config.stamp_size)
    r = np.hypot(x - row["lrg_x_arcsec"], y - row["lrg_y_arcsec"])
    for j, band in enumerate(BANDS):
        row[f"hn_feature_flux_nmgy_{band}"] = catalogue_precision(features[j].sum())
    row.update(
        hn_class=hn_class, hn_source=SOURCE_EMBEDDED, hn_source_id="",
        hn_feature_mag_r=catalogue_precision(mag_from_flux_nmgy(row["hn_feature_flux_nmgy_r"])),
        hn_feature_radius_arcsec=radius,
        hn_feature_mean_radius_arcsec=catalogue_precision((features[1] * r).sum() / features[1].sum()),
        hn_vote_fraction=float("nan"), hn_annulus_snr=float("nan"),
        hn_shape_json=json.dumps(_rounded({"class": hn_class, "feature_gr": feature_gr, "feature_rz": feature_rz,
                                           "feature_mag_r_drawn": feature_mag_r, **shape}), sort_keys=True),
    )
    return row, features, rng


def simulate_hard_negatives(config: survey.SurveyConfig, hn: HardNegativesConfig, patches: np.ndarray,
                            indices: np.ndarray) -> pa.Table:
    """Native-layout table of hard negatives ``indices`` (columns HN_FIELDS then pixels; split not yet set).

    ``hn_annulus_snr`` is the arc-visibility S/N (darkhalo.physics.visibility) measured
    at the features' mean radius when ``hn.measure_visibility``; NaN otherwise.
    """
    drawn = [draw_hard_negative(config, hn, patches, int(k)) for k in indices]
    rows = [d[0] for d in drawn]
    rngs = [d[2] for d in drawn]
    extra = np.stack([d[1] for d in drawn], axis=1) if drawn else None
    for row in rows:
        row.update(nside=0, healpix_pixel=-1)
    table = survey.observe(config, rows, rngs, survey.render_noiseless(config, rows, extra), HN_FIELDS)
    if hn.measure_visibility and table.num_rows:
        batch = stamps_from_native(table)
        snr = np.full(table.num_rows, np.nan)
        for i, row in enumerate(rows):
            image, invvar = batch.image[i], batch.invvar[i]
            bands = [j for j in range(3) if batch.present[i, j] and np.isfinite(image[j]).all()]
            if not bands:  # a defect stamp with no clean band: left NaN, counted in the metrics
                continue
            fwhm = [row[f"psfsize_{BANDS[j]}"] for j in bands]
            snr[i] = arc_visibility(image[bands], invvar[bands], fwhm, row["hn_feature_mean_radius_arcsec"]).snr
        table = table.set_column(table.schema.get_field_index("hn_annulus_snr"), "hn_annulus_snr",
                                 pa.array(snr, pa.float64()))
    return table


# ---------------------------------------------------------------------------------------------
# Split partitions

def write_split_partitions(table: pa.Table, out_dir: str | Path, shard: int, row_group_rows: int) -> dict:
    """Write rows of train/val/test as ``region_split=<s>/part-<shard>.parquet`` (hive layout).

    Rows in guard or unassigned pixels are not written.  Returns
    {split: {class: count}} for every split name including guard and unassigned.
    """
    from darkhalo.io.dataset import write_parquet

    split = np.asarray(table.column("region_split").to_pylist(), dtype=object)
    classes = np.asarray(table.column("hn_class").to_pylist(), dtype=object)
    counts = {}
    for name in SPLITS + (GUARD, UNASSIGNED):
        sel = split == name
        counts[name] = {str(c): int(n) for c, n in zip(*np.unique(classes[sel], return_counts=True))}
        if name in SPLITS and sel.any():
            part = Path(out_dir) / f"region_split={name}"
            part.mkdir(parents=True, exist_ok=True)
            write_parquet(table.filter(pa.array(sel)).drop_columns(["region_split"]),
                          part / f"part-{shard:05d}.parquet", row_group_rows)
    return counts


# ---------------------------------------------------------------------------------------------
# Metrics

def summarise(catalogue: pa.Table, counts: dict, extra: dict | None = None) -> dict:
    """Metrics of written hard negatives: counts per class and split, losses, magnitudes, sizes, visibility."""
    cols = {n: catalogue.column(n).to_numpy(zero_copy_only=False) for n in
            ("hn_class", "lrg_mag_r", "hn_feature_mag_r", "hn_feature_radius_arcsec",
             "hn_feature_mean_radius_arcsec", "hn_annulus_snr", "lrg_mag_g", "cutout_ok")}
    per_class = {}
    for name in sorted(set(cols["hn_class"].tolist())):
        sel = cols["hn_class"] == name
        snr = cols["hn_annulus_snr"][sel].astype(float)
        finite = snr[np.isfinite(snr)]

        def pct(values):
            values = values[np.isfinite(values)]
            return [float(v) for v in np.percentile(values, [5, 50, 95])] if len(values) else None

        per_class[name] = {
            "n_written": int(sel.sum()),
            "core_mag_r_5_50_95": pct(cols["lrg_mag_r"][sel].astype(float)),
            "core_gr_median": pct(cols["lrg_mag_g"][sel].astype(float) - cols["lrg_mag_r"][sel].astype(float))[1]
            if np.isfinite(cols["lrg_mag_g"][sel].astype(float)).any() else None,
            "feature_mag_r_5_50_95": pct(cols["hn_feature_mag_r"][sel].astype(float)),
            "feature_radius_arcsec_5_50_95": pct(cols["hn_feature_radius_arcsec"][sel].astype(float)),
            "feature_mean_radius_arcsec_5_50_95": pct(cols["hn_feature_mean_radius_arcsec"][sel].astype(float)),
            "annulus_snr_5_50_95": pct(snr),
            "annulus_snr_not_measured": int(len(snr) - len(finite)),
            "annulus_snr_fraction_ge_5": float(np.mean(finite >= 5)) if len(finite) else None,
            "annulus_snr_fraction_ge_10": float(np.mean(finite >= 10)) if len(finite) else None,
        }
    by_split = {s: {c: n for c, n in counts.get(s, {}).items()} for s in SPLITS}
    written = sum(sum(v.values()) for v in by_split.values())
    return {
        "n_written": written,
        "counts": by_split,
        "dropped": {"guard_band": counts.get(GUARD, {}), "unassigned_pixel": counts.get(UNASSIGNED, {})},
        "n_dropped": sum(sum(counts.get(k, {}).values()) for k in (GUARD, UNASSIGNED)),
        "per_class": per_class,
        "parent_id_base": HARD_NEGATIVE_PARENT_ID_BASE,
        **(extra or {}),
    }


def merge_counts(parts: list[dict]) -> dict:
    """Sum {split: {class: n}} dictionaries."""
    out: dict = {}
    for part in parts:
        for split, by_class in part.items():
            for c, n in by_class.items():
                out.setdefault(split, {})
                out[split][c] = out[split].get(c, 0) + n
    return out


# ---------------------------------------------------------------------------------------------
# Real mode: rows from fetched cutouts

def hard_negatives_from_cutouts(selection: pa.Table, parent_ids: np.ndarray, cutouts: dict, size: int) -> pa.Table:
    """Native-layout HN_FIELDS table of selected targets (``galaxy_zoo.select`` rows) that have a cutout
    (``{hn_source_id: Cutout}``): darkhalo.sim.cutout_table's catalogue columns, the selection's class, source,
    id and vote fraction; the feature columns NaN, ``hn_shape_json`` "{}" (split columns set later)."""
    names = selection.column("hn_source_id").to_pylist()
    keep = [i for i, n in enumerate(names) if n in cutouts]
    rows = selection.to_pylist()
    targets = [rows[i] for i in keep]
    from_selection = ("hn_class", "hn_source", "hn_source_id", "hn_vote_fraction")
    placeholders = {"hn_shape_json": "{}", "nside": 0, "healpix_pixel": -1}
    extra = {f.name: pa.array([t[f.name] if f.name in from_selection else placeholders.get(f.name, float("nan"))
                               for t in targets], f.type) for f in HN_EXTRA_FIELDS}
    return table_from_cutouts([cutouts[names[i]] for i in keep], parent_ids[keep], [t["ra"] for t in targets],
                              [t["dec"] for t in targets], size, extra)

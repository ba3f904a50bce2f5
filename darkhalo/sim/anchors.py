"""Anchors: known lenses from the lenscat catalogue, checked positions, measured centres and tiers.

* ``read_lenscat``: the catalogue shipped by the ``lenscat`` package
  (``data/catalog.csv``: name, RA, DEC, zlens, type, grading, ref; 32,838 rows
  in lenscat 1.1.3).  The package is installed with ``pip install --no-deps``
  and never imported (its import needs ligo.skymap): the CSV is read from the
  folder ``importlib.util.find_spec("lenscat").submodule_search_locations[0]``.
* ``select_catalogue``: anchor sets chosen by params -- each set is a list of
  reference substrings (arXiv ids of the discovery papers), allowed gradings
  and lens types -- restricted to the DR10 footprint (darkhalo/sim/footprint.py:
  Dec < +32.375, Dec > -68, |b| > 20 deg).  A lens matching several sets
  belongs to the first one listed.
* ``check_positions``: a user-supplied anchor list (CSV ``name, ra, dec`` in
  degrees) cross-matched to the catalogue by name (lenscat aliases separated by
  " | " count); any anchor farther than ``position_tolerance_arcsec`` from its
  catalogue position is an ``AnchorPositionError`` listing the worst offsets.
* ``measure_anchor``: on an anchor's stamp, the measured galaxy at the stamp
  centre (``centre_check``: aperture S/N of all bands and a significant light
  peak of the reddest band near the centre -- robust to arcs brighter than the
  lens) and the arc-visibility S/N and tier (darkhalo.physics.visibility.arc_visibility;
  Tier A when S/N >= threshold).
* ``select_anchors``: the anchor sample of the ``anchors`` stage -- the
  catalogue sets capped at ``max_per_set`` per set in a fixed pseudo-random
  order, or, when ``anchor_list`` is given, the (position-checked) listed
  anchors -- with the Einstein radius used for the measurement annulus
  (``anchor_theta_e_arcsec``: the list's value, else the set default).
* ``measure_anchors`` / ``apply_check_policy``: the measured checks on every
  stamp (galaxy at the centre, visibility S/N, tier); a failing anchor is an
  error naming it (``centre_policy: fail``) or a counted, listed drop
  (``drop``, the default; more than ``max_dropped_fraction`` of them is an
  error all the same).
* ``anchors_from_cutouts`` (real mode) and ``summarise_anchors`` (metrics).
  The embedded pixels are darkhalo/sim/anchor_sim.py's.

parent_id namespace for anchor stamps: the anchor whose lenscat row is k has
``parent_id = ANCHOR_PARENT_ID_BASE + k`` (2 * 2**40), above the hard
negatives' 2**40 + k and the survey's 0..n_parents-1.  Keying by the lenscat
row (not the position in the sample) keeps an anchor's random stream when the
cap, the sets or the list change.
"""
from __future__ import annotations

import re

import hashlib
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from scipy.ndimage import gaussian_filter, maximum_filter
from tqdm import tqdm

from darkhalo.sim import footprint
from darkhalo.sim.cutout_table import table_from_cutouts
from darkhalo.io.cutouts import CUTOUT_PARAM_KEYS, CUTOUT_RULES, CutoutConfig
from darkhalo.core.params import NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.physics.profiles import pixel_coords_arcsec
from darkhalo.core.runtime import runtime_config
from darkhalo.io.stamps import PIXEL_COLUMNS, StampBatch
from darkhalo.core.stats import percentiles, rate_with_interval
from darkhalo.sim.survey import CATALOGUE_FIELDS, arrow_fields
from darkhalo.core.units import BANDS
from darkhalo.physics.visibility import CentreGalaxy, arc_visibility, centre_galaxy, tier


def _shown(value) -> str:
    """repr of a cell value for error messages (numpy scalars as plain Python values)."""
    return repr(value.item() if hasattr(value, "item") else value)


ANCHOR_PARENT_ID_BASE = 2 << 40
LENSCAT_VERSION = "1.1.3"   # the version this reader was written and tested against
LENSCAT_COLUMNS = {"name": "name", "RA [deg]": "ra", "DEC [deg]": "dec", "zlens": "zlens_text", "type": "lens_type",
                   "grading": "grading", "ref": "ref"}

# Default anchor sets: reference substrings (discovery papers), gradings, lens types.
DEFAULT_SETS = {
    "slacs": {"ref_contains": ["arXiv:astro-ph/0511453", "arXiv:0805.1931", "arXiv:0911.2471", "SLACS "],
              "grading": ["confident"], "lens_type": ["galaxy"]},
    "bells": {"ref_contains": ["arXiv:1112.3683", "arXiv:1604.01842"],
              "grading": ["confident", "probable"], "lens_type": ["galaxy"]},
    "desi_ls": {"ref_contains": ["arXiv:1906.00970", "arXiv:2005.04730", "arXiv:2206.02764"],
                "grading": ["confident"], "lens_type": ["galaxy"]},
}
DEFAULT_THETA_E_ARCSEC = {"slacs": 1.2, "bells": 1.1, "desi_ls": 1.6}
# Real mode: DR10 median PSF FWHM (docs/domain.md); the cutout service does not say the seeing.
DEFAULT_CUTOUT_PSF_FWHM_ARCSEC = {"g": 1.3, "r": 1.2, "z": 1.1}
# Embedded mode: per set, injection priors (over inject.default_priors) and clumps.  Spectroscopic
# lenses (SLACS, BELLS): theta_E 0.8-1.8", faint sources (most arcs invisible at DR10 depth);
# ground-imaging discoveries (DESI-LS): larger theta_E, brighter arcs.
DEFAULT_SIMULATION = {
    "slacs": {"priors": {"theta_e_arcsec": {"uniform": [0.8, 1.8]}, "src_dmag": {"uniform": [2.5, 5.0]},
                         "src_reff_arcsec": {"log_uniform": [0.05, 0.3]}}, "n_clumps": 2},
    "bells": {"priors": {"theta_e_arcsec": {"uniform": [0.8, 1.8]}, "src_dmag": {"uniform": [2.5, 5.0]},
                         "src_reff_arcsec": {"log_uniform": [0.05, 0.3]}}, "n_clumps": 2},
    "desi_ls": {"priors": {"theta_e_arcsec": {"uniform": [1.2, 2.5]}, "src_dmag": {"uniform": [1.0, 3.0]},
                           "src_reff_arcsec": {"log_uniform": [0.1, 0.5]}}, "n_clumps": 2},
}
SIMULATION_KEYS = ("priors", "n_clumps")
MODES = ("embedded", "cutouts")
CENTRE_POLICIES = ("fail", "drop")


@dataclass(frozen=True)
class AnchorsConfig:
    """``anchors:`` in params.yaml (angles in arcsec)."""

    sets: dict | None = None                    # None: DEFAULT_SETS
    restrict_to_footprint: bool = True
    anchor_list: str = ""                       # user CSV name, ra, dec[, theta_e_arcsec]; "" = none
    position_tolerance_arcsec: float = 1.0
    default_theta_e_arcsec: dict | None = None  # per set, when the anchor list gives none; None: DEFAULT_THETA_E_ARCSEC
    tier_snr_threshold: float = 10.0            # Tier A: arc-visibility S/N >= this
    annulus_half_width_psf_fwhm: float = 0.6
    core_radius_psf_fwhm: float = 0.5
    centre_min_snr: float = 10.0
    centre_max_offset_arcsec: float = 1.0
    cutout: dict | None = None                  # CutoutConfig fields (real mode)
    # --- the anchors stage ---
    mode: str = "embedded"                      # embedded (simulated at the catalogue positions) | cutouts
    max_per_set: int = 60                       # catalogue sets: at most this many per set (0: all)
    centre_policy: str = "drop"                 # fail: a failing anchor check is an error; drop: counted drop
    max_dropped_fraction: float = 0.05          # drop: more failing anchors than this fail the stage all the same
    gallery_per_tier: int = 8
    cache_dir: str = "data/cache/cutouts"       # real mode: cutout cache
    max_failed_fraction: float = 0.0            # real mode: more failed cutouts than this fail the stage
    cutout_psf_fwhm_arcsec: dict | None = None  # real mode: PSF FWHM per band assumed for the measurements
    simulation: dict | None = None              # embedded mode: arc population per set (darkhalo/sim/anchor_sim.py)
    cutout_workers: int = 4                     # runtime.cutout_workers (darkhalo/core/runtime.py): fetch threads

    @property
    def psf_fwhm_assumed(self) -> dict:
        return dict(DEFAULT_CUTOUT_PSF_FWHM_ARCSEC if self.cutout_psf_fwhm_arcsec is None
                    else self.cutout_psf_fwhm_arcsec)

    @property
    def simulation_specs(self) -> dict:
        return dict(DEFAULT_SIMULATION if self.simulation is None else self.simulation)

    @property
    def anchor_sets(self) -> dict:
        return dict(DEFAULT_SETS if self.sets is None else self.sets)

    @property
    def theta_e_defaults(self) -> dict:
        return dict(DEFAULT_THETA_E_ARCSEC if self.default_theta_e_arcsec is None else self.default_theta_e_arcsec)

    @property
    def cutout_config(self) -> CutoutConfig:
        return CutoutConfig(**(self.cutout or {}), workers=self.cutout_workers)


def _set_ok(sets) -> bool:
    if not isinstance(sets, dict) or not sets:
        return False
    for spec in sets.values():
        if not isinstance(spec, dict) or set(spec) - {"ref_contains", "grading", "lens_type"}:
            return False
        refs = spec.get("ref_contains")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
            return False
        for key in ("grading", "lens_type"):
            if key in spec and not (isinstance(spec[key], list) and all(isinstance(v, str) for v in spec[key])):
                return False
    return True


ANCHOR_RULES = {
    "sets": (_set_ok, "must map set names to {ref_contains: [non-empty strings], grading: [..], lens_type: [..]}"),
    "position_tolerance_arcsec": POSITIVE, "tier_snr_threshold": (lambda v: np.isfinite(v), "must be finite"),
    "annulus_half_width_psf_fwhm": POSITIVE, "core_radius_psf_fwhm": NON_NEGATIVE, "centre_min_snr": NON_NEGATIVE,
    "centre_max_offset_arcsec": POSITIVE,
    "default_theta_e_arcsec": (lambda v: isinstance(v, dict) and all(isinstance(x, (int, float)) and x > 0
                                                                     for x in v.values()),
                               "must map set names to positive radii (arcsec)"),
    "cutout": (lambda v: isinstance(v, dict) and set(v) <= set(CUTOUT_PARAM_KEYS),
               f"must be a mapping with keys from {sorted(CUTOUT_PARAM_KEYS)}"),
    "mode": (lambda v: v in MODES, f"must be one of {list(MODES)}"),
    "centre_policy": (lambda v: v in CENTRE_POLICIES, f"must be one of {list(CENTRE_POLICIES)}"),
    "max_per_set": NON_NEGATIVE, "gallery_per_tier": NON_NEGATIVE,
    "max_failed_fraction": (lambda v: 0 <= v <= 1, "must be within [0, 1]"),
    "max_dropped_fraction": (lambda v: 0 <= v <= 1, "must be within [0, 1]"),
    "cache_dir": (lambda v: bool(v.strip()), "must be a non-empty path"),
    "cutout_psf_fwhm_arcsec": (lambda v: isinstance(v, dict) and set(v) == {"g", "r", "z"} and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v.values()),
        "must map g, r, z to positive FWHM (arcsec)"),
    "simulation": (lambda v: isinstance(v, dict) and all(isinstance(s, dict) and set(s) <= set(SIMULATION_KEYS)
                                                         for s in v.values()),
                   f"must map set names to {{{', '.join(SIMULATION_KEYS)}}} mappings"),
}


def anchors_config(params: dict, path: str) -> AnchorsConfig:
    """AnchorsConfig from the ``anchors`` entry of a params mapping (``cutout_workers``: ``runtime``)."""
    workers = runtime_config(params, path).cutout_workers
    config = build(AnchorsConfig, section(params, "anchors", path), "anchors", path, ANCHOR_RULES,
                   cutout_workers=workers)
    build(CutoutConfig, config.cutout or {}, "anchors.cutout", path, CUTOUT_RULES, workers=workers)
    missing = [s for s in config.anchor_sets if s not in config.theta_e_defaults]
    if missing:
        raise ParamError(f"{path}: anchors.default_theta_e_arcsec has no radius for set(s) {missing}")
    missing = [s for s in config.anchor_sets if s not in config.simulation_specs]
    if config.mode == "embedded" and missing:
        raise ParamError(f"{path}: anchors.simulation has no arc population for set(s) {missing} (embedded mode)")
    return config


# ---------------------------------------------------------------------------------------------
# The catalogue

def lenscat_csv_path() -> Path:
    """``data/catalog.csv`` inside the installed lenscat package (found without importing it)."""
    spec = importlib.util.find_spec("lenscat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the lenscat package is not installed: pip install --no-deps lenscat=={LENSCAT_VERSION}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "catalog.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: lenscat is installed but ships no data/catalog.csv")
    return path


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _first_redshift(text: str) -> float:
    """First number in a lenscat zlens entry ('0.2285', '0.675266 | 0.6753', '0.272?', '-', 'measured')."""
    match = _NUMBER.search(str(text))
    return float(match.group()) if match else float("nan")


def read_lenscat(path: str | Path | None = None) -> pd.DataFrame:
    """The lenscat catalogue with columns name, ra, dec (deg), zlens (NaN if none), zlens_text, lens_type,
    grading, ref, lenscat_row; errors name the file, row and column."""
    path = Path(path) if path is not None else lenscat_csv_path()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LENSCAT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (have {list(frame.columns)})")
    frame = frame.rename(columns=LENSCAT_COLUMNS)[list(LENSCAT_COLUMNS.values())]
    for column, limit in (("ra", 360.0), ("dec", 90.0)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {i} column '{[k for k, v in LENSCAT_COLUMNS.items() if v == column][0]}'"
                             f" = {_shown(frame[column].iloc[i])} is not a position in degrees ({int(bad.sum())} such rows)")
        frame[column] = values
    frame["zlens"] = [_first_redshift(z) for z in frame["zlens_text"]]
    frame["lenscat_row"] = np.arange(len(frame))
    return frame


def anchor_name(row_name: str, lenscat_row: int) -> str:
    """The first of a lenscat entry's aliases, or 'lenscat-<row>' where it has none ('-')."""
    aliases = _aliases(row_name)
    return aliases[0] if aliases else f"lenscat-{lenscat_row}"


def select_catalogue(config: AnchorsConfig, catalogue: pd.DataFrame | None = None) -> tuple[pa.Table, dict]:
    """Anchor table (name, catalogue_name, ra, dec, anchor_set, grading, lens_type, zlens, theta_e_arcsec, ref,
    lenscat_row)
    and a report per set (matching the set, claimed by an earlier set, outside the footprint, selected).

    ``theta_e_arcsec`` is the set's default (lenscat has no Einstein radii).
    """
    catalogue = read_lenscat() if catalogue is None else catalogue
    refs = catalogue["ref"].astype(str)
    taken = np.zeros(len(catalogue), bool)
    inside = footprint.in_dr10_footprint(catalogue["ra"], catalogue["dec"]) if config.restrict_to_footprint else \
        np.ones(len(catalogue), bool)
    parts, report = [], {}
    for set_name, spec in config.anchor_sets.items():
        match = np.zeros(len(catalogue), bool)
        for needle in spec["ref_contains"]:
            match |= refs.str.contains(needle, regex=False).to_numpy()
        if "grading" in spec:
            match &= catalogue["grading"].isin(spec["grading"]).to_numpy()
        if "lens_type" in spec:
            match &= catalogue["lens_type"].isin(spec["lens_type"]).to_numpy()
        claimed = match & taken
        chosen = match & ~taken & inside
        taken |= match
        report[set_name] = {"matching": int(match.sum()), "claimed_by_earlier_set": int(claimed.sum()),
                            "outside_footprint": int((match & ~claimed & ~inside).sum()),
                            "selected": int(chosen.sum())}
        sub = catalogue[chosen]
        parts.append(pd.DataFrame({
            "name": [anchor_name(n, r) for n, r in zip(sub["name"], sub["lenscat_row"])],
            "catalogue_name": sub["name"].to_numpy(),
            "ra": sub["ra"].to_numpy(float), "dec": sub["dec"].to_numpy(float), "anchor_set": set_name,
            "grading": sub["grading"].to_numpy(), "lens_type": sub["lens_type"].to_numpy(),
            "zlens": sub["zlens"].to_numpy(float), "theta_e_arcsec": float(config.theta_e_defaults[set_name]),
            "ref": sub["ref"].to_numpy(), "lenscat_row": sub["lenscat_row"].to_numpy(np.int64)}))
    table = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(table, preserve_index=False), report


# ---------------------------------------------------------------------------------------------
# Position check

class AnchorPositionError(ValueError):
    """User anchor positions disagree with the catalogue (the message lists the worst offsets)."""


def _aliases(name: str) -> list[str]:
    """Distinct ' | '-separated aliases of a lenscat name, without brackets, blanks and '-'."""
    out = []
    for alias in str(name).split("|"):
        alias = alias.strip().strip("[]").strip()
        if alias and alias != "-" and alias not in out:
            out.append(alias)
    return out


def angular_separation_arcsec(ra1_deg, dec1_deg, ra2_deg, dec2_deg) -> np.ndarray:
    """Great-circle separation (arcsec) of ICRS positions in degrees (astropy's ``SkyCoord.separation``)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    first = SkyCoord(np.asarray(ra1_deg, float) * u.deg, np.asarray(dec1_deg, float) * u.deg)
    second = SkyCoord(np.asarray(ra2_deg, float) * u.deg, np.asarray(dec2_deg, float) * u.deg)
    return np.asarray(first.separation(second).arcsec)


def read_anchor_list(path: str | Path) -> pd.DataFrame:
    """User anchor list: CSV with name, ra, dec (deg) and optionally theta_e_arcsec; errors name file, row, column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: anchor list not found")
    frame = pd.read_csv(path, dtype={"name": str}, keep_default_na=False)
    missing = [c for c in ("name", "ra", "dec") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (need name, ra, dec in degrees)")
    for column, limit in (("ra", 360.0), ("dec", 90.0)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {i} ({_shown(frame['name'].iloc[i])}) column '{column}' = "
                             f"{_shown(frame[column].iloc[i])} is not a position in degrees")
        frame[column] = values
    blank = frame["name"].astype(str).str.strip() == ""
    if blank.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(blank.to_numpy())[0])} column 'name' is empty")
    dup = frame["name"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{path}: row {i} column 'name' = {_shown(frame['name'].iloc[i])} appears twice")
    return frame


def check_positions(anchor_list: str | Path | pd.DataFrame, catalogue: pd.DataFrame, tolerance_arcsec: float = 1.0,
                    n_worst: int = 10, source: str = "anchor list") -> pd.DataFrame:
    """Offsets (arcsec) of user anchors from their catalogue positions, matched by name.

    Returns a frame (name, ra, dec, catalogue_ra, catalogue_dec, offset_arcsec,
    lenscat_row).  Raises ValueError naming anchors absent from the catalogue,
    and AnchorPositionError, listing the ``n_worst`` largest offsets, if any
    anchor is farther than ``tolerance_arcsec`` from its catalogue position.
    A name with several catalogue entries is matched to the nearest.
    """
    if not isinstance(anchor_list, pd.DataFrame):
        source = str(anchor_list)
        anchor_list = read_anchor_list(anchor_list)
    index: dict[str, list[int]] = {}
    for i, name in enumerate(catalogue["name"].astype(str)):
        for alias in _aliases(name):
            index.setdefault(alias, []).append(i)
    cat_ra, cat_dec = catalogue["ra"].to_numpy(float), catalogue["dec"].to_numpy(float)
    rows, unknown = [], []
    for _, anchor in anchor_list.iterrows():
        candidates = index.get(str(anchor["name"]).strip().strip("[]").strip())
        if not candidates:
            unknown.append(str(anchor["name"]))
            continue
        sep = angular_separation_arcsec(anchor["ra"], anchor["dec"], cat_ra[candidates], cat_dec[candidates])
        k = int(np.argmin(sep))
        rows.append({"name": str(anchor["name"]), "ra": float(anchor["ra"]), "dec": float(anchor["dec"]),
                     "catalogue_ra": float(cat_ra[candidates[k]]), "catalogue_dec": float(cat_dec[candidates[k]]),
                     "offset_arcsec": float(sep[k]), "lenscat_row": int(candidates[k])})
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} anchor name(s) not in the lenscat catalogue: "
                         f"{', '.join(unknown[:20])}")
    offsets = pd.DataFrame(rows)
    bad = offsets[offsets["offset_arcsec"] > tolerance_arcsec].sort_values("offset_arcsec", ascending=False)
    if len(bad):
        lines = "\n".join(f"  {r.name}: {r.offset_arcsec:.1f}\" off (list {r.ra:.6f}, {r.dec:+.6f}; catalogue "
                          f"{r.catalogue_ra:.6f}, {r.catalogue_dec:+.6f})" for r in bad.head(n_worst).itertuples())
        raise AnchorPositionError(f"{source}: {len(bad)} of {len(offsets)} anchors are more than "
                                  f"{tolerance_arcsec:g}\" from their catalogue positions; worst:\n{lines}")
    return offsets


# ---------------------------------------------------------------------------------------------
# Measurements on an anchor's stamp

CENTRE_PEAK_MIN_SIGMA = 5.0        # a local maximum of the smoothed S/N map counts above this (MAD) sigma
CENTRE_PEAK_SMOOTH_PIX = 1.0       # Gaussian sigma (pixels) of that smoothing
CENTRE_SEARCH_RADIUS_ARCSEC = 3.0


def nearest_peak_offset_arcsec(image: np.ndarray, invvar: np.ndarray,
                               min_peak_sigma: float = CENTRE_PEAK_MIN_SIGMA,
                               smooth_pix: float = CENTRE_PEAK_SMOOTH_PIX,
                               search_radius_arcsec: float = CENTRE_SEARCH_RADIUS_ARCSEC) -> float:
    """Distance (arcsec) from the stamp centre to the nearest significant local maximum of one band's
    S/N map (image sqrt(invvar), (S, S)) smoothed by a Gaussian of ``smooth_pix`` pixels; significant:
    above ``min_peak_sigma`` x its robust (MAD) scatter.  inf when none lies within
    ``search_radius_arcsec``.  Bad pixels (NaN, invvar <= 0) count as zero."""
    image = np.asarray(image, np.float64)
    invvar = np.asarray(invvar, np.float64)
    good = np.isfinite(image) & np.isfinite(invvar) & (invvar > 0)
    snr = np.where(good, image * np.sqrt(np.where(good, invvar, 0.0)), 0.0)
    smooth = gaussian_filter(snr, smooth_pix)
    scatter = max(1.4826 * float(np.median(np.abs(smooth - np.median(smooth)))), 1e-12)
    x, y = pixel_coords_arcsec(image.shape[-1])
    r = np.hypot(x, y)
    peaks = (smooth == maximum_filter(smooth, size=3)) & (smooth > min_peak_sigma * scatter) & \
        (r <= search_radius_arcsec)
    return float(r[peaks].min()) if peaks.any() else float("inf")


def centre_check(image: np.ndarray, invvar: np.ndarray, psf_fwhm_arcsec, *, min_snr: float,
                 max_offset_arcsec: float) -> CentreGalaxy:
    """Is there a galaxy at the stamp centre?  ``image``/``invvar`` (B, S, S) with bands in g, r, z order.

    Both: the aperture S/N within one FWHM of the centre, all bands
    (``visibility.centre_galaxy``), is >= ``min_snr``; and the nearest
    significant light peak of the **reddest band given** (the last one;
    ``nearest_peak_offset_arcsec``) is within ``max_offset_arcsec`` of the centre.

    Why not ``centre_galaxy``'s brightest peak within 3" of all bands: a blue
    arc or a neighbour brighter than the lens pulls it away (it failed 21 of
    the 164 embedded default anchors with DESI-like src_dmag 0.5-2.5; the
    nearest peak of all bands still failed 10-11 of 164 with src_dmag 1-3).
    Lens galaxies are red and arcs blue, so the lens stays a local maximum in
    z (1 of 164 failed: a compact source magnified 13x outshining the lens in z
    too).  Blank sky fails both tests (0 of 100 noise stamps passed the peak test).
    """
    aperture = centre_galaxy(image, invvar, psf_fwhm_arcsec, min_snr=min_snr, max_offset_arcsec=max_offset_arcsec)
    image = np.asarray(image)
    offset = nearest_peak_offset_arcsec(image[-1] if image.ndim == 3 else image,
                                        np.asarray(invvar)[-1] if image.ndim == 3 else invvar)
    return CentreGalaxy(aperture.snr, offset, bool(aperture.snr >= min_snr and offset <= max_offset_arcsec))


def measure_anchor(image: np.ndarray, invvar: np.ndarray, psf_fwhm_arcsec, theta_e_arcsec: float,
                   config: AnchorsConfig) -> dict:
    """Centre-galaxy check (``centre_check``) and arc visibility of one anchor stamp ((B, S, S) nmgy and nmgy^-2).

    Returns centre_snr, centre_offset_arcsec (to the nearest significant light
    peak of the reddest band given; inf if none within 3"), centre_ok, visibility_snr,
    visibility_snr_per_band, annulus_inner_arcsec, annulus_outer_arcsec, tier ('A' / 'B').
    """
    centre = centre_check(image, invvar, psf_fwhm_arcsec, min_snr=config.centre_min_snr,
                          max_offset_arcsec=config.centre_max_offset_arcsec)
    vis = arc_visibility(image, invvar, psf_fwhm_arcsec, theta_e_arcsec,
                         annulus_half_width_psf_fwhm=config.annulus_half_width_psf_fwhm,
                         core_radius_psf_fwhm=config.core_radius_psf_fwhm)
    return {"centre_snr": centre.snr, "centre_offset_arcsec": centre.peak_offset_arcsec, "centre_ok": centre.ok,
            "visibility_snr": vis.snr, "visibility_snr_per_band": list(vis.snr_per_band),
            "annulus_inner_arcsec": vis.annulus_inner_arcsec, "annulus_outer_arcsec": vis.annulus_outer_arcsec,
            "tier": tier(vis.snr, config.tier_snr_threshold)}


class CentreGalaxyError(ValueError):
    """Anchor stamps without a measured galaxy at their centre (the message names them)."""


def require_centre_galaxies(names: list[str], measurements: list[dict], n_list: int = 20) -> None:
    """Raise CentreGalaxyError naming every anchor whose stamp has no galaxy at the centre."""
    bad = [(n, m) for n, m in zip(names, measurements) if not m["centre_ok"]]
    if bad:
        lines = "\n".join(f"  {n}: central S/N {m['centre_snr']:.1f}, light peak {m['centre_offset_arcsec']:.1f}\" "
                          "from the centre" for n, m in bad[:n_list])
        raise CentreGalaxyError(f"{len(bad)} of {len(names)} anchor stamps have no galaxy at the centre:\n{lines}")


# ---------------------------------------------------------------------------------------------
# The anchor sample of the `anchors` stage

THETA_E_FROM_LIST, THETA_E_SET_DEFAULT = "anchor_list", "set_default"
SOURCE_EMBEDDED, SOURCE_CUTOUT = "embedded", "cutout"   # anchor_source


def hash_order(names, seed: int, set_name: str) -> np.ndarray:
    """Indices of ``names`` in a fixed pseudo-random order: sha256 of (seed, set, name), so adding or removing
    catalogue rows never reshuffles the others."""
    keys = np.array([hashlib.sha256(f"{seed}:{set_name}:{n}".encode("utf-8")).hexdigest() for n in names])
    return np.argsort(keys, kind="stable")


def cap_per_set(frame: pd.DataFrame, sets, max_per_set: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """At most ``max_per_set`` anchors of each set (0: all), the first ones in ``hash_order``; report per set."""
    parts, report = [], {}
    for set_name in sets:
        sub = frame[frame["anchor_set"] == set_name]
        chosen = sub.iloc[hash_order(sub["name"].tolist(), seed, set_name)]
        if max_per_set > 0:
            chosen = chosen.head(max_per_set)
        parts.append(chosen)
        report[set_name] = {"available": int(len(sub)), "chosen": int(len(chosen))}
    return pd.concat(parts, ignore_index=True), report


def _listed_theta_e(listed: pd.DataFrame, source: str) -> dict:
    """{name: theta_E (arcsec)} of anchor-list rows that give one (blank = none); errors name file, row, column."""
    if "theta_e_arcsec" not in listed.columns:
        return {}
    raw = listed["theta_e_arcsec"].astype(str).str.strip()
    values = pd.to_numeric(raw.where(raw != "", None), errors="coerce").to_numpy(float)
    bad = (raw != "").to_numpy() & ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: row {i} ({_shown(listed['name'].iloc[i])}) column 'theta_e_arcsec' = "
                         f"{_shown(raw.iloc[i])} is not a positive radius in arcsec "
                         "(leave it blank for the set default)")
    return {str(n): float(v) for n, v in zip(listed["name"], values) if np.isfinite(v)}


def select_anchors(config: AnchorsConfig, seed: int, catalogue: pd.DataFrame | None = None
                   ) -> tuple[pd.DataFrame, dict]:
    """The stage's anchors, one row each, sorted by parent_id, and a selection report.

    Without ``anchor_list``: the catalogue sets in the footprint (``select_catalogue``),
    at most ``max_per_set`` per set in ``hash_order``.  With it: every listed anchor,
    after the position check (``check_positions``: an error listing the worst
    offsets), at its catalogue position, in the first set its lenscat row belongs
    to (an anchor in no set is an error); listed anchors outside the footprint are
    counted and named in the report, not kept; no cap.  Columns: name,
    catalogue_name, ra, dec (the catalogue's, deg), anchor_set, grading,
    lens_type, zlens, anchor_theta_e_arcsec (the radius of the measurement
    annulus: the list's value, else the set default), anchor_theta_e_source,
    ref, lenscat_row, parent_id (= ANCHOR_PARENT_ID_BASE + lenscat_row).
    """
    catalogue = read_lenscat() if catalogue is None else catalogue
    sets = list(config.anchor_sets)
    if not config.anchor_list:
        table, sets_report = select_catalogue(config, catalogue)
        frame = table.to_pandas().rename(columns={"theta_e_arcsec": "anchor_theta_e_arcsec"})
        frame["anchor_theta_e_source"] = THETA_E_SET_DEFAULT
        frame, cap = cap_per_set(frame, sets, config.max_per_set, seed)
        report = {"source": "lenscat", "sets": sets_report,
                  "cap": {"max_per_set": config.max_per_set, "order": "sha256(seed:set:name)", "per_set": cap}}
    else:
        source = config.anchor_list
        listed = read_anchor_list(source)
        offsets = check_positions(listed, catalogue, config.position_tolerance_arcsec, source=source)
        everywhere, _ = select_catalogue(replace(config, restrict_to_footprint=False), catalogue)
        members = everywhere.to_pandas().set_index("lenscat_row", drop=False)
        rows = offsets["lenscat_row"].to_numpy(np.int64)
        orphans = [n for n, r in zip(offsets["name"], rows) if r not in members.index]
        if orphans:
            raise ValueError(f"{source}: {len(orphans)} listed anchor(s) belong to no anchor set "
                             f"(anchors.sets): {', '.join(orphans[:20])}")
        twice = offsets[offsets["lenscat_row"].duplicated(keep=False)]
        if len(twice):
            raise ValueError(f"{source}: names {', '.join(twice['name'])} are the same catalogue lens "
                             f"(lenscat row(s) {sorted(set(twice['lenscat_row']))})")
        frame = members.loc[rows].reset_index(drop=True).rename(columns={"theta_e_arcsec": "anchor_theta_e_arcsec"})
        frame["name"] = offsets["name"].astype(str).to_numpy()
        theta = _listed_theta_e(listed, source)
        frame["anchor_theta_e_source"] = [THETA_E_FROM_LIST if n in theta else THETA_E_SET_DEFAULT
                                          for n in frame["name"]]
        frame["anchor_theta_e_arcsec"] = [theta.get(n, t) for n, t in zip(frame["name"],
                                                                         frame["anchor_theta_e_arcsec"])]
        inside = (footprint.in_dr10_footprint(frame["ra"], frame["dec"]) if config.restrict_to_footprint
                  else np.ones(len(frame), bool))
        outside = frame[~inside]
        frame = frame[inside].reset_index(drop=True)
        report = {"source": "anchor_list", "anchor_list": source, "n_listed": int(len(listed)),
                  "position_tolerance_arcsec": config.position_tolerance_arcsec,
                  "position_offset_arcsec_max": float(offsets["offset_arcsec"].max()) if len(offsets) else 0.0,
                  "outside_footprint": {"n": int(len(outside)), "names": outside["name"].tolist()[:50]},
                  "per_set": {s: int((frame["anchor_set"] == s).sum()) for s in sets},
                  "theta_e_from_list": int(sum(n in theta for n in frame["name"])),
                  "cap": {"max_per_set": config.max_per_set, "applied": False}}
    frame["parent_id"] = ANCHOR_PARENT_ID_BASE + frame["lenscat_row"].to_numpy(np.int64)
    frame = frame.sort_values("parent_id", kind="stable").reset_index(drop=True)
    if frame["name"].duplicated().any():
        dup = frame["name"][frame["name"].duplicated()].tolist()
        raise ValueError(f"anchor names appear twice in the sample: {dup[:20]}")
    if not len(frame):
        raise ValueError(f"no anchor selected (report: {report})")
    return frame, report


# ---------------------------------------------------------------------------------------------
# Output columns (after the survey's CATALOGUE_FIELDS; pixel columns last)

IDENTITY_FIELDS = (
    arrow_fields("name catalogue_name anchor_set grading lens_type ref anchor_source anchor_theta_e_source",
                 pa.string())
    + arrow_fields("zlens anchor_theta_e_arcsec", pa.float64())
    + arrow_fields("lenscat_row", pa.int64())
)
# The injection engine's column names (darkhalo/sim/injection.py): every arc redraws from its row
# (injection.render_columns); null in real mode (no truth).
INJECTION_FLOAT_COLUMNS = (
    "theta_e_arcsec lens_q lens_phi_rad lens_x_arcsec lens_y_arcsec shear shear_phi_rad src_x_arcsec src_y_arcsec "
    "src_reff_arcsec src_n_sersic src_q src_phi_rad src_flux_nmgy_g src_flux_nmgy_r src_flux_nmgy_z "
    "psf_fwhm_used_g psf_fwhm_used_r psf_fwhm_used_z src_dmag src_mag_r src_gr src_rz src_clump_flux_frac "
    "moffat_beta total_injected_flux_g total_injected_flux_r total_injected_flux_z magnification arc_snr "
    "arc_snr_aperture").split()
INJECTION_INT32_COLUMNS = ("config_id", "src_n_clumps", "supersample")
INJECTION_LIST_COLUMNS = ("src_clump_dx_arcsec", "src_clump_dy_arcsec", "src_clump_sigma_arcsec",
                          "src_clump_flux_nmgy_g", "src_clump_flux_nmgy_r", "src_clump_flux_nmgy_z")
INJECTION_FIELDS = (
    [pa.field(n, pa.float64()) for n in INJECTION_FLOAT_COLUMNS]
    + [pa.field(n, pa.int32()) for n in INJECTION_INT32_COLUMNS]
    + arrow_fields("task_seed64", pa.int64())
    + [pa.field(n, pa.list_(pa.float64())) for n in INJECTION_LIST_COLUMNS]
)
MEASUREMENT_FIELDS = (
    arrow_fields("anchor_psf_fwhm_arcsec_g anchor_psf_fwhm_arcsec_r anchor_psf_fwhm_arcsec_z anchor_centre_snr "
                 "anchor_centre_offset_arcsec", pa.float64())
    + arrow_fields("anchor_centre_ok", pa.bool_())
    + arrow_fields("anchor_visibility_snr anchor_visibility_snr_g anchor_visibility_snr_r anchor_visibility_snr_z "
                   "anchor_annulus_inner_arcsec anchor_annulus_outer_arcsec", pa.float64())
    + arrow_fields("anchor_tier anchor_group", pa.string())
)
SPLIT_FIELDS = (arrow_fields("nside", pa.int32()) + arrow_fields("healpix_pixel", pa.int64())
                + arrow_fields("region_split", pa.string()))
BASE_FIELDS = list(CATALOGUE_FIELDS) + list(IDENTITY_FIELDS) + list(INJECTION_FIELDS)
ANCHOR_FIELDS = BASE_FIELDS + list(MEASUREMENT_FIELDS) + list(SPLIT_FIELDS)


def identity_columns(anchors: pd.DataFrame, source: str) -> dict:
    """IDENTITY_FIELDS arrays of the selected anchors (``select_anchors`` rows)."""
    return {f.name: pa.array([source] * len(anchors) if f.name == "anchor_source" else anchors[f.name].tolist(),
                             f.type) for f in IDENTITY_FIELDS}


def anchor_group(anchor_set: str, anchor_tier: str) -> str:
    """The evaluation's grouping key: '<set>:tier<A|B>'."""
    return f"{anchor_set}:tier{anchor_tier}"


# ---------------------------------------------------------------------------------------------
# Measured checks on every stamp

class AnchorCheckError(ValueError):
    """Anchor stamps that failed the measured checks (centre galaxy, visibility); the message names them."""


CHECK_NO_BAND, CHECK_NO_CENTRE, CHECK_UNMEASURABLE = "no_band", "no_centre_galaxy", "visibility_unmeasurable"


def measure_anchors(table: pa.Table, stamps: StampBatch, config: AnchorsConfig) -> tuple[dict, list[dict]]:
    """MEASUREMENT_FIELDS values of every row (catalogue + anchor columns, pixels in ``stamps``) and the failures.

    Measured on the bands present (pixels with NaN or invvar 0 are ignored by the
    measurements); PSF FWHM per band = ``psfsize_<band>`` where known (embedded),
    else ``cutout_psf_fwhm_arcsec`` (real mode); annulus at ``anchor_theta_e_arcsec``.
    A failure is {index, name, anchor_set, reason, detail, centre_snr, centre_offset_arcsec};
    reasons: no_band, no_centre_galaxy, visibility_unmeasurable.  Failing rows get tier None.
    """
    meta = table.select(["name", "anchor_set", "anchor_theta_e_arcsec"] +
                        [f"psfsize_{b}" for b in BANDS]).to_pylist()
    names = [f.name for f in MEASUREMENT_FIELDS]
    cols = {n: [] for n in names}
    failures = []
    assumed = config.psf_fwhm_assumed
    for i, row in enumerate(tqdm(meta, desc="anchor checks", unit="anchor")):
        fwhm = np.array([row[f"psfsize_{b}"] if row[f"psfsize_{b}"] is not None and np.isfinite(row[f"psfsize_{b}"])
                         and row[f"psfsize_{b}"] > 0 else float(assumed[b]) for b in BANDS])
        rec = {n: float("nan") for n in names}
        rec.update(anchor_centre_ok=False, anchor_tier=None, anchor_group=None,
                   **{f"anchor_psf_fwhm_arcsec_{b}": float(fwhm[j]) for j, b in enumerate(BANDS)})
        bands = [j for j in range(3) if stamps.present[i, j] and np.isfinite(stamps.image[i, j]).any()]
        failure = None
        if not bands:
            failure = (CHECK_NO_BAND, "no band with data")
        else:
            image = stamps.image[i, bands].astype(np.float64)
            invvar = np.nan_to_num(stamps.invvar[i, bands].astype(np.float64), nan=0.0)
            theta = float(row["anchor_theta_e_arcsec"])
            try:
                m = measure_anchor(image, invvar, fwhm[bands], theta, config)
            except ValueError as exc:
                c = centre_check(image, invvar, fwhm[bands], min_snr=config.centre_min_snr,
                                 max_offset_arcsec=config.centre_max_offset_arcsec)
                m = {"centre_snr": c.snr, "centre_offset_arcsec": c.peak_offset_arcsec, "centre_ok": c.ok}
                failure = (CHECK_UNMEASURABLE, str(exc))
            rec.update(anchor_centre_snr=float(m["centre_snr"]),
                       anchor_centre_offset_arcsec=float(m["centre_offset_arcsec"]),
                       anchor_centre_ok=bool(m["centre_ok"]))
            if "visibility_snr" in m:
                rec.update(anchor_visibility_snr=float(m["visibility_snr"]),
                           anchor_annulus_inner_arcsec=float(m["annulus_inner_arcsec"]),
                           anchor_annulus_outer_arcsec=float(m["annulus_outer_arcsec"]))
                for j, snr in zip(bands, m["visibility_snr_per_band"]):
                    rec[f"anchor_visibility_snr_{BANDS[j]}"] = float(snr)
                rec["anchor_tier"] = m["tier"]
                rec["anchor_group"] = anchor_group(row["anchor_set"], m["tier"])
            if not m["centre_ok"]:
                peak = (f"nearest light peak {m['centre_offset_arcsec']:.1f}\" from the centre"
                        if np.isfinite(m["centre_offset_arcsec"]) else
                        f"no significant light peak within {CENTRE_SEARCH_RADIUS_ARCSEC:g}\"")
                failure = (CHECK_NO_CENTRE, f"central S/N {m['centre_snr']:.1f} (need >= {config.centre_min_snr:g}), "
                                            f"{peak} (allowed {config.centre_max_offset_arcsec:g}\")")
        if failure is not None:
            rec.update(anchor_tier=None, anchor_group=None)
            failures.append({"index": i, "name": row["name"], "anchor_set": row["anchor_set"], "reason": failure[0],
                             "detail": failure[1], "centre_snr": rec["anchor_centre_snr"],
                             "centre_offset_arcsec": rec["anchor_centre_offset_arcsec"]})
        for n in names:
            cols[n].append(rec[n])
    return cols, failures


def apply_check_policy(table: pa.Table, failures: list[dict], policy: str, max_dropped_fraction: float = 0.0,
                       n_list: int = 20) -> pa.Table:
    """``table`` without the failing rows (policy 'drop', at most ``max_dropped_fraction`` of the rows), else
    AnchorCheckError naming them (policy 'fail': any failure; 'drop': too many)."""
    if not failures:
        return table
    fraction = len(failures) / max(table.num_rows, 1)
    if policy == "fail" or fraction > max_dropped_fraction:
        why = ("anchors.centre_policy = fail; 'drop' counts and skips them" if policy == "fail" else
               f"{fraction:.1%} > anchors.max_dropped_fraction {max_dropped_fraction:.1%}: positions or cutouts wrong?")
        lines = "\n".join(f"  {f['name']} [{f['anchor_set']}]: {f['reason']}: {f['detail']}" for f in failures[:n_list])
        raise AnchorCheckError(f"{len(failures)} of {table.num_rows} anchor stamps failed the anchor checks "
                               f"({why}):\n{lines}")
    keep = np.ones(table.num_rows, bool)
    keep[[f["index"] for f in failures]] = False
    return table.filter(pa.array(keep))


def finish_table(base: pa.Table, measured: dict) -> pa.Table:
    """BASE_FIELDS table + pixels -> + MEASUREMENT_FIELDS (split columns come later), pixels last."""
    out = base.select([f.name for f in BASE_FIELDS])
    for f in MEASUREMENT_FIELDS:
        out = out.append_column(f, pa.array(measured[f.name], f.type))
    for name in PIXEL_COLUMNS:
        out = out.append_column(base.schema.field(name), base.column(name))
    return out


def order_columns(table: pa.Table) -> pa.Table:
    """ANCHOR_FIELDS in order, then the pixel columns."""
    return table.select([f.name for f in ANCHOR_FIELDS] + list(PIXEL_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Real mode: rows from fetched cutouts

def anchors_from_cutouts(anchors: pd.DataFrame, cutouts: dict, size: int) -> pa.Table:
    """BASE_FIELDS + pixels of the anchors (``select_anchors`` rows) that have a cutout (``{name: Cutout}``):
    darkhalo.sim.cutout_table's catalogue columns, the identity columns, null injection columns."""
    keep = [i for i, n in enumerate(anchors["name"]) if n in cutouts]
    sub = anchors.iloc[keep].reset_index(drop=True)
    extra = {**identity_columns(sub, SOURCE_CUTOUT), **{f.name: pa.nulls(len(sub), f.type) for f in INJECTION_FIELDS}}
    return table_from_cutouts([cutouts[n] for n in sub["name"]], sub["parent_id"], sub["ra"], sub["dec"], size, extra)


# ---------------------------------------------------------------------------------------------
# Metrics

def summarise_anchors(table: pa.Table, config: AnchorsConfig, selection: dict, failures: list[dict],
                      extra: dict | None = None) -> dict:
    """Metrics of the written anchors: counts per set and tier, visibility S/N, drops with reasons, selection."""
    col = {n: table.column(n).to_numpy(zero_copy_only=False) for n in
           ("anchor_set", "anchor_tier", "anchor_group", "anchor_visibility_snr", "anchor_centre_snr",
            "region_split", "theta_e_arcsec", "src_mag_r", "arc_snr", "magnification", "cutout_ok", "sim_defect",
            "bad_pixel_frac", "anchor_theta_e_arcsec")}
    counts, tier_a, vis, arcs = {}, {}, {}, {}
    for set_name in config.anchor_sets:
        sel = col["anchor_set"] == set_name
        n_a = int(np.sum(sel & (col["anchor_tier"] == "A")))
        counts[set_name] = {"A": n_a, "B": int(np.sum(sel & (col["anchor_tier"] == "B"))), "n": int(sel.sum())}
        tier_a[set_name] = rate_with_interval(n_a, int(sel.sum()))
        vis[set_name] = percentiles(col["anchor_visibility_snr"][sel].astype(float))
        if config.mode == "embedded":
            arcs[set_name] = {k: percentiles(col[k][sel].astype(float))
                              for k in ("theta_e_arcsec", "src_mag_r", "arc_snr", "magnification")}
    by_reason: dict = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    groups, group_counts = np.unique(col["anchor_group"].astype(str), return_counts=True)
    splits, split_counts = np.unique(col["region_split"].astype(str), return_counts=True)
    out = {
        "mode": config.mode,
        "n_written": int(table.num_rows),
        "counts": counts,
        "counts_by_group": {str(g): int(c) for g, c in zip(groups, group_counts)},
        "tier_a_fraction": tier_a,
        "tier_snr_threshold": config.tier_snr_threshold,
        "visibility_snr": {**vis, "all": percentiles(col["anchor_visibility_snr"].astype(float))},
        "centre_snr": percentiles(col["anchor_centre_snr"].astype(float)),
        "annulus_theta_e_arcsec": {s: percentiles(col["anchor_theta_e_arcsec"][col["anchor_set"] == s].astype(float))
                                   for s in config.anchor_sets},
        "drops": {"centre_policy": config.centre_policy, "max_dropped_fraction": config.max_dropped_fraction,
                  "n_dropped": len(failures), "by_reason": by_reason,
                  "anchors": [{k: f[k] for k in ("name", "anchor_set", "reason", "detail")} for f in failures[:50]]},
        "region_split_information_only": {str(s): int(c) for s, c in zip(splits, split_counts)},
        "stamps": {"cutout_ok_0": int(np.sum(col["cutout_ok"] != 1)),
                   "with_masked_pixels": int(np.sum(col["bad_pixel_frac"].astype(float) > 0)),
                   "sim_defect": {str(d): int(n) for d, n in zip(*np.unique(col["sim_defect"].astype(str),
                                                                           return_counts=True)) if d}},
        "selection": selection,
        "parent_id_base": ANCHOR_PARENT_ID_BASE,
        "lenscat_version": LENSCAT_VERSION,
    }
    if arcs:
        out["simulated_arcs"] = arcs
    out.update(extra or {})
    return out

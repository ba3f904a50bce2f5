"""``anchors:`` of params.yaml: the anchors stage's settings and their checks (angles in arcsec).

The anchor sets, their default Einstein radii, the real-mode PSF and the embedded arc
populations have no defaults here: params.yaml is the one place that holds them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkhalo.core.params import NON_NEGATIVE, POSITIVE, ParamError, build, section
from darkhalo.core.runtime import runtime_config
from darkhalo.io.cutouts import CUTOUT_PARAM_KEYS, CUTOUT_RULES, CutoutConfig

SIMULATION_KEYS = ("priors", "n_clumps")
MODES = ("embedded", "cutouts")
CENTRE_POLICIES = ("fail", "drop")


@dataclass(frozen=True)
class AnchorsConfig:
    """``anchors:`` in params.yaml (angles in arcsec)."""

    sets: dict                                  # {set: {ref_contains, grading, lens_type}}; first matching set wins
    default_theta_e_arcsec: dict                # per set, when the anchor list gives none (lenscat has no radii)
    cutout_psf_fwhm_arcsec: dict                # real mode: PSF FWHM per band assumed for the measurements
    simulation: dict                            # embedded mode: arc population per set (darkhalo/sim/anchor_sim.py)
    restrict_to_footprint: bool = True
    anchor_list: str = ""                       # user CSV name, ra, dec[, theta_e_arcsec]; "" = none
    position_tolerance_arcsec: float = 1.0
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
    cutout_workers: int = 4                     # runtime.cutout_workers (darkhalo/core/runtime.py): fetch threads

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
    missing = [s for s in config.sets if s not in config.default_theta_e_arcsec]
    if missing:
        raise ParamError(f"{path}: anchors.default_theta_e_arcsec has no radius for set(s) {missing}")
    missing = [s for s in config.sets if s not in config.simulation]
    if config.mode == "embedded" and missing:
        raise ParamError(f"{path}: anchors.simulation has no arc population for set(s) {missing} (embedded mode)")
    return config

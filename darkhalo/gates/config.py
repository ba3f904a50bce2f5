"""The ``gates:`` params section: tolerances and switches, the same for every generation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from darkhalo.physics.normalize import Normalization
from darkhalo.core.params import FRACTION, POSITIVE, ParamError, build, section
from darkhalo.gates.columns import QUALITY_COLUMNS, QUALITY_PLAUSIBLE_RANGES

POLICIES = ("quarantine", "fail")


@dataclass(frozen=True)
class GatesConfig:
    """Gate tolerances (effect sizes, rates) and switches; see docs/domain.md, "Gates"."""

    seed: int
    row_contract_policy: str = "quarantine"   # quarantine: bad rows listed, contract fails above max_quarantine_frac
    max_quarantine_frac: float = 0.01         # of all rows (defects and their pair partners)
    stamp_size_pix: int = 64                  # declared stamp shape (pixels per side)
    noise_from_psfdepth: bool = True          # gate 1.4: psfdepth_<band> > 0 stands in for a missing invvar plane
    max_abs_pixel_nmgy: float = 1e5           # 1.2:pixel_range: |finite image pixel| <= this (nmgy)
    quality_ranges: dict = field(default_factory=dict)   # contract:quality_range: {column: [low, high]} over the defaults
    quality_max_ks_d: float = 0.05            # gate 1.1
    quality_max_abs_smd: float = 0.1
    norm_max_ks_d: float = 0.05               # gate 1.5
    norm_max_abs_smd: float = 0.1
    core_radius_pix: float = 4.0              # gates 1.6 and 1.8: the central r < k px
    core_auc_tolerance: float = 0.05          # gate 1.6: |AUC - 0.5| <= this
    core_folds: int = 5                       # gate 1.6: cross-fitting folds, grouped by pairing key / sky region
    core_max_stamps: int = 20000              # gate 1.6: stamps sampled (by parent) for the classifier
    core_l2_c: float = 1.0                    # gate 1.6: inverse L2 strength of the logistic regression
    core_flux_ratio_eps: float = 0.05         # gate 1.8: ratio within [1 - eps, 1 + eps]
    split_fraction_tolerance: float = 0.03    # |fraction of rows - declared| per split
    max_unpaired_frac: float = 0.0            # pairs intact: (parent_id, replicate) groups not 1 positive + 1 control
    normalization_outer_radius_pix: float = 16.0   # gate 1.5 / 1.6: the shared normalisation (darkhalo.physics.normalize)
    normalization_clip: float = 10.0
    batch_rows: int = 256                     # stamps per streamed pixel chunk
    brightness_quantile: float = 0.95         # brightness support: the positives' arc-S/N quantile ...
    brightness_max_frac_above: float = 0.05   # ... above which at most this fraction of hard negatives may lie
    pairing_key: str = ""                     # column pairing positives and controls; "": parent_id when present

    @property
    def normalization(self) -> Normalization:
        """The shared normalisation these gates audit (same object training stores)."""
        return Normalization(outer_radius_pix=self.normalization_outer_radius_pix, clip=self.normalization_clip)

    def suite_parameters(self) -> dict:
        """Values for the ``$PARAMETER`` references in expectations/*.json."""
        row_tol = self.max_quarantine_frac if self.row_contract_policy == "quarantine" else 0.0
        return {
            "row_contract_mostly": 1.0 - row_tol,
            "max_quarantine_frac": row_tol,
            "quality_max_ks_d": self.quality_max_ks_d,
            "quality_max_abs_smd": self.quality_max_abs_smd,
            "norm_max_ks_d": self.norm_max_ks_d,
            "norm_max_abs_smd": self.norm_max_abs_smd,
            "core_auc_min": 0.5 - self.core_auc_tolerance,
            "core_auc_max": 0.5 + self.core_auc_tolerance,
            "core_flux_ratio_min": 1.0 - self.core_flux_ratio_eps,
            "core_flux_ratio_max": 1.0 + self.core_flux_ratio_eps,
            "split_fraction_tolerance": self.split_fraction_tolerance,
            "pairs_mostly": 1.0 - self.max_unpaired_frac,
            "brightness_max_frac_above": self.brightness_max_frac_above,
        }


GATES_RULES = {
    "row_contract_policy": (lambda v: v in POLICIES, f"must be one of {POLICIES}"),
    "max_quarantine_frac": FRACTION, "max_abs_pixel_nmgy": POSITIVE, "stamp_size_pix": (lambda v: v >= 16, "must be >= 16"),
    "quality_max_ks_d": FRACTION, "quality_max_abs_smd": POSITIVE, "norm_max_ks_d": FRACTION,
    "norm_max_abs_smd": POSITIVE, "core_radius_pix": POSITIVE,
    "core_auc_tolerance": (lambda v: 0 < v <= 0.5, "must be within (0, 0.5]"),
    "core_folds": (lambda v: v >= 2, "must be >= 2"), "core_max_stamps": (lambda v: v >= 20, "must be >= 20"),
    "core_l2_c": POSITIVE, "core_flux_ratio_eps": (lambda v: 0 < v < 1, "must be within (0, 1)"),
    "split_fraction_tolerance": FRACTION, "max_unpaired_frac": FRACTION,
    "normalization_outer_radius_pix": POSITIVE, "normalization_clip": POSITIVE, "batch_rows": POSITIVE,
    "brightness_quantile": (lambda v: 0 < v < 1, "must be within (0, 1)"), "brightness_max_frac_above": FRACTION,
}


def gates_config(params: dict, path: str) -> GatesConfig:
    """GatesConfig from the ``seed`` and ``gates`` entries of a params mapping."""
    seed = params.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamError(f"{path}: seed = {seed!r}: must be a non-negative integer")
    config = build(GatesConfig, section(params, "gates", path), "gates", path, GATES_RULES, seed=seed)
    ranges = {}
    for name, bounds in {**QUALITY_PLAUSIBLE_RANGES, **config.quality_ranges}.items():
        if name not in QUALITY_COLUMNS:
            raise ParamError(f"{path}: gates.quality_ranges.{name}: not a quality column "
                             f"(known: {', '.join(QUALITY_COLUMNS)})")
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) and bounds[0] < bounds[1]):
            raise ParamError(f"{path}: gates.quality_ranges.{name} = {bounds!r}: must be [low, high] numbers, low < high")
        ranges[name] = (float(bounds[0]), float(bounds[1]))
    config = dataclasses.replace(config, quality_ranges=ranges)
    if config.core_radius_pix >= config.stamp_size_pix / 2:
        raise ParamError(f"{path}: gates.core_radius_pix = {config.core_radius_pix}: must be < half the stamp")
    if config.normalization_outer_radius_pix >= config.stamp_size_pix / 2 * 1.414:
        raise ParamError(f"{path}: gates.normalization_outer_radius_pix leaves no outer pixels")
    return config


GATE_FAMILIES = ("contracts", "split", "shortcuts", "priors")


def generation_blocking(params: dict, generation: str, path: str) -> tuple[str, ...]:
    """Gate families whose failure stops the pipeline for ``generation``.

    ``generations.<generation>.gates_blocking``: true (every family), false (none) or a
    list of families, e.g. [contracts, split] to keep data integrity blocking while the
    shortcut gates are reported only.
    """
    generations = section(params, "generations", path)
    entry = generations.get(generation)
    if not isinstance(entry, dict):
        raise ParamError(f"{path}: generations.{generation} is not defined (known: {', '.join(sorted(generations))})")
    value = entry.get("gates_blocking")
    if isinstance(value, bool):
        return GATE_FAMILIES if value else ()
    if isinstance(value, list) and all(v in GATE_FAMILIES for v in value):
        return tuple(f for f in GATE_FAMILIES if f in value)
    raise ParamError(f"{path}: generations.{generation}.gates_blocking = {value!r}: must be true, false or a list "
                     f"of gate families ({', '.join(GATE_FAMILIES)})")

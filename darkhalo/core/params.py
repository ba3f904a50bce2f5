"""Loading and validating params.yaml: bad values fail loudly, naming file and key.

``load_params`` refuses a repeated key (at any depth) and any key that ``SCHEMA`` does not
know, so every stage checks the whole file's structure before it does any work; each
section's values are checked by its builder (``build``) when a stage reads it.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Callable

import yaml


class ParamError(ValueError):
    """A params file value that is missing, unknown, mistyped or out of range."""


# Injection priors a generation may set (darkhalo/sim/injection.py draws them in this order).
PRIOR_NAMES = ("theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_n_sersic", "src_q", "src_offset_theta_e",
               "src_gr", "src_rz", "shear", "lens_dq", "lens_dphi_rad", "src_clump_flux_frac",
               "clump_sigma_arcsec")
EACH = "<name>"   # a schema whose only key is EACH: entries of any name, each with EACH's schema


def _keys(*names: str, **nested: dict) -> dict:
    """A schema: ``names`` take any value; each ``nested`` key holds a mapping with its own schema."""
    return {**dict.fromkeys(names), **nested}


# The known keys of params.yaml. Sections built into a dataclass list its fields
# (tests/test_params_strict.py checks that they agree).
PRIORS = _keys(*PRIOR_NAMES)
INJECTION = _keys("n_clumps", "arc_snr_target", "n_candidates", "replicates", "source_bank", priors=PRIORS)
TRAIN = _keys("architecture", "width", "metadata_columns", "metadata_transform", "epochs", "batch_size", "learning_rate",
              "weight_decay", "lr_schedule", "hard_negative_frac", "augment_flips", "augment_rot90",
              "centre_mask_prob", "centre_mask_radius_pix", "centre_mask_radius_theta_e", "import_checkpoint",
              "max_train_rows", "preprocessing", "input_crop_pix", "early_stopping_patience",
              "early_stopping_min_delta", "seeds", "ema_decay")
CUTOUT = _keys("base_url", "layer", "bands", "pixscale_arcsec", "size_pix", "invvar", "timeout_s", "retries",
               "backoff_s", "max_backoff_s", "deadline_s", "max_bytes")
# Execution settings (darkhalo/core/runtime.py): no stage lists them in dvc.yaml.
RUNTIME = _keys("workers", "engine", "threads", "device", "cutout_workers")
SCHEMA = _keys(
    "seed", "ablation",
    runtime=RUNTIME,
    survey=_keys("n_parents", "stamp_size", "n_sky_patches", "supersample", "neighbour_supersample", "moffat_beta",
                 "galaxy_density_r22_per_deg2", "star_density_r22_per_deg2", "masked_stamp_frac", "nan_stamp_frac",
                 "missing_band_frac", "defect_cutout_ok_frac", "shard_rows", "row_group_rows", "noise", "mode",
                 "manifest", "targets", "cache_dir", "max_failed_fraction", cutout=CUTOUT),
    survey_gallery=_keys("n_stamps", "columns"),
    inject=_keys("supersample", "moffat_beta", "tile_pix", "refine_rel", "noise", "sky_mag_per_arcsec2_g",
                 "sky_mag_per_arcsec2_r", "sky_mag_per_arcsec2_z", "core_radius_pix", "batch_size",
                 "acceptance_bins", "acceptance_cap_quantile", "row_group_rows", default_priors=PRIORS),
    train=TRAIN,
    generations={EACH: {**INJECTION, **_keys("label", "gates_blocking", train=TRAIN)}},
    benchmark=_keys(injection=INJECTION),
    evaluate=_keys("operating_fpr", "prevalence", "theta_e_edges", "arc_snr_edges", "src_mag_edges",
                   "calibration_bins", "mask_radii_theta_e", "mask_radii_pix", "gate13_max_fraction_above",
                   "gate17_max_retained_fraction", "gate17_max_core_arc_snr", "gates_blocking", "batch_size",
                   "diagnostic_max_rows", "min_benchmark_negatives", "selection_theta_e_edges", "selection_psf_fwhm_r_edges",
                   "selection_depth_r_mag_edges", "selection_min_count"),
    split=_keys("nside", "region_nside", "train_frac", "val_frac", "test_frac", "guard_rings"),
    gates=_keys("row_contract_policy", "max_quarantine_frac", "stamp_size_pix", "noise_from_psfdepth",
                "quality_max_ks_d", "quality_max_abs_smd", "norm_max_ks_d", "norm_max_abs_smd", "core_radius_pix",
                "core_auc_tolerance", "core_folds", "core_max_stamps", "core_l2_c", "core_flux_ratio_eps",
                "split_fraction_tolerance", "max_unpaired_frac", "normalization_outer_radius_pix",
                "normalization_clip", "batch_rows", "brightness_quantile", "brightness_max_frac_above",
                "pairing_key", "max_abs_pixel_nmgy", "quality_ranges"),
    hard_negatives=_keys("mode", "classes", "n_per_class", "core_mag_r_range", "feature_dmag_range",
                         "feature_radius_arcsec_range", "measure_visibility", "shard_rows", "row_group_rows",
                         "gallery_per_class",
                         galaxy_zoo=_keys("catalogue", "ring_catalogue", "target_count", "class_fractions",
                                          "spiral_min_fraction", "merger_min_fraction", "edge_on_min_fraction",
                                          "min_votes", "max_petro_th50_arcsec", "max_failed_fraction", "cache_dir",
                                          cutout=CUTOUT)),
    anchors=_keys("restrict_to_footprint", "anchor_list", "position_tolerance_arcsec", "default_theta_e_arcsec",
                  "tier_snr_threshold", "annulus_half_width_psf_fwhm", "core_radius_psf_fwhm", "centre_min_snr",
                  "centre_max_offset_arcsec", "mode", "max_per_set", "centre_policy", "max_dropped_fraction",
                  "gallery_per_tier", "cache_dir", "max_failed_fraction", "cutout_psf_fwhm_arcsec", cutout=CUTOUT,
                  sets={EACH: _keys("ref_contains", "grading", "lens_type")},
                  simulation={EACH: _keys("n_clumps", priors=PRIORS)}),
    compare=_keys("baseline", "candidate", "n_bootstrap", "confidence", "tolerance", "min_units",
                  "anchor_max_interval_width", "core_separation_min", "weak_auc_max", "claimed_n_grid_configs"),
    report=_keys("gallery_n", "gallery_columns"),
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, mark = self.construct_object(key_node), key_node.start_mark
            if key in seen:
                raise ParamError(f"{mark.name}: line {mark.line + 1}: duplicate key {key!r} "
                                 f"(first at line {seen[key]})")
            seen[key] = mark.line + 1
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = "params.yaml") -> dict:
    """Parsed params file (a mapping) whose keys are all known (``check_keys``) and none repeated."""
    path = Path(path)
    try:
        with path.open() as stream:
            data = yaml.load(stream, Loader=_UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise ParamError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParamError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    check_keys(data, SCHEMA, path)
    return data


def runtime_home(where: str, key) -> str | None:
    """Where an execution setting found at ``where.key`` lives now (``runtime.<name>``), or None."""
    if where == "runtime":
        return None
    if key == "workers" and where.endswith("cutout"):
        return "runtime.cutout_workers"
    return f"runtime.{key}" if key in RUNTIME else None


def refuse_unknown_keys(values: dict, known, where: str, path: str | Path) -> None:
    """ParamError naming each key of ``values`` not in ``known`` (with a close match, or the
    ``runtime`` key an execution setting moved to), and the known keys."""
    unknown = [k for k in values if k not in known]
    if not unknown:
        return
    names = []
    for key in unknown:
        home = runtime_home(where, key)
        match = difflib.get_close_matches(key, [str(k) for k in known], n=1) if isinstance(key, str) else []
        names.append(f"{key!r}" + (f" (now {home}: execution settings are not science params)" if home else
                                   f" (did you mean {match[0]!r}?)" if match else ""))
    noun = "key" if len(unknown) == 1 else "keys"
    raise ParamError(f"{path}: {where}: unknown {noun} {', '.join(names)} (known: {', '.join(sorted(known))})")


def check_keys(values: dict, schema: dict, path: str | Path, where: str = "") -> None:
    """Refuse keys of ``values``, and of its nested mappings, that ``schema`` does not know.

    ``where`` is the dotted key of ``values`` ("" for the top level) used in messages.
    """
    if set(schema) != {EACH}:
        refuse_unknown_keys(values, schema, where or "top level", path)
    for key, value in values.items():
        sub = schema.get(EACH, schema.get(key))
        if isinstance(sub, dict) and isinstance(value, dict):
            check_keys(value, sub, path, f"{where}.{key}" if where else str(key))


def section(params: dict, key: str, path: str | Path) -> dict:
    """``params[key]`` as a mapping, or a ParamError naming the file."""
    value = params.get(key)
    if not isinstance(value, dict):
        raise ParamError(f"{path}: '{key}' must be a mapping of parameters, got {value!r}")
    return value


Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
FRACTION: Rule = (lambda v: 0 <= v <= 1, "must be within [0, 1]")
INCREASING: Rule = (lambda v: len(v) >= 2 and all(a < b for a, b in zip(v, v[1:])),
                    "must be at least 2 strictly increasing values")


def build(cls, values: dict, where: str, path: str | Path, rules: dict[str, Rule] | None = None, **extra):
    """Instantiate dataclass ``cls`` from ``values`` with type and range checks.

    ``where`` is the dotted params key (e.g. 'survey') used in messages;
    ``extra`` supplies fields that come from elsewhere (e.g. the global seed).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    refuse_unknown_keys(values, [name for name in fields if name not in extra], where, path)
    kwargs = dict(extra)
    for name, field in fields.items():
        if name in extra:
            continue
        if name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ParamError(f"{path}: {where}.{name} is required")
            continue
        value, want = values[name], hints[name]
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int) and not isinstance(value, bool) if want is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, want) if isinstance(want, type) else True)
        if not ok:
            raise ParamError(f"{path}: {where}.{name} = {value!r}: must be of type {getattr(want, '__name__', want)}")
        kwargs[name] = float(value) if want is float else value
    for name, (check, message) in (rules or {}).items():
        if name in kwargs and not check(kwargs[name]):
            raise ParamError(f"{path}: {where}.{name} = {kwargs[name]!r}: {message}")
    return cls(**kwargs)

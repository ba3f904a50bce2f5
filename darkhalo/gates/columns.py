"""Column contracts of a manifest audited by the data gates (names, kinds, ranges).

The gates rely only on: survey catalogue columns, ``region_split``,
``healpix_pixel``, ``task_id``, ``parent_id``, ``replicate``, ``is_control``,
the pixel columns and (for value-range contracts, when present) the injection
physics columns below.  Units are in the names (docs/domain.md).

The users' legacy layout (``stamp_npz`` pixels, docs/domain.md) has no pairing key:
``parent_id`` and ``replicate`` are required of the native layout only, and ``task_id``
may be an integer or a string in either.
"""
from __future__ import annotations

from darkhalo.core.units import BANDS

SPLIT_NAMES = ("train", "val", "test")

# Required metadata columns and their kind ("int", "float", "string"; "int|string": either).
REQUIRED_COLUMNS = {
    "task_id": "int|string", "is_control": "int", "region_split": "string",
    "ra": "float", "dec": "float", "bandset": "string", "stamp_size": "int", "cutout_ok": "int",
}
# Pairing columns: required of the native layout, optional in the legacy layout.
PAIR_COLUMNS = {"parent_id": "int", "replicate": "int"}
# Optional columns read when present.
OPTIONAL_COLUMNS = {"healpix_pixel": "int", **{f"psfdepth_{b}": "float" for b in BANDS}}
# Read when present, not schema-checked: the sky region grouping gate 1.6's folds without ra/dec.
SKY_GROUP_COLUMNS = ("brickname",)

# Gate 1.1: observing-quality columns whose distributions must match between classes.
QUALITY_COLUMNS = ("bad_pixel_frac", "psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r",
                   "psfdepth_z", "ebv", "lrg_mag_g", "lrg_mag_r", "lrg_mag_z")

# Plausible values of the quality columns (contract:quality_range; defaults of gates.quality_ranges), in the
# columns' units: PSF FWHM arcsec, point-source depth nmgy^-2 (1e7: 5-sigma depth 29.5 mag), E(B-V) mag, AB mag.
QUALITY_PLAUSIBLE_RANGES = {
    "bad_pixel_frac": (0.0, 1.0),
    **{f"psfsize_{b}": (0.3, 5.0) for b in BANDS},
    **{f"psfdepth_{b}": (0.0, 1e7) for b in BANDS},
    "ebv": (0.0, 5.0),
    **{f"lrg_mag_{b}": (10.0, 30.0) for b in BANDS},
}
# Value ranges of injection physics columns on positives (checked when the column exists); bounds inclusive.
TWO_PI = 6.283185307179586
PHYSICS_RANGES = {
    "theta_e_arcsec": (0.01, 10.0),
    "lens_q": (0.05, 1.0),
    "lens_phi_rad": (-TWO_PI, TWO_PI),
    "shear": (0.0, 0.5),
    "shear_phi_rad": (-TWO_PI, TWO_PI),
    "src_reff_arcsec": (1e-3, 10.0),
    **{f"src_flux_nmgy_{b}": (0.0, 1e6) for b in BANDS},
    "src_dmag": (-5.0, 15.0),
    "magnification": (0.0, 1e4),
    "arc_snr": (0.0, 1e6),
    "arc_snr_aperture": (0.0, 1e6),
    **{f"total_injected_flux_{b}": (0.0, 1e6) for b in BANDS},
    "core_flux_ratio": (0.0, 1e6),
    **{f"psf_fwhm_used_{b}": (0.3, 5.0) for b in BANDS},
}
# Injection parameters that a control (no injection) must leave null.
INJECTION_COLUMNS = ("theta_e_arcsec", "lens_q", "src_reff_arcsec", "src_flux_nmgy_r", "arc_snr",
                     "total_injected_flux_r")


def pairing_key(names, configured: str, uri: str) -> str | None:
    """The column pairing a positive with its control(s): ``gates.pairing_key`` when set (it must
    exist), else ``parent_id`` when present, else None (the gates run unpaired)."""
    if configured:
        if configured not in names:
            raise ValueError(f"{uri}: gates.pairing_key = {configured!r} is not a column of the manifest "
                             f"(columns: {', '.join(sorted(names))})")
        return configured
    return "parent_id" if "parent_id" in names else None


def kind_of(arrow_type) -> str:
    """'int', 'float', 'string', 'bool', 'tensor', 'binary' or the type's name."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if isinstance(t, pa.FixedShapeTensorType):
        return "tensor"
    return str(t)

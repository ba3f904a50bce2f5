"""The anchors stage's output columns (after the survey's CATALOGUE_FIELDS; pixel columns last).

Identity columns of each anchor, the injection engine's columns (null in real mode),
the measured checks and tier, the split columns; real-mode rows built from fetched
cutouts (``anchors_from_cutouts``).
"""
from __future__ import annotations

import pandas as pd
import pyarrow as pa

from darkhalo.io.stamps import PIXEL_COLUMNS
from darkhalo.sim.cutout_table import table_from_cutouts
from darkhalo.sim.survey import CATALOGUE_FIELDS, arrow_fields

SOURCE_EMBEDDED, SOURCE_CUTOUT = "embedded", "cutout"   # anchor_source

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


def anchors_from_cutouts(anchors: pd.DataFrame, cutouts: dict, size: int) -> pa.Table:
    """BASE_FIELDS + pixels of the anchors (``select_anchors`` rows) that have a cutout (``{name: Cutout}``):
    darkhalo.sim.cutout_table's catalogue columns, the identity columns, null injection columns."""
    keep = [i for i, n in enumerate(anchors["name"]) if n in cutouts]
    sub = anchors.iloc[keep].reset_index(drop=True)
    extra = {**identity_columns(sub, SOURCE_CUTOUT), **{f.name: pa.nulls(len(sub), f.type) for f in INJECTION_FIELDS}}
    return table_from_cutouts([cutouts[n] for n in sub["name"]], sub["parent_id"], sub["ra"], sub["dec"], size, extra)

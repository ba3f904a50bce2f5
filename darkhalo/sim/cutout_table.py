"""Catalogue + pixel tables of fetched Legacy Survey cutouts: the real-mode rows of hard negatives and anchors.

A cutout is pixels only, so the survey catalogue columns it cannot tell
(seeing, depth, extinction, central-galaxy fit) are NaN, ``lrg_type`` is ""
and the ``sim_*`` counts are -1; position columns come from the caller.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from darkhalo.sim import footprint
from darkhalo.io.stamps import StampBatch, native_columns
from darkhalo.sim.survey import CATALOGUE_FIELDS
from darkhalo.core.units import AB_ZP_NMGY


def table_from_cutouts(cutouts: list, parent_ids, ra_deg, dec_deg, size: int,
                       extra_columns: dict[str, pa.Array]) -> pa.Table:
    """CATALOGUE_FIELDS, then ``extra_columns``, then the pixel columns: one row per ``darkhalo.io.cutouts.Cutout``.

    ``cutout_ok`` is 1 only when all three bands are present and finite;
    ``bad_pixel_frac`` is the fraction of pixels with invvar 0 (or NaN) in a
    present band.  Bands without a service invvar get a constant invvar
    (nmgy^-2) from the robust (MAD) scatter of their pixels.
    """
    nan = float("nan")
    rows, images, invvars, present = [], [], [], []
    for cut, parent_id, ra, dec in zip(cutouts, parent_ids, ra_deg, dec_deg):
        ra, dec = float(ra), float(dec)
        image, invvar = cut.image.copy(), cut.invvar_or_estimate()
        row = {f.name: nan for f in CATALOGUE_FIELDS if pa.types.is_floating(f.type)}
        row.update(parent_id=int(parent_id), ra=ra, dec=dec,
                   brickname=footprint.brickname(ra, dec), depth_mode=footprint.depth_mode(ra, dec),
                   gal_b_deg=float(footprint.galactic_latitude_deg(ra, dec)), lrg_type="",
                   bad_pixel_frac=float(np.mean(((np.nan_to_num(invvar) == 0) &
                                                  cut.present[:, None, None]).any(axis=0))),
                   ab_zp_nmgy=AB_ZP_NMGY, cutout_ok=int(cut.present.all() and np.isfinite(image).all()),
                   stamp_size=size, bandset="grz", sim_defect="", sim_n_neighbour_galaxies=-1, sim_n_stars=-1)
        rows.append(row)
        images.append(image), invvars.append(invvar), present.append(cut.present)
    table = pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in CATALOGUE_FIELDS})
    for name, column in extra_columns.items():
        table = table.append_column(name, column)
    if rows:
        flags = np.stack(present)
        batch = StampBatch(np.stack(images), np.stack(invvars), flags, flags.copy())
    else:
        empty = np.zeros((0, 3, size, size), np.float32)
        batch = StampBatch(empty, empty, np.zeros((0, 3), bool), np.zeros((0, 3), bool))
    for name, column in native_columns(batch).items():
        table = table.append_column(name, column)
    return table

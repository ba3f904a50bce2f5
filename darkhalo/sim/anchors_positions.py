"""The position check of a user-supplied anchor list against the lenscat catalogue (degrees, arcsec).

``check_positions``: a user anchor list (CSV ``name, ra, dec`` in degrees) is
cross-matched to the catalogue by name (lenscat aliases separated by " | "
count); any anchor farther than ``position_tolerance_arcsec`` from its catalogue
position is an ``AnchorPositionError`` listing the worst offsets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from darkhalo.sim.anchors_catalogue import lenscat_aliases, parse_positions, shown


class AnchorPositionError(ValueError):
    """User anchor positions disagree with the catalogue (the message lists the worst offsets)."""


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
    parse_positions(frame, lambda i, column, n_bad: (
        f"{path}: row {i} ({shown(frame['name'].iloc[i])}) column '{column}' = "
        f"{shown(frame[column].iloc[i])} is not a position in degrees"))
    blank = frame["name"].astype(str).str.strip() == ""
    if blank.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(blank.to_numpy())[0])} column 'name' is empty")
    dup = frame["name"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{path}: row {i} column 'name' = {shown(frame['name'].iloc[i])} appears twice")
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
        for alias in lenscat_aliases(name):
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

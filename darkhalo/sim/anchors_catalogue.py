"""The lenscat catalogue of known lenses and the anchor sets chosen from it (positions in degrees).

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
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from darkhalo.sim import footprint
from darkhalo.sim.anchors_config import AnchorsConfig


def shown(value) -> str:
    """repr of a cell value for error messages (numpy scalars as plain Python values)."""
    return repr(value.item() if hasattr(value, "item") else value)


LENSCAT_VERSION = "1.1.3"   # the version this reader was written and tested against
LENSCAT_COLUMNS = {"name": "name", "RA [deg]": "ra", "DEC [deg]": "dec", "zlens": "zlens_text", "type": "lens_type",
                   "grading": "grading", "ref": "ref"}


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


def parse_positions(frame: pd.DataFrame, message) -> None:
    """Columns ra, dec of ``frame`` (text) replaced by degrees; ValueError(``message(row, column, n_bad)``) at the
    first row that is not a position (not a finite number, |ra| > 360, |dec| > 90)."""
    for column, limit in (("ra", 360.0), ("dec", 90.0)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            raise ValueError(message(int(np.flatnonzero(bad)[0]), column, int(bad.sum())))
        frame[column] = values


def read_lenscat(path: str | Path | None = None) -> pd.DataFrame:
    """The lenscat catalogue with columns name, ra, dec (deg), zlens (NaN if none), zlens_text, lens_type,
    grading, ref, lenscat_row; errors name the file, row and column."""
    path = Path(path) if path is not None else lenscat_csv_path()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LENSCAT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (have {list(frame.columns)})")
    frame = frame.rename(columns=LENSCAT_COLUMNS)[list(LENSCAT_COLUMNS.values())]
    parse_positions(frame, lambda i, column, n_bad: (
        f"{path}: row {i} column '{[k for k, v in LENSCAT_COLUMNS.items() if v == column][0]}'"
        f" = {shown(frame[column].iloc[i])} is not a position in degrees ({n_bad} such rows)"))
    frame["zlens"] = [_first_redshift(z) for z in frame["zlens_text"]]
    frame["lenscat_row"] = np.arange(len(frame))
    return frame


def lenscat_aliases(name: str) -> list[str]:
    """Distinct ' | '-separated aliases of a lenscat name, without brackets, blanks and '-'."""
    out = []
    for alias in str(name).split("|"):
        alias = alias.strip().strip("[]").strip()
        if alias and alias != "-" and alias not in out:
            out.append(alias)
    return out


def anchor_name(row_name: str, lenscat_row: int) -> str:
    """The first of a lenscat entry's aliases, or 'lenscat-<row>' where it has none ('-')."""
    aliases = lenscat_aliases(row_name)
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
    for set_name, spec in config.sets.items():
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
            "zlens": sub["zlens"].to_numpy(float), "theta_e_arcsec": float(config.default_theta_e_arcsec[set_name]),
            "ref": sub["ref"].to_numpy(), "lenscat_row": sub["lenscat_row"].to_numpy(np.int64)}))
    table = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(table, preserve_index=False), report

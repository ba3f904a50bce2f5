"""Real-mode hard negatives from Galaxy Zoo DECaLS (Walmsley et al. 2022, Zenodo record 4196267).

The volunteer catalogue (``gz_decals_volunteers_5.csv``; brought into the
project with ``dvc import-url``, see README) has one row per galaxy: ``iauname``,
``ra``, ``dec`` (deg), ``petro_th50`` (arcsec) and, per decision-tree question,
``<question>_total-votes`` and ``<question>_<answer>_fraction``.  Classes:

* ``spiral``: ``has-spiral-arms_yes_fraction >= spiral_min_fraction``;
* ``merger``: ``merging_merger_fraction + merging_major-disturbance_fraction
  >= merger_min_fraction``;
* ``edge_on``: ``disk-edge-on_yes_fraction >= edge_on_min_fraction``;

each with at least ``min_votes`` volunteers on that question.  GZ DECaLS has
no ring question: rings come from ``ring_catalogue`` (a CSV with ``name, ra,
dec``), if given.  A galaxy passing several classes takes the first in the
order merger, edge_on, spiral.  Each class gets ``round(target_count x
class_fraction)`` galaxies, drawn without replacement in a fixed order (a
keyed hash of the galaxy's id, so adding rows to the catalogue does not
reshuffle the selection); a class with fewer candidates takes them all and
the shortfall is reported.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from darkhalo.io.cutouts import CUTOUT_PARAM_KEYS, CUTOUT_RULES, CutoutConfig
from darkhalo.core.params import FRACTION, NON_NEGATIVE, POSITIVE, ParamError, build


def _shown(value) -> str:
    """repr of a cell value for error messages (numpy scalars as plain Python values)."""
    return repr(value.item() if hasattr(value, "item") else value)


ID_COLUMN, RA_COLUMN, DEC_COLUMN, SIZE_COLUMN = "iauname", "ra", "dec", "petro_th50"
SPIRAL_FRACTION = "has-spiral-arms_yes_fraction"
SPIRAL_VOTES = "has-spiral-arms_total-votes"
MERGER_FRACTIONS = ("merging_merger_fraction", "merging_major-disturbance_fraction")
MERGER_VOTES = "merging_total-votes"
EDGE_ON_FRACTION = "disk-edge-on_yes_fraction"
EDGE_ON_VOTES = "disk-edge-on_total-votes"
REQUIRED_COLUMNS = (ID_COLUMN, RA_COLUMN, DEC_COLUMN, SPIRAL_FRACTION, SPIRAL_VOTES, *MERGER_FRACTIONS,
                    MERGER_VOTES, EDGE_ON_FRACTION, EDGE_ON_VOTES)
CLASS_PRIORITY = ("merger", "edge_on", "spiral")  # a galaxy passing several takes the first
GZ_CLASSES = ("spiral", "merger", "edge_on", "ring")


@dataclass(frozen=True)
class GalaxyZooConfig:
    """``hard_negatives.galaxy_zoo:`` in params.yaml."""

    catalogue: str = "data/external/gz_decals_volunteers_5.csv"
    ring_catalogue: str = ""                   # CSV name, ra, dec; "" = no rings
    target_count: int = 10000
    class_fractions: dict | None = None        # None: DEFAULT_CLASS_FRACTIONS
    spiral_min_fraction: float = 0.8
    merger_min_fraction: float = 0.6
    edge_on_min_fraction: float = 0.8
    min_votes: int = 5
    max_petro_th50_arcsec: float = 0.0         # > 0: keep only galaxies at most this large (confusable sizes)
    max_failed_fraction: float = 0.02          # cutout failures above this fail the stage
    cache_dir: str = "data/cache/cutouts"
    cutout: dict | None = None                 # CutoutConfig fields
    cutout_workers: int = 4                    # runtime.cutout_workers (darkhalo/core/runtime.py): fetch threads

    @property
    def fractions(self) -> dict:
        return dict(DEFAULT_CLASS_FRACTIONS if self.class_fractions is None else self.class_fractions)

    @property
    def cutout_config(self) -> CutoutConfig:
        return CutoutConfig(**(self.cutout or {}), workers=self.cutout_workers)


DEFAULT_CLASS_FRACTIONS = {"spiral": 0.4, "merger": 0.3, "edge_on": 0.15, "ring": 0.15}

GZ_RULES = {
    "target_count": POSITIVE, "min_votes": NON_NEGATIVE, "max_petro_th50_arcsec": NON_NEGATIVE,
    "spiral_min_fraction": FRACTION, "merger_min_fraction": (lambda v: 0 <= v <= 2, "must be within [0, 2]"),
    "edge_on_min_fraction": FRACTION, "max_failed_fraction": FRACTION,
    "class_fractions": (lambda v: isinstance(v, dict) and set(v) <= set(GZ_CLASSES) and
                        all(isinstance(x, (int, float)) and x >= 0 for x in v.values()) and
                        abs(sum(v.values()) - 1) < 1e-6,
                        f"must map classes from {list(GZ_CLASSES)} to fractions summing to 1"),
    "cutout": (lambda v: isinstance(v, dict) and set(v) <= set(CUTOUT_PARAM_KEYS),
               f"must be a mapping with keys from {sorted(CUTOUT_PARAM_KEYS)}"),
}


def galaxy_zoo_config(values: dict | None, path: str, cutout_workers: int = 4) -> GalaxyZooConfig:
    """GalaxyZooConfig from ``hard_negatives.galaxy_zoo`` (a mapping, or None for the defaults);
    ``cutout_workers``: fetch threads (``runtime.cutout_workers``)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParamError(f"{path}: hard_negatives.galaxy_zoo must be a mapping, got {values!r}")
    config = build(GalaxyZooConfig, values, "hard_negatives.galaxy_zoo", path, GZ_RULES, cutout_workers=cutout_workers)
    build(CutoutConfig, config.cutout or {}, "hard_negatives.galaxy_zoo.cutout", path, CUTOUT_RULES,
          workers=cutout_workers)
    return config


def read_catalogue(path: str | Path) -> pd.DataFrame:
    """The volunteer catalogue (CSV or parquet) with the columns the selection needs; errors name file, row, column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Galaxy Zoo DECaLS catalogue not found (bring it in with `dvc import-url`, "
                                "see README)")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, low_memory=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    for column in (RA_COLUMN, DEC_COLUMN):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        limit = 360.0 if column == RA_COLUMN else 90.0
        bad = ~np.isfinite(values) | (np.abs(values) > limit) | ((values < 0) if column == RA_COLUMN else False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {i} column '{column}' = {_shown(frame[column].iloc[i])} is not a valid "
                             f"position in degrees ({int(bad.sum())} such rows)")
        frame[column] = values
    ids = frame[ID_COLUMN].astype(str)
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{path}: row {i} column '{ID_COLUMN}' = {_shown(ids.iloc[i])} is a duplicate")
    for column in REQUIRED_COLUMNS[3:]:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: row {i} column '{column}' = {_shown(frame[column].iloc[i])} is not a number")
        frame[column] = values.astype(float)   # NaN where the question was not reached: not selected
    return frame


def read_ring_catalogue(path: str | Path) -> pd.DataFrame:
    """Ring galaxies (CSV: name, ra, dec in degrees); errors name file, row, column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: ring catalogue not found")
    frame = pd.read_csv(path)
    missing = [c for c in ("name", "ra", "dec") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (need name, ra, dec)")
    for column, limit in (("ra", 360.0), ("dec", 90.0)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {i} column '{column}' = {_shown(frame[column].iloc[i])} is not valid")
        frame[column] = values
    return frame


def _order_key(seed: int, ids) -> np.ndarray:
    """Deterministic pseudo-random rank of each id (sha256 of seed and id)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids],
                    dtype=np.uint64)


def classify(frame: pd.DataFrame, config: GalaxyZooConfig) -> tuple[np.ndarray, np.ndarray]:
    """(class name or '' per row, the deciding vote fraction) from the thresholds."""
    size_ok = np.ones(len(frame), bool)
    if config.max_petro_th50_arcsec > 0:
        if SIZE_COLUMN not in frame.columns:
            raise ValueError(f"max_petro_th50_arcsec is set but the catalogue has no '{SIZE_COLUMN}' column")
        size_ok = pd.to_numeric(frame[SIZE_COLUMN], errors="coerce").to_numpy(float) <= config.max_petro_th50_arcsec
    merger = frame[MERGER_FRACTIONS[0]].to_numpy() + frame[MERGER_FRACTIONS[1]].to_numpy()
    rules = {
        "merger": (merger, frame[MERGER_VOTES].to_numpy(), config.merger_min_fraction),
        "edge_on": (frame[EDGE_ON_FRACTION].to_numpy(), frame[EDGE_ON_VOTES].to_numpy(), config.edge_on_min_fraction),
        "spiral": (frame[SPIRAL_FRACTION].to_numpy(), frame[SPIRAL_VOTES].to_numpy(), config.spiral_min_fraction),
    }
    label = np.full(len(frame), "", dtype=object)
    fraction = np.full(len(frame), np.nan)
    for name in CLASS_PRIORITY:
        frac, votes, threshold = rules[name]
        with np.errstate(invalid="ignore"):
            passes = (frac >= threshold) & (votes >= config.min_votes) & size_ok & (label == "")
        label[passes] = name
        fraction[passes] = frac[passes]
    return label, fraction


def select(frame: pd.DataFrame, config: GalaxyZooConfig, seed: int, rings: pd.DataFrame | None = None
           ) -> tuple[pa.Table, dict]:
    """Hard-negative targets (hn_source_id, ra, dec, hn_class, hn_vote_fraction, hn_source) and a report.

    The report has, per class, candidates passing the thresholds, the target
    and the number selected (``shortfall`` where fewer candidates than target).
    """
    fractions = config.fractions
    label, vote = classify(frame, config)
    ids = frame[ID_COLUMN].astype(str).to_numpy()
    parts, report = [], {}
    for name in [c for c in GZ_CLASSES if fractions.get(c, 0) > 0]:
        target = int(round(config.target_count * fractions[name]))
        if name == "ring":
            if rings is None:
                report[name] = {"candidates": 0, "target": target, "selected": 0, "shortfall": target,
                                "note": "no ring_catalogue given (GZ DECaLS has no ring question)"}
                continue
            cand_ids = rings["name"].astype(str).to_numpy()
            cand = pd.DataFrame({"id": cand_ids, "ra": rings["ra"].to_numpy(), "dec": rings["dec"].to_numpy(),
                                 "vote": np.nan})
            source = "ring_catalogue"
        else:
            sel = label == name
            cand = pd.DataFrame({"id": ids[sel], "ra": frame[RA_COLUMN].to_numpy()[sel],
                                 "dec": frame[DEC_COLUMN].to_numpy()[sel], "vote": vote[sel]})
            source = "galaxy_zoo_decals"
        cand = cand.iloc[np.argsort(_order_key(seed, cand["id"]), kind="stable")].head(target)
        report[name] = {"candidates": int((label == name).sum()) if name != "ring" else int(len(rings)),
                        "target": target, "selected": int(len(cand)), "shortfall": int(target - len(cand))}
        parts.append(pa.table({"hn_source_id": pa.array(cand["id"].tolist(), pa.string()),
                               "ra": pa.array(cand["ra"].to_numpy(float)), "dec": pa.array(cand["dec"].to_numpy(float)),
                               "hn_class": pa.array([name] * len(cand), pa.string()),
                               "hn_vote_fraction": pa.array(cand["vote"].to_numpy(float)),
                               "hn_source": pa.array([source] * len(cand), pa.string())}))
    if not parts:
        raise ValueError("Galaxy Zoo selection: no class has a positive class_fraction")
    return pa.concat_tables(parts), report

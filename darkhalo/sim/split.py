"""Region-disjoint train/val/test splits on HEALPix pixels (healpy).

Every parent cutout is assigned through the HEALPix pixel holding its
(ra, dec): ``healpix_pixel`` is the **NESTED** index at ``nside``.  Whole
groups of pixels ("units") are assigned to a split, so a pixel never straddles
splits and every stamp derived from a parent (its positives and controls)
inherits the parent's split.

Assignment (deterministic, seed from params):

1. units: occupied pixels linked when within ``guard_rings`` rings of each
   other (and, if ``region_nside`` > 0, in the same NESTED region pixel at
   ``region_nside``) form connected components; a unit is one component.
   Clustered parent samples give small units and no guard loss at all;
   contiguous survey areas need ``region_nside`` (e.g. 4-8 at ``nside`` 32)
   so that units are blocks and the guard band only eats block borders;
2. units are visited in an order drawn from ``keyed_rng(seed, "split")``;
   each goes to the split furthest below its target share of the parents
   assigned so far (greedy by parent counts), so the declared fractions are
   met to within about one unit's share of the parents;
3. guard band: pixels are kept in priority order test > val > train; a pixel
   is dropped ("guard") when a *kept* pixel of a higher-priority split lies
   within ``guard_rings`` rings of it, so kept pixels of different splits are
   never within ``guard_rings`` rings of one another;
4. because the guard band eats into lower-priority splits, the targets are
   re-weighted by each split's keep rate and steps 2-3 repeated (a few
   deterministic iterations); the assignment whose kept fractions deviate
   least from the declared ones wins.

Guard-band parents stay in the assignment table (``region_split = "guard"``)
so the loss is auditable; consumers drop them.

Rows of other tables (hard negatives, anchors) take the split of their pixel
through ``read_split_map`` + ``attach_split``; a pixel the assignment table
does not hold is ``"unassigned"``.

healpy is imported inside the functions that call it: at module level it loads matplotlib and
astropy (~1.5 s) into every stage that only needs this module's constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from darkhalo.io.dataset import read_table
from darkhalo.core.params import POSITIVE, ParamError, build, section
from darkhalo.core.rng import keyed_rng

SPLITS = ("train", "val", "test")          # index = priority (test highest)
GENERATION_SPLITS = ("train", "val")       # what inject@<generation> writes: its test region is the frozen benchmark


def declared_over(fractions: dict[str, float], splits: tuple) -> dict[str, float]:
    """Declared fractions renormalised over ``splits`` (the others 0): what a dataset holding only those should show."""
    total = sum(fractions[s] for s in splits)
    return {s: (fractions[s] / total if s in splits else 0.0) for s in fractions}
GUARD = "guard"
UNASSIGNED = "unassigned"       # a row whose pixel the split table does not hold
MAX_REWEIGHT_ITERATIONS = 6


@dataclass(frozen=True)
class SplitConfig:
    """``split:`` in params.yaml (fractions of kept parents; NSIDEs powers of two)."""

    seed: int
    nside: int = 32
    region_nside: int = 0          # 0: units are whole clusters; else units never cross these NESTED pixels
    train_frac: float = 0.7
    val_frac: float = 0.15
    test_frac: float = 0.15
    guard_rings: int = 1           # k: pixels within k rings of another split are dropped

    @property
    def fractions(self) -> np.ndarray:
        """Declared fractions in SPLITS order."""
        return np.array([self.train_frac, self.val_frac, self.test_frac])

    @property
    def region_shift(self) -> int:
        """NESTED bits shifted off a pixel index to get its region (64 = one region)."""
        if self.region_nside == 0:
            return 64
        return int(np.log2(self.nside // self.region_nside)) * 2


def _power_of_two(v) -> bool:
    return v > 0 and (v & (v - 1)) == 0


SPLIT_RULES = {
    "nside": (lambda v: _power_of_two(v) and v <= 8192, "must be a power of two <= 8192"),
    "region_nside": (lambda v: v == 0 or _power_of_two(v), "must be 0 or a power of two"),
    "train_frac": POSITIVE, "val_frac": POSITIVE, "test_frac": POSITIVE,
    "guard_rings": (lambda v: 0 <= v <= 8, "must be within [0, 8]"),
}


def split_config(params: dict, path: str) -> SplitConfig:
    """SplitConfig from the ``seed`` and ``split`` entries of a params mapping."""
    seed = params.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamError(f"{path}: seed = {seed!r}: must be a non-negative integer")
    config = build(SplitConfig, section(params, "split", path), "split", path, SPLIT_RULES, seed=seed)
    if abs(config.fractions.sum() - 1.0) > 1e-9:
        raise ParamError(f"{path}: split.train_frac + split.val_frac + split.test_frac = "
                         f"{config.fractions.sum():g}: must be 1")
    if config.region_nside > config.nside:
        raise ParamError(f"{path}: split.region_nside = {config.region_nside}: must be <= split.nside = {config.nside}")
    return config


def pixel_of(ra_deg: np.ndarray, dec_deg: np.ndarray, nside: int) -> np.ndarray:
    """NESTED HEALPix index (int64) of positions in degrees."""
    ra_deg, dec_deg = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    bad = ~(np.isfinite(ra_deg) & np.isfinite(dec_deg) & (np.abs(dec_deg) <= 90.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} positions are not valid sky coordinates "
                         f"(first: index {i}, ra={ra_deg[i]!r}, dec={dec_deg[i]!r})")
    import healpy as hp

    return hp.ang2pix(nside, ra_deg, dec_deg, nest=True, lonlat=True).astype(np.int64)


def dilate(nside: int, pixels: np.ndarray, rings: int) -> np.ndarray:
    """Sorted unique NESTED pixels within ``rings`` neighbour steps of any of ``pixels``.

    One step adds healpy's 8-neighbourhood (7 at the few corner pixels); the
    neighbour relation is symmetric, so "q within k rings of p" is too.
    """
    import healpy as hp

    zone = np.unique(np.asarray(pixels, np.int64))
    for _ in range(rings):
        if zone.size == 0:
            break
        nb = hp.get_all_neighbours(nside, zone, nest=True).reshape(-1)
        zone = np.union1d(zone, nb[nb >= 0])
    return zone


def guard_band(nside: int, pixels: np.ndarray, split_idx: np.ndarray, rings: int) -> np.ndarray:
    """Bool mask over ``pixels`` (NESTED): True where the pixel is dropped to the guard band.

    Priority test > val > train (index in SPLITS): a pixel is dropped when a
    kept pixel of a higher-priority split lies within ``rings`` rings of it.
    """
    pixels = np.asarray(pixels, np.int64)
    dropped = np.zeros(pixels.size, bool)
    if rings == 0:
        return dropped
    for level in range(len(SPLITS) - 2, -1, -1):                    # val, then train
        zone = dilate(nside, pixels[(split_idx > level) & ~dropped], rings)
        dropped |= (split_idx == level) & np.isin(pixels, zone)
    return dropped


def region_of(pixels: np.ndarray, shift: int) -> np.ndarray:
    """NESTED region index of NESTED pixels (all 0 when ``shift`` is 64: no regions)."""
    return np.zeros_like(pixels) if shift >= 64 else pixels >> shift


def units_of(nside: int, pixels: np.ndarray, rings: int, shift: int) -> np.ndarray:
    """Unit label (0..U-1) per unique sorted pixel: components of the within-``rings`` graph inside regions."""
    import healpy as hp
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = pixels.size
    src = np.arange(n)
    cur_src, cur = src, pixels
    edges_src, edges_dst = [src], [src]
    for _ in range(rings):
        nb = hp.get_all_neighbours(nside, cur, nest=True)            # (8, m)
        nb_src = np.broadcast_to(cur_src, nb.shape).reshape(-1)
        nb = nb.reshape(-1)
        ok = nb >= 0
        pairs = np.unique(np.stack([nb_src[ok], nb[ok]]), axis=1)
        cur_src, cur = pairs[0], pairs[1]
        pos = np.clip(np.searchsorted(pixels, cur), 0, n - 1)
        hit = (pixels[pos] == cur) & (region_of(cur, shift) == region_of(pixels[cur_src], shift))
        edges_src.append(cur_src[hit])
        edges_dst.append(pos[hit])
    rows, cols = np.concatenate(edges_src), np.concatenate(edges_dst)
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def _greedy(counts: np.ndarray, order: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Split index per unit: visit ``order``, give each unit to the most starved split."""
    out = np.empty(counts.size, np.int8)
    assigned = np.zeros(len(SPLITS))
    total = 0.0
    for r in order:
        total += counts[r]
        s = int(np.argmax(targets * total - assigned))
        out[r] = s
        assigned[s] += counts[r]
    return out


@dataclass
class Assignment:
    """Per-parent result: NESTED pixel, unit label and split name ('guard' if dropped)."""

    healpix_pixel: np.ndarray
    unit: np.ndarray
    region_split: np.ndarray       # str, SPLITS or GUARD
    iterations: int
    n_units: int


def assign(ra_deg: np.ndarray, dec_deg: np.ndarray, config: SplitConfig) -> Assignment:
    """Region-disjoint assignment of parents at (ra_deg, dec_deg); see module doc."""
    pix = pixel_of(ra_deg, dec_deg, config.nside)
    pixels, pixel_of_parent, pixel_counts = np.unique(pix, return_inverse=True, return_counts=True)
    unit_of_pixel = units_of(config.nside, pixels, config.guard_rings, config.region_shift)
    n_units = int(unit_of_pixel.max()) + 1 if pixels.size else 0
    if n_units < len(SPLITS):
        raise ValueError(f"only {n_units} separable unit(s) of occupied NSIDE={config.nside} pixels: cannot make "
                         f"{len(SPLITS)} region-disjoint splits (set split.region_nside, or lower split.guard_rings)")
    unit_counts = np.bincount(unit_of_pixel, weights=pixel_counts, minlength=n_units)
    order = keyed_rng(config.seed, "split").permutation(n_units)
    declared = config.fractions
    targets = declared.copy()
    best = None
    for iteration in range(MAX_REWEIGHT_ITERATIONS):
        pixel_split = _greedy(unit_counts, order, targets)[unit_of_pixel]
        dropped = guard_band(config.nside, pixels, pixel_split, config.guard_rings)
        kept = np.bincount(pixel_split[~dropped], weights=pixel_counts[~dropped], minlength=len(SPLITS))
        before = np.bincount(pixel_split, weights=pixel_counts, minlength=len(SPLITS))
        deviation = np.abs(kept / max(kept.sum(), 1.0) - declared).max()
        if best is None or deviation < best[0] - 1e-12:
            best = (deviation, pixel_split, dropped, iteration + 1)
        if not dropped.any():
            break
        keep_rate = np.where(before > 0, kept / np.maximum(before, 1.0), 1.0)
        targets = declared / np.maximum(keep_rate, 1e-3)
        targets /= targets.sum()
    _, pixel_split, dropped, iterations = best
    names = np.array(SPLITS + (GUARD,), dtype=object)
    pixel_names = np.where(dropped, len(SPLITS), pixel_split)
    return Assignment(pix, unit_of_pixel[pixel_of_parent], names[pixel_names[pixel_of_parent]], iterations, n_units)


def assignment_table(parent_id: np.ndarray, ra_deg: np.ndarray, dec_deg: np.ndarray,
                     config: SplitConfig) -> tuple[pa.Table, Assignment]:
    """The assignment table (sorted by parent_id) and the raw assignment."""
    parent_id = np.asarray(parent_id, np.int64)
    if np.unique(parent_id).size != parent_id.size:
        raise ValueError("parent_id is not unique in the survey catalogue")
    order = np.argsort(parent_id, kind="stable")
    parent_id, ra_deg, dec_deg = parent_id[order], np.asarray(ra_deg, float)[order], np.asarray(dec_deg, float)[order]
    result = assign(ra_deg, dec_deg, config)
    n = parent_id.size
    table = pa.table({
        "parent_id": pa.array(parent_id, pa.int64()),
        "ra": pa.array(ra_deg, pa.float64()),
        "dec": pa.array(dec_deg, pa.float64()),
        "nside": pa.array(np.full(n, config.nside, np.int32)),
        "healpix_pixel": pa.array(result.healpix_pixel, pa.int64()),
        "split_unit": pa.array(result.unit, pa.int64()),
        "region_split": pa.array(result.region_split.tolist(), pa.string()),
    })
    return table, result


def summarise_split(table: pa.Table, config: SplitConfig, result: Assignment) -> dict:
    """Metrics: parents, pixels, area (deg^2, occupied pixels) and fractions per split; guard loss."""
    import healpy as hp

    pixel_area = hp.nside2pixarea(config.nside, degrees=True)
    split = np.asarray(table.column("region_split").to_pylist(), dtype=object)
    pix = table.column("healpix_pixel").to_numpy()
    n_all, area_all = split.size, np.unique(pix).size * pixel_area
    kept = split != GUARD
    n_kept = int(kept.sum())
    per_split = {}
    for name, declared in zip(SPLITS, config.fractions):
        sel = split == name
        per_split[name] = {
            "n_parents": int(sel.sum()),
            "n_pixels": int(np.unique(pix[sel]).size),
            "area_deg2": float(np.unique(pix[sel]).size * pixel_area),
            "fraction_of_kept_parents": float(sel.sum() / max(n_kept, 1)),
            "declared_fraction": float(declared),
        }
    guard = split == GUARD
    guard_area = np.unique(pix[guard]).size * pixel_area
    return {
        "nside": config.nside,
        "healpix_scheme": "NESTED",
        "region_nside": config.region_nside,
        "pixel_area_deg2": float(pixel_area),
        "guard_rings": config.guard_rings,
        "n_units": result.n_units,
        "largest_unit_fraction": float(np.bincount(result.unit).max() / max(n_all, 1)),
        "reweight_iterations": result.iterations,
        "n_parents": n_all,
        "n_parents_kept": n_kept,
        "area_deg2": float(area_all),
        "splits": per_split,
        "guard": {
            "n_parents": int(guard.sum()),
            "n_pixels": int(np.unique(pix[guard]).size),
            "area_deg2": float(guard_area),
            "fraction_of_parents_lost": float(guard.sum() / max(n_all, 1)),
            "fraction_of_area_lost": float(guard_area / max(area_all, 1e-300)),
        },
        "max_abs_fraction_deviation": float(max(abs(v["fraction_of_kept_parents"] - v["declared_fraction"])
                                                for v in per_split.values())),
    }


# ---------------------------------------------------------------------------------------------
# Split assignment of other tables' rows (hard negatives, anchors)

@dataclass(frozen=True)
class SplitMap:
    """HEALPix pixel -> region_split from the split stage's assignment table (NESTED pixels)."""

    nside: int
    pixels: np.ndarray      # sorted unique NESTED pixel indices
    splits: np.ndarray      # region_split per pixel (train/val/test/guard)
    source: str

    def lookup(self, ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
        """(healpix_pixel, region_split) per position; 'unassigned' where the split has no such pixel."""
        pix = pixel_of(ra_deg, dec_deg, self.nside)
        pos = np.clip(np.searchsorted(self.pixels, pix), 0, max(len(self.pixels) - 1, 0))
        found = (self.pixels[pos] == pix) if len(self.pixels) else np.zeros(len(pix), bool)
        return pix, np.where(found, self.splits[pos] if len(self.pixels) else UNASSIGNED, UNASSIGNED).astype(object)


REQUIRED_SPLIT_COLUMNS = ("ra", "dec", "nside", "healpix_pixel", "region_split")


def read_split_map(path: str | Path) -> SplitMap:
    """SplitMap of an assignment table (``data/split/assignment.parquet``); errors name the file.

    Checks: the columns exist, one nside, ``healpix_pixel`` is the NESTED index
    of (ra, dec) on every row (this module's convention), no pixel
    in two splits, split names from train/val/test/guard.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no split assignment table (run the `split` stage first)")
    table = read_table(str(path))
    missing = [c for c in REQUIRED_SPLIT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (have {table.column_names})")
    if table.num_rows == 0:
        raise ValueError(f"{path}: the assignment table is empty")
    nside_values = np.unique(table.column("nside").to_numpy())
    if len(nside_values) != 1:
        raise ValueError(f"{path}: column 'nside' has several values {nside_values.tolist()}")
    nside = int(nside_values[0])
    ra, dec = table.column("ra").to_numpy(), table.column("dec").to_numpy()
    pix = table.column("healpix_pixel").to_numpy()
    mismatch = np.flatnonzero(pixel_of(ra, dec, nside) != pix)
    if len(mismatch):
        i = int(mismatch[0])
        raise ValueError(f"{path}: row {i} column 'healpix_pixel' = {pix[i]} is not the NESTED NSIDE={nside} pixel "
                         f"of (ra, dec) = ({ra[i]}, {dec[i]}) ({len(mismatch)} such rows)")
    split = np.asarray(table.column("region_split").to_pylist(), dtype=object)
    bad = sorted(set(split.tolist()) - set(SPLITS) - {GUARD})
    if bad:
        raise ValueError(f"{path}: column 'region_split' has unknown value(s) {bad}")
    pairs = sorted(set(zip(pix.tolist(), split.tolist())))
    pixels = np.array([p for p, _ in pairs], np.int64)
    dup = np.flatnonzero(np.diff(pixels) == 0)
    if len(dup):
        p = int(pixels[dup[0]])
        raise ValueError(f"{path}: HEALPix pixel {p} is in two splits "
                         f"{sorted(s for q, s in pairs if q == p)}")
    return SplitMap(nside, pixels, np.array([s for _, s in pairs], dtype=object), str(path))


def attach_split(table: pa.Table, split_map: SplitMap) -> pa.Table:
    """``table`` with the split columns of its (ra, dec) in deg: ``nside``, ``healpix_pixel`` (NESTED) and
    ``region_split`` (train/val/test/guard, 'unassigned' where the split has no such pixel).

    Each column is overwritten where ``table`` has it (hard negatives carry ``nside``/``healpix_pixel``
    placeholders in place) and appended otherwise (anchors), in that order.
    """
    pix, split = split_map.lookup(table.column("ra").to_numpy(), table.column("dec").to_numpy())
    columns = {"nside": pa.array(np.full(table.num_rows, split_map.nside, np.int32)),
               "healpix_pixel": pa.array(pix, pa.int64()),
               "region_split": pa.array(split.tolist(), pa.string())}
    for name, column in columns.items():
        index = table.schema.get_field_index(name)
        table = table.append_column(name, column) if index < 0 else table.set_column(index, name, column)
    return table

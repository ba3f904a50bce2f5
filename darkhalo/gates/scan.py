"""One streaming pass over a manifest: metadata, per-stamp pixel summaries, core features.

Pixels are never held for more than one chunk (``batch_rows`` stamps): each
chunk is decoded (native tensor columns or legacy ``stamp_npz``), reduced to a
per-stamp summary and dropped.  Per stamp and band (g, r, z):

* ``present``, ``has_invvar``: image / invvar plane stored;
* ``n_nonfinite``: non-finite image (or stored invvar) pixels;
* ``max_abs_nmgy``: largest |image pixel| among the finite ones (nmgy; the plausibility contract);
* ``n_bad_invvar``: invvar pixels that are non-finite, negative, or zero on an
  unmasked pixel (image != 0; Legacy Surveys masks have image = invvar = 0),
  or the whole plane if it is all zero;
* ``outer_median_nmgy``, ``outer_sigma_nmgy``, ``clip_frac``: the shared
  normalisation's statistics (darkhalo.physics.normalize) over the outer region
  (r >= 16 px); ``clip_frac`` is the fraction of outer pixels it clips.  The
  clip fraction is taken over the outer region because pixels inside it hold
  the arc, whose clipping is signal, not leakage;
* ``core_flux_nmgy``: sum of the image over the central r < k px.

With a model-input preprocessing (``input_spec``, the generation's
``train.preprocessing``) the same chunk is also turned into what the network
sees (darkhalo.physics.normalize.normalize) and summarised: ``input_core_rms``
(root-mean-square of the input inside r < k px: a residual input has zero mean
by construction, so core *power* is what can differ between the classes) and, for
the sampled parents, the input's core pixels as gate-1.6 features.

For a sample of parents (``core_max_stamps`` stamps, chosen by a hash of the
pairing key -- ``parent_id`` unless ``gates.pairing_key`` names another integer
column -- so a positive and its control are sampled together; by row without
an integer pairing key) the core
pixels are kept as classifier features for gate 1.6: asinh of the unclipped
normalised pixels, all bands.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from darkhalo.io.dataset import Chunk, iter_chunks, layout_of, open_dataset, resolve_uri, stamps_of
from darkhalo.physics.normalize import Normalization, core_mask, normalize, outer_mask, robust_stats
from darkhalo.core.rng import parent_sample_mask
from darkhalo.io.stamps import PIXEL_COLUMNS, StampBatch, StampFormatError, stamps_from_legacy
from darkhalo.gates.columns import OPTIONAL_COLUMNS, PAIR_COLUMNS, REQUIRED_COLUMNS, SKY_GROUP_COLUMNS, pairing_key

METADATA_BATCH_ROWS = 1 << 16


@dataclass
class PixelSummary:
    """Per-stamp pixel statistics, (N, 3) arrays in grz order unless noted."""

    present: np.ndarray
    has_invvar: np.ndarray
    n_nonfinite: np.ndarray
    max_abs_nmgy: np.ndarray
    n_bad_invvar: np.ndarray
    shape_ok: np.ndarray                       # (N,)
    outer_median_nmgy: np.ndarray
    outer_sigma_nmgy: np.ndarray
    clip_frac: np.ndarray
    core_flux_nmgy: np.ndarray
    decode_errors: dict[int, str] = field(default_factory=dict)   # global row -> message
    model_input: dict[str, np.ndarray] = field(default_factory=dict)  # INPUT_STATS -> (N, 3), with an input spec


@dataclass
class CoreSample:
    """Core-pixel features of the sampled stamps (gate 1.6)."""

    rows: np.ndarray            # global row index (int64)
    features: np.ndarray        # (M, 3 * n_core) float32


@dataclass
class Scan:
    """Everything the gates need from a manifest, in scan order (files in path order)."""

    uri: str
    layout: str                 # native | legacy | metadata
    schema: pa.Schema
    files: list[str]            # relative to the manifest root
    file_index: np.ndarray      # (N,) int32 into files
    row_in_file: np.ndarray     # (N,) int64
    meta: pa.Table
    pixels: PixelSummary | None
    core: CoreSample | None
    pixel_size: int | None      # decoded stamp side (px)
    input_core: CoreSample | None = None   # the model input's core features (with an input spec)
    pair_key: str | None = None            # column pairing positives and controls; None: unpaired

    def row_label(self, i: int) -> str:
        """'<file>: row <n> (task_id <id>[, <pair key> <id>])' of scan row ``i``: strings quoted, as stored."""
        ids = []
        for name in dict.fromkeys(("task_id", self.pair_key)):
            if name is not None and name in self.meta.column_names:
                ids.append(f"{name} {self.meta.column(name)[int(i)].as_py()!r}")
        return f"{self.files[self.file_index[i]]}: row {self.row_in_file[i]} ({', '.join(ids) or 'no task_id'})"


INPUT_STATS = ("input_core_rms",)


def summarise_model_input(image: np.ndarray, spec: Normalization, core_radius_pix: float) -> dict[str, np.ndarray]:
    """Core statistics of the model input of (N, 3, S, S) stamps (module doc); ``_core`` holds its core pixels."""
    with np.errstate(invalid="ignore"):
        x = normalize(image, spec).astype(np.float64)
        core = x[..., core_mask(x.shape[-1], core_radius_pix)]
        return {"input_core_rms": np.sqrt(np.mean(core ** 2, axis=-1)), "_core": core}


def _decode(chunk: Chunk, size: int, layout: str, first_row: int, errors: dict[int, str]) -> StampBatch:
    """Pixels of a chunk; legacy rows that fail to decode are recorded in ``errors`` and left absent."""
    table = chunk.table
    if layout == "native":
        ext = table.column("image_r").type
        for name in PIXEL_COLUMNS:       # an absent band/plane column reads as all-null (band missing)
            if name not in table.column_names:
                table = table.append_column(name, pa.ExtensionArray.from_storage(
                    ext, pa.nulls(table.num_rows, ext.storage_type)))
        return stamps_of(Chunk(table, chunk.source, chunk.row_offset), size)
    try:
        return stamps_of(chunk, size)
    except StampFormatError:
        # Pin down the undecodable rows one by one; they fail contract 1.2 (shape/decode).
        n = table.num_rows
        blobs = table.column("stamp_npz")
        out = StampBatch(np.full((n, 3, size, size), np.nan, np.float32), np.full((n, 3, size, size), np.nan, np.float32),
                         np.zeros((n, 3), bool), np.zeros((n, 3), bool))
        for i in range(n):
            try:
                one = stamps_from_legacy(blobs.slice(i, 1), size, chunk.source, chunk.row_offset + i)
            except StampFormatError as exc:
                errors[first_row + i] = str(exc)
                continue
            out.image[i], out.invvar[i], out.present[i], out.has_invvar[i] = one.image[0], one.invvar[0], \
                one.present[0], one.has_invvar[0]
        return out


def summarise_pixels(batch: StampBatch, spec: Normalization, core_radius_pix: float) -> dict[str, np.ndarray]:
    """Per-stamp statistics of a decoded chunk (see module doc); float64 sums, float32 stats."""
    image, invvar = batch.image, batch.invvar
    size = image.shape[-1]
    present = batch.present
    has_iv = batch.has_invvar & present
    finite = np.isfinite(image)
    nonfinite = (~finite).sum(axis=(2, 3))
    max_abs = np.abs(np.where(finite, image, 0.0)).max(axis=(2, 3))
    nonfinite += np.where(has_iv, (~np.isfinite(invvar)).sum(axis=(2, 3)), 0)
    with np.errstate(invalid="ignore"):
        bad_iv = (~np.isfinite(invvar)) | (invvar < 0) | ((invvar == 0) & (image != 0))
        n_bad_iv = bad_iv.sum(axis=(2, 3))
        all_zero = (invvar == 0).all(axis=(2, 3))
    n_bad_iv = np.where(all_zero, size * size, n_bad_iv)
    median, sigma = robust_stats(image, spec)
    with np.errstate(invalid="ignore", divide="ignore"):
        unclipped = (image.astype(np.float64) - median[..., None, None]) / sigma[..., None, None]
        clip_frac = np.mean(np.abs(unclipped[..., outer_mask(size, spec.outer_radius_pix)]) > spec.clip, axis=-1)
    core = core_mask(size, core_radius_pix)
    return {
        "present": present, "has_invvar": has_iv,
        "n_nonfinite": np.where(present, nonfinite, 0).astype(np.int32),
        "max_abs_nmgy": np.where(present, max_abs, 0.0).astype(np.float32),
        "n_bad_invvar": np.where(has_iv, n_bad_iv, 0).astype(np.int32),
        "outer_median_nmgy": median.astype(np.float32), "outer_sigma_nmgy": sigma.astype(np.float32),
        "clip_frac": clip_frac.astype(np.float32),
        "core_flux_nmgy": image[..., core].astype(np.float64).sum(axis=-1),
        "_unclipped_core": unclipped[..., core],
    }


def wanted_columns(schema: pa.Schema, with_pixels: bool, pair_key: str | None = None) -> list[str]:
    """Metadata columns the scan keeps: required, pairing, optional (psfdepth only for the noise contract),
    the pairing key and the sky-group columns, those present.

    Quality and physics columns are read later, one at a time (``read_column``), so a
    10-million-row manifest never holds them all in memory.
    """
    names = set(schema.names)
    wanted = list(REQUIRED_COLUMNS) + list(PAIR_COLUMNS) + [pair_key] + [
        c for c in OPTIONAL_COLUMNS if with_pixels or not c.startswith("psfdepth")] + list(SKY_GROUP_COLUMNS)
    return [c for c in dict.fromkeys(wanted) if c in names]


def read_column(uri: str, name: str, n_rows: int, dtype=None) -> np.ndarray:
    """One column of the manifest as numpy, in scan order (nulls -> NaN for floats)."""
    parts = []
    for chunk in iter_chunks(uri, columns=[name], batch_rows=METADATA_BATCH_ROWS):
        column = chunk.table.column(0)
        if dtype is not None and column.null_count and pa.types.is_integer(column.type):
            column = column.cast(pa.float64())
        parts.append(column.to_numpy(zero_copy_only=False))
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size != n_rows:
        raise RuntimeError(f"{uri}: column {name!r} has {values.size} rows, the scan saw {n_rows}")
    return values.astype(dtype) if dtype is not None else values


def scan_manifest(uri: str, spec: Normalization, *, stamp_size_pix: int, core_radius_pix: float,
                  core_max_stamps: int, seed: int, batch_rows: int = 256, read_pixels: bool = True,
                  input_spec: Normalization | None = None, pairing: str = "") -> Scan:
    """Stream ``uri`` once; see module doc.  ``read_pixels=False`` reads metadata only; ``pairing``:
    ``gates.pairing_key`` ("" = parent_id when present)."""
    dataset = open_dataset(uri)
    schema = dataset.schema
    layout = layout_of(schema)
    pair_key = pairing_key(schema.names, pairing, uri)
    sample_by_key = pair_key is not None and pa.types.is_integer(schema.field(pair_key).type)
    do_pixels = read_pixels and layout != "metadata"
    meta_cols = wanted_columns(schema, do_pixels, pair_key)
    pixel_cols = ([c for c in PIXEL_COLUMNS if c in schema.names] if layout == "native" else ["stamp_npz"]) \
        if do_pixels else []
    n_total = dataset.count_rows()
    files: list[str] = []
    file_index, row_in_file, metas = [], [], []
    parts: dict[str, list[np.ndarray]] = {}
    errors: dict[int, str] = {}
    shape_ok_parts = []
    core_rows, core_feats, input_feats = [], [], []
    inputs: dict[str, list[np.ndarray]] = {}
    pixel_size = None
    if layout == "native" and do_pixels:
        ext = schema.field("image_r").type
        pixel_size = int(ext.shape[0]) if isinstance(ext, pa.FixedShapeTensorType) else None
    elif layout == "legacy" and do_pixels:
        pixel_size = stamp_size_pix
    root = resolve_uri(uri)[1].rstrip("/")
    n_seen = 0
    desc = "data gates: pixels" if do_pixels else "data gates: metadata"
    with tqdm(total=n_total, desc=desc, unit="stamp", mininterval=2.0) as bar:
        for chunk in iter_chunks(uri, columns=meta_cols + pixel_cols,
                                 batch_rows=batch_rows if do_pixels else METADATA_BATCH_ROWS):
            n = chunk.table.num_rows
            source = os.path.relpath(chunk.source, root) if chunk.source.startswith(root + "/") else chunk.source
            if not files or files[-1] != source:
                files.append(source)
            file_index.append(np.full(n, len(files) - 1, np.int32))
            row_in_file.append(chunk.row_offset + np.arange(n, dtype=np.int64))
            metas.append(chunk.table.select(meta_cols))
            if do_pixels:
                shape_ok = pixel_size == stamp_size_pix
                shape_ok_parts.append(np.full(n, shape_ok))
                if shape_ok:
                    batch = _decode(chunk, stamp_size_pix, layout, n_seen, errors)
                    stats = summarise_pixels(batch, spec, core_radius_pix)
                    pid = chunk.table.column(pair_key).to_numpy() if sample_by_key else np.arange(n_seen, n_seen + n)
                    sel = np.flatnonzero(parent_sample_mask(pid, n_total, core_max_stamps, seed))
                    if sel.size:
                        core_rows.append(n_seen + sel)
                        core_feats.append(np.arcsinh(stats["_unclipped_core"][sel]).reshape(sel.size, -1)
                                          .astype(np.float32))
                    if input_spec is not None:
                        model_input = summarise_model_input(batch.image, input_spec, core_radius_pix)
                        input_feats.append(model_input.pop("_core")[sel].reshape(sel.size, -1).astype(np.float32))
                        for key, value in model_input.items():
                            inputs.setdefault(key, []).append(value)
                else:
                    stats = _empty_stats(n)
                    if input_spec is not None:
                        for key in INPUT_STATS:
                            inputs.setdefault(key, []).append(np.full((n, 3), np.nan))
                stats.pop("_unclipped_core", None)
                for key, value in stats.items():
                    parts.setdefault(key, []).append(value)
            n_seen += n
            bar.update(n)
    meta = pa.concat_tables(metas) if metas else schema.empty_table().select(meta_cols)
    pixels = None
    if do_pixels:
        cat = {k: np.concatenate(v) if v else np.zeros((0, 3)) for k, v in parts.items()}
        if not parts:
            cat = {k: v for k, v in _empty_stats(0).items() if k != "_unclipped_core"}
        shape_ok = np.concatenate(shape_ok_parts) if shape_ok_parts else np.zeros(0, bool)
        if errors:
            shape_ok = shape_ok.copy()
            shape_ok[list(errors)] = False
        pixels = PixelSummary(shape_ok=shape_ok, decode_errors=errors, **cat,
                              model_input={k: np.concatenate(v) for k, v in inputs.items()})
    core = input_core = None
    if do_pixels:
        n_feat = int(core_mask(stamp_size_pix, core_radius_pix).sum()) * 3
        rows = np.concatenate(core_rows) if core_rows else np.zeros(0, np.int64)
        core = CoreSample(rows, np.concatenate(core_feats) if core_feats else np.zeros((0, n_feat), np.float32))
        if input_spec is not None and input_feats:
            input_core = CoreSample(rows, np.concatenate(input_feats))
    return Scan(uri=uri, layout=layout, schema=schema, files=files,
                file_index=np.concatenate(file_index) if file_index else np.zeros(0, np.int32),
                row_in_file=np.concatenate(row_in_file) if row_in_file else np.zeros(0, np.int64),
                meta=meta, pixels=pixels, core=core, pixel_size=pixel_size, input_core=input_core, pair_key=pair_key)


def _empty_stats(n: int) -> dict[str, np.ndarray]:
    """Statistics of ``n`` stamps that could not be decoded at the declared shape (all NaN/absent)."""
    nan = np.full((n, 3), np.nan, np.float32)
    return {"present": np.zeros((n, 3), bool), "has_invvar": np.zeros((n, 3), bool),
            "n_nonfinite": np.zeros((n, 3), np.int32), "max_abs_nmgy": np.zeros((n, 3), np.float32),
            "n_bad_invvar": np.zeros((n, 3), np.int32),
            "outer_median_nmgy": nan, "outer_sigma_nmgy": nan.copy(), "clip_frac": nan.copy(),
            "core_flux_nmgy": np.full((n, 3), np.nan)}


"""Pixel storage: the native tensor-column layout and the users' legacy npz blobs.

Native layout (see ARCHITECTURE.md): one column per band and plane,
``image_{g,r,z}`` (nmgy/pixel) and ``invvar_{g,r,z}`` (nmgy^-2), each an Arrow
``fixed_shape_tensor`` of float32 with shape [size, size], row-major, row 0 at
the bottom of the sky image (array row index = y).  A missing band is a null
entry.  The values buffer reads zero-copy into numpy.

Legacy layout: column ``stamp_npz`` holding the bytes of an ``.npz`` with
``image_g/r/z`` (and optionally ``invvar_g/r/z``).
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from darkhalo.core.units import BANDS

PLANES = ("image", "invvar")


class StampFormatError(ValueError):
    """A stamp blob or tensor column that cannot be decoded; the message names where."""


def pixel_column(plane: str, band: str) -> str:
    """Name of the native column holding ``plane`` ('image' or 'invvar') of ``band``."""
    return f"{plane}_{band}"


PIXEL_COLUMNS = tuple(pixel_column(p, b) for p in PLANES for b in BANDS)


def tensor_type(size: int) -> pa.DataType:
    """Arrow type of one band-plane column: float32 tensor [size, size]."""
    return pa.fixed_shape_tensor(pa.float32(), [size, size])


def to_tensor_array(planes: np.ndarray, present: np.ndarray | None = None) -> pa.ExtensionArray:
    """(N, S, S) float32 array -> tensor column; rows with ``present`` False become null."""
    planes = np.ascontiguousarray(planes, dtype=np.float32)
    n, size, size2 = planes.shape
    if size != size2:
        raise StampFormatError(f"stamps must be square, got shape {planes.shape[1:]}")
    mask = None if present is None else pa.array(~np.asarray(present, dtype=bool))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(planes.reshape(-1)), size * size, mask=mask)
    return pa.ExtensionArray.from_storage(tensor_type(size), storage)


def from_tensor_column(column, name: str = "column") -> tuple[np.ndarray, np.ndarray]:
    """Tensor column (Array or ChunkedArray) -> (planes (N, S, S) float32, present (N,) bool).

    Null rows come back as NaN planes with ``present`` False.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    ext = column.type
    if not isinstance(ext, pa.FixedShapeTensorType) or len(ext.shape) != 2:
        raise StampFormatError(f"{name}: expected a 2-d fixed_shape_tensor column, got {ext}")
    size_y, size_x = ext.shape
    planes, present = [], []
    for chunk in chunks:
        storage = chunk.storage
        width = size_y * size_x
        values = storage.values.slice(storage.offset * width, len(storage) * width)
        arr = values.to_numpy(zero_copy_only=False).reshape(len(storage), size_y, size_x)
        valid = np.ones(len(storage), dtype=bool) if storage.null_count == 0 else \
            np.asarray(storage.is_valid().to_numpy(zero_copy_only=False))
        if not valid.all():
            arr = arr.copy()
            arr[~valid] = np.nan
        planes.append(arr)
        present.append(valid)
    if not planes:
        return np.zeros((0, size_y, size_x), np.float32), np.zeros(0, bool)
    return np.concatenate(planes), np.concatenate(present)


@dataclass
class StampBatch:
    """Pixels of N stamps: ``image``/``invvar`` (N, 3, S, S) float32 in grz order.

    ``present`` (N, 3) marks bands that exist (a missing band is all-NaN).
    ``has_invvar`` (N, 3) marks bands whose invvar was stored.
    """

    image: np.ndarray
    invvar: np.ndarray
    present: np.ndarray
    has_invvar: np.ndarray


def stamps_from_native(table: pa.Table, source: str = "table") -> StampBatch:
    """Stack the native band columns of ``table`` into a StampBatch."""
    images, invvars, present, has_iv = [], [], [], []
    for band in BANDS:
        for plane, planes_out, flags_out in (("image", images, present), ("invvar", invvars, has_iv)):
            name = pixel_column(plane, band)
            if name not in table.column_names:
                raise StampFormatError(f"{source}: column '{name}' is missing")
            arr, ok = from_tensor_column(table.column(name), f"{source}: column '{name}'")
            planes_out.append(arr)
            flags_out.append(ok)
    return StampBatch(np.stack(images, 1), np.stack(invvars, 1), np.stack(present, 1), np.stack(has_iv, 1))


def encode_npz(planes: dict[str, np.ndarray]) -> bytes:
    """Bytes of an uncompressed ``.npz`` holding the given float32 arrays (legacy layout)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in planes.items()})
    return buf.getvalue()


NPZ_MAX_MEMBERS = 16        # members an npz blob may list (6 are used)
NPY_HEADER_MAX = 4096       # bytes allowed for one .npy header (numpy writes 128)


def _npy_header(member, where: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream ``member``, read without touching its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member, max_header_size=NPY_HEADER_MAX)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member, max_header_size=NPY_HEADER_MAX)
    raise StampFormatError(f"{where}: .npy format version {version} not supported (1.0 or 2.0)")


def decode_npz(blob, size: int, where: str) -> dict[str, np.ndarray]:
    """Decode a legacy ``stamp_npz`` blob; errors name ``where`` (file and row).

    Returns the ``image_*``/``invvar_*`` arrays present (other members are not
    read).  Sizes are checked before anything is decompressed: at most
    NPZ_MAX_MEMBERS members, each declaring at most one (size, size) float64
    plane plus header (``size**2 * 8 + NPY_HEADER_MAX`` bytes), each pixel
    member's .npy header (size, size) with a numeric dtype of <= 8 bytes.
    Raises StampFormatError on undecodable or oversize blobs and wrong shapes.
    """
    if blob is None:
        raise StampFormatError(f"{where}: stamp_npz is null")
    limit = size * size * 8 + NPY_HEADER_MAX
    out = {}
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = archive.infolist()
            if len(members) > NPZ_MAX_MEMBERS:
                raise StampFormatError(f"{where}: stamp_npz lists {len(members)} members, at most "
                                       f"{NPZ_MAX_MEMBERS} allowed: refused before decompression")
            for info in members:
                if info.file_size > limit:
                    raise StampFormatError(
                        f"{where}: stamp_npz member '{info.filename}' declares {info.file_size} bytes uncompressed "
                        f"({len(blob)} bytes compressed blob), more than one ({size}, {size}) float64 plane "
                        f"({limit} bytes with header): refused before decompression")
            for info in members:
                key = info.filename.removesuffix(".npy")
                if key not in PIXEL_COLUMNS:
                    continue
                with archive.open(info) as member:
                    shape, fortran, dtype = _npy_header(member, f"{where}: stamp_npz['{key}']")
                    if shape != (size, size):
                        raise StampFormatError(f"{where}: stamp_npz['{key}'] has shape {shape}, "
                                               f"expected ({size}, {size})")
                    if dtype.hasobject or dtype.kind not in "iuf" or dtype.itemsize > 8:
                        raise StampFormatError(f"{where}: stamp_npz['{key}'] has dtype {dtype}, expected a number "
                                               f"of <= 8 bytes (float32)")
                    data = member.read(size * size * dtype.itemsize)
                if len(data) != size * size * dtype.itemsize:
                    raise StampFormatError(f"{where}: stamp_npz['{key}'] holds {len(data)} bytes of pixels, "
                                           f"expected {size * size * dtype.itemsize}")
                arr = np.frombuffer(data, dtype).reshape((size, size), order="F" if fortran else "C")
                out[key] = arr.astype(np.float32)
    except StampFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise StampFormatError(f"{where}: stamp_npz is not a readable .npz ({exc})") from exc
    return out


def stamps_from_legacy(blobs: pa.Array | pa.ChunkedArray, size: int, source: str,
                       row_offset: int = 0) -> StampBatch:
    """Decode a ``stamp_npz`` column into a StampBatch (missing keys -> absent bands)."""
    values = blobs.to_pylist()
    n = len(values)
    image = np.full((n, 3, size, size), np.nan, np.float32)
    invvar = np.full((n, 3, size, size), np.nan, np.float32)
    present = np.zeros((n, 3), bool)
    has_iv = np.zeros((n, 3), bool)
    for i, blob in enumerate(values):
        arrays = decode_npz(blob, size, f"{source} row {row_offset + i} column 'stamp_npz'")
        for j, band in enumerate(BANDS):
            if f"image_{band}" in arrays:
                image[i, j] = arrays[f"image_{band}"]
                present[i, j] = True
            if f"invvar_{band}" in arrays:
                invvar[i, j] = arrays[f"invvar_{band}"]
                has_iv[i, j] = True
    return StampBatch(image, invvar, present, has_iv)


def native_columns(batch: StampBatch) -> dict[str, pa.ExtensionArray]:
    """Native band columns of a StampBatch."""
    cols = {}
    for j, band in enumerate(BANDS):
        cols[pixel_column("image", band)] = to_tensor_array(batch.image[:, j], batch.present[:, j])
        cols[pixel_column("invvar", band)] = to_tensor_array(batch.invvar[:, j], batch.has_invvar[:, j])
    return cols


def legacy_blobs(batch: StampBatch) -> pa.Array:
    """``stamp_npz`` column (binary) of a StampBatch: present bands only."""
    blobs = []
    for i in range(batch.image.shape[0]):
        planes = {}
        for j, band in enumerate(BANDS):
            if batch.present[i, j]:
                planes[f"image_{band}"] = batch.image[i, j]
            if batch.has_invvar[i, j]:
                planes[f"invvar_{band}"] = batch.invvar[i, j]
        blobs.append(encode_npz(planes))
    return pa.array(blobs, type=pa.binary())


def to_legacy_table(table: pa.Table) -> pa.Table:
    """Native-layout table -> legacy layout (pixel columns replaced by ``stamp_npz``)."""
    batch = stamps_from_native(table)
    return table.drop_columns(list(PIXEL_COLUMNS)).append_column("stamp_npz", legacy_blobs(batch))


def to_native_table(table: pa.Table, size: int, source: str = "table", row_offset: int = 0) -> pa.Table:
    """Legacy-layout table -> native layout (``stamp_npz`` decoded into tensor columns)."""
    batch = stamps_from_legacy(table.column("stamp_npz"), size, source, row_offset)
    out = table.drop_columns(["stamp_npz"])
    for name, column in native_columns(batch).items():
        out = out.append_column(name, column)
    return out

"""The one reader (and writer) of stamp datasets, used by every stage.

A dataset is a directory (local, ``s3://`` or ``s3a://``) of parquet files,
optionally hive-partitioned (``region_split=train/...``).  Reads project
columns, prune partitions through ``filter`` and stream row groups; pixels
decode from either layout (native tensor columns or legacy ``stamp_npz``).

Every parquet file the project writes carries CRC32 page checksums (written
only here: ``write_parquet`` / ``parquet_bytes`` / ``write_hive``) and every
read through this module verifies them; a corrupted page raises
``CorruptParquetError`` naming the file.  Files written before checksums
existed carry none and still read (pyarrow verifies only pages with a CRC).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from darkhalo.io.stamps import StampBatch, StampFormatError, stamps_from_legacy, stamps_from_native

S3_SCHEMES = ("s3://", "s3a://")
PARQUET_FORMAT = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


class CorruptParquetError(OSError):
    """A parquet page failed its CRC check: the file's bytes changed after it was written."""


def _is_checksum_error(err: OSError) -> bool:
    return "checksum" in str(err).lower()


def _corrupt(path: str, err: OSError) -> CorruptParquetError:
    return CorruptParquetError(f"{path}: corrupted parquet page ({err}); the file changed after it was written "
                               f"- restore it (dvc checkout / dvc pull) or rerun the stage that wrote it")


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an ``s3://`` / ``s3a://`` URI.

    S3 credentials come from the usual AWS environment; ``AWS_ENDPOINT_URL``
    points at an S3-compatible server (e.g. a local test server).
    """
    uri = str(uri)
    for scheme in S3_SCHEMES:
        if uri.startswith(scheme):
            bucket_key = uri[len(scheme):].strip("/")
            if not bucket_key:
                raise ValueError(f"{uri!r}: no bucket in S3 URI")
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            kwargs = {"endpoint_override": endpoint} if endpoint else {}
            if endpoint and endpoint.startswith("http://"):
                kwargs["scheme"] = "http"
            region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
            if region:
                kwargs["region"] = region
            return pafs.S3FileSystem(**kwargs), bucket_key
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"{uri!r}: unsupported URI scheme (use a local path, s3:// or s3a://)")
    return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))


def open_dataset(uri: str) -> ds.Dataset:
    """Parquet dataset at ``uri`` with hive partition keys exposed as columns."""
    fs, path = resolve_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such dataset")
    return ds.dataset(path, filesystem=fs, format=PARQUET_FORMAT, partitioning="hive")


def layout_of(schema: pa.Schema) -> str:
    """'native' (tensor columns), 'legacy' (stamp_npz) or 'metadata' (no pixels)."""
    names = set(schema.names)
    if "image_r" in names:
        return "native"
    if "stamp_npz" in names:
        return "legacy"
    return "metadata"


@dataclass
class Chunk:
    """A streamed piece of a dataset: rows ``row_offset``.. of file ``source``."""

    table: pa.Table
    source: str
    row_offset: int


def iter_chunks(uri: str, columns: list[str] | None = None, filter: ds.Expression | None = None,
                batch_rows: int = 1024) -> Iterator[Chunk]:
    """Stream a dataset file by file, row group by row group.

    ``columns`` projects (partition keys may be named); ``filter`` prunes whole
    partitions/row groups before reading where it can, then filters rows.
    ``row_offset`` counts rows within the file after filtering.
    """
    dataset = open_dataset(uri)
    for fragment in sorted(dataset.get_fragments(filter=filter), key=lambda f: f.path):
        offset = 0
        scanner = ds.Scanner.from_fragment(fragment, schema=dataset.schema, columns=columns,
                                           filter=filter, batch_size=batch_rows, use_threads=False)
        batches = scanner.to_batches()
        while True:
            try:
                record_batch = next(batches)
            except StopIteration:
                break
            except OSError as err:
                if _is_checksum_error(err):
                    raise _corrupt(fragment.path, err) from err
                raise
            if record_batch.num_rows == 0:
                continue
            yield Chunk(pa.Table.from_batches([record_batch]), fragment.path, offset)
            offset += record_batch.num_rows


def read_table(uri: str, columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
    """Whole (projected, filtered) dataset (a directory or one file) as one table, files in path order."""
    dataset = open_dataset(uri)
    try:
        return dataset.to_table(columns=columns, filter=filter)
    except OSError as err:
        if not _is_checksum_error(err):
            raise
        for fragment in sorted(dataset.get_fragments(filter=filter), key=lambda f: f.path):
            try:
                fragment.to_table(schema=dataset.schema, columns=columns, filter=filter)
            except OSError as inner:
                if _is_checksum_error(inner):
                    raise _corrupt(fragment.path, inner) from err
        raise _corrupt(str(uri), err) from err


def stamps_of(chunk: Chunk, size: int) -> StampBatch:
    """Pixels of a chunk in either layout; errors name the file and row."""
    layout = layout_of(chunk.table.schema)
    if layout == "native":
        return stamps_from_native(chunk.table, chunk.source)
    if layout == "legacy":
        return stamps_from_legacy(chunk.table.column("stamp_npz"), size, chunk.source, chunk.row_offset)
    raise StampFormatError(f"{chunk.source}: no pixel columns (need image_g/r/z or stamp_npz)")


def write_parquet(table: pa.Table, where: str | Path | pa.NativeFile, row_group_rows: int | None = None) -> None:
    """Write one parquet file (zstd, page checksums) to a path or stream; ``row_group_rows`` rows per
    row group (None: pyarrow's default); deterministic bytes."""
    pq.write_table(table, where if isinstance(where, pa.NativeFile) else str(where), row_group_size=row_group_rows,
                   compression="zstd", write_statistics=True, write_page_checksum=True)


def parquet_bytes(table: pa.Table, row_group_rows: int | None = None) -> bytes:
    """The bytes ``write_parquet`` would write (for atomic writes of small tables)."""
    sink = pa.BufferOutputStream()
    write_parquet(table, sink, row_group_rows)
    return sink.getvalue().to_pybytes()


def write_hive(table: pa.Table, root: str | Path, partition_cols: list[str], row_group_rows: int) -> None:
    """Write ``table`` as a hive-partitioned parquet dataset (``key=value/part-0.parquet``)."""
    ds.write_dataset(table, str(root), format="parquet", partitioning=partition_cols,
                     partitioning_flavor="hive", basename_template="part-{i}.parquet", use_threads=False,
                     max_rows_per_group=row_group_rows, min_rows_per_group=0,
                     file_options=ds.ParquetFileFormat().make_write_options(compression="zstd",
                                                                                   write_page_checksum=True),
                     existing_data_behavior="error")


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative paths and bytes, in path order)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: nothing to hash")
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

"""Native and legacy layouts, the shared reader, and loud errors on bad pixels."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from darkhalo.io.dataset import (CorruptParquetError, iter_chunks, read_table, resolve_uri, stamps_of, write_hive,
                              write_parquet)
from darkhalo.io.stamps import (PIXEL_COLUMNS, StampFormatError, decode_npz, encode_npz, from_tensor_column,
                             stamps_from_native, to_legacy_table, to_native_table)


def test_native_layout_reads_with_pyarrow_and_numpy_alone(tiny_survey):
    path = sorted(tiny_survey.glob("*.parquet"))[0]
    table = pq.read_table(path, columns=["parent_id", "image_r"])
    column = table.column("image_r").combine_chunks()
    assert str(column.type) == "extension<arrow.fixed_shape_tensor[value_type=float, shape=[64,64]]>"
    # documented recipe: storage values are row-major float32 [N, 64, 64]
    raw = column.storage.values.to_numpy().reshape(-1, 64, 64)
    planes, present = from_tensor_column(column)
    ok = present
    assert np.array_equal(raw[ok], planes[ok])


def test_legacy_round_trip_is_lossless(tiny_survey, tmp_path):
    native = read_table(str(tiny_survey))
    defects = set(native.column("sim_defect").to_pylist())
    assert {"nan_pixels", "missing_band"} <= defects  # the round trip covers both
    legacy = to_legacy_table(native)
    assert "stamp_npz" in legacy.column_names and not set(PIXEL_COLUMNS) & set(legacy.column_names)
    # through a hive-partitioned legacy manifest on disk and the shared reader
    legacy = legacy.append_column("region_split", pa.array(
        np.array(["train", "val", "test"])[np.arange(legacy.num_rows) % 3]))
    write_hive(legacy, tmp_path / "manifest", ["region_split"], row_group_rows=8)
    chunks = list(iter_chunks(str(tmp_path / "manifest")))
    back = pa.concat_tables([to_native_table(c.table, 64, c.source, c.row_offset) for c in chunks])
    back = back.sort_by("parent_id")
    a, b = stamps_from_native(native), stamps_from_native(back)
    for name in ("image", "invvar", "present", "has_invvar"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert back.select(["parent_id", "ra", "cutout_ok"]).equals(native.select(["parent_id", "ra", "cutout_ok"]))


def test_reader_prunes_partitions_and_projects_columns(tiny_survey, tmp_path):
    native = read_table(str(tiny_survey))
    table = native.append_column("region_split", pa.array(
        np.array(["train", "val", "test"])[np.arange(native.num_rows) % 3]))
    write_hive(table, tmp_path / "m", ["region_split"], row_group_rows=4)
    chunks = list(iter_chunks(str(tmp_path / "m"), columns=["parent_id", "image_g"],
                              filter=ds.field("region_split") == "val", batch_rows=4))
    assert chunks and all("region_split=val" in c.source for c in chunks)
    assert all(c.table.column_names == ["parent_id", "image_g"] for c in chunks)
    ids = pa.concat_tables([c.table for c in chunks]).column("parent_id").to_pylist()
    assert sorted(ids) == [i for i in range(native.num_rows) if i % 3 == 1]
    assert max(c.table.num_rows for c in chunks) <= 4  # streamed in small batches


def test_s3_and_s3a_uris_resolve_to_the_same_bucket_path():
    fs_a, path_a = resolve_uri("s3://dhs-bucket/manifests/v1")
    fs_b, path_b = resolve_uri("s3a://dhs-bucket/manifests/v1/")
    assert isinstance(fs_a, pafs.S3FileSystem) and isinstance(fs_b, pafs.S3FileSystem)
    assert path_a == path_b == "dhs-bucket/manifests/v1"
    with pytest.raises(ValueError, match="gs://x"):
        resolve_uri("gs://x/y")


def _legacy_chunk(tmp_path, blob):
    table = pa.table({"parent_id": [0, 1], "stamp_npz": pa.array([
        encode_npz({f"image_{b}": np.zeros((64, 64)) for b in "grz"}), blob], pa.binary())})
    path = tmp_path / "legacy.parquet"
    pq.write_table(table, path)
    return next(iter_chunks(str(tmp_path)))


def test_corrupt_npz_blob_names_file_row_and_column(tmp_path):
    chunk = _legacy_chunk(tmp_path, b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(StampFormatError, match=r"legacy\.parquet row 1 column 'stamp_npz'.*not a readable"):
        stamps_of(chunk, 64)


def test_wrong_shape_stamp_names_file_row_and_key(tmp_path):
    blob = encode_npz({"image_g": np.zeros((64, 64)), "image_r": np.zeros((60, 64)), "image_z": np.zeros((64, 64))})
    chunk = _legacy_chunk(tmp_path, blob)
    with pytest.raises(StampFormatError, match=r"legacy\.parquet row 1 .*'image_r'.*\(60, 64\).*\(64, 64\)"):
        stamps_of(chunk, 64)


def test_pickled_npz_is_refused(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, image_g=np.array([object()], dtype=object))
    chunk = _legacy_chunk(tmp_path, buf.getvalue())
    with pytest.raises(StampFormatError, match="row 1"):
        stamps_of(chunk, 64)


def _scribble(path, offset: int, n: int = 4096) -> None:
    """Overwrite ``n`` bytes at ``offset`` with random bytes (footer left intact)."""
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupted_parquet_page_fails_naming_the_file(tmp_path):
    table = pa.table({"image_z": np.random.default_rng(0).random(100_000), "row": np.arange(100_000)})
    (tmp_path / "d").mkdir()
    write_parquet(table, tmp_path / "d" / "part-00000.parquet", 65536)
    write_parquet(table, tmp_path / "d" / "part-00001.parquet", 65536)
    write_hive(table.append_column("region_split", pa.array(["train"] * table.num_rows)), tmp_path / "h",
               ["region_split"], 65536)
    assert read_table(str(tmp_path / "d")).num_rows == 200_000
    bad = tmp_path / "d" / "part-00001.parquet"
    _scribble(bad, 100_000)
    _scribble(tmp_path / "h" / "region_split=train" / "part-0.parquet", 100_000)
    for read in (lambda: read_table(str(tmp_path / "d")), lambda: read_table(str(bad)),
                 lambda: list(iter_chunks(str(tmp_path / "d"), batch_rows=4096))):
        with pytest.raises(CorruptParquetError, match=r"part-00001\.parquet: corrupted parquet page.*rerun"):
            read()
    with pytest.raises(CorruptParquetError, match=r"region_split=train/part-0\.parquet"):
        read_table(str(tmp_path / "h"))


def test_parquet_without_checksums_still_reads(tmp_path):
    """Files written before checksums existed carry no CRC: verification passes them (corruption undetected)."""
    table = pa.table({"x": np.arange(100_000, dtype=np.float64)})
    pq.write_table(table, tmp_path / "old.parquet", compression="zstd")
    assert read_table(str(tmp_path / "old.parquet")).equals(table)
    assert sum(c.table.num_rows for c in iter_chunks(str(tmp_path))) == 100_000


def _npz_bomb(side: int = 3200) -> bytes:
    """A deflated npz whose 'image_g' member is a (side, side) float32 array of zeros (~41 MB -> ~40 KB)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("image_g.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (side, side)})
            zeros = bytes(side * 4 * 100)
            for _ in range(side // 100):
                member.write(zeros)
    return buf.getvalue()


def test_npz_bomb_is_refused_before_decompression(tmp_path, monkeypatch):
    import zipfile

    blob = _npz_bomb()
    assert len(blob) < 200_000
    chunk = _legacy_chunk(tmp_path, blob)

    def no_read(*args, **kwargs):
        raise AssertionError("decompressed a member of an oversize npz")

    with pytest.raises(StampFormatError, match=r"legacy\.parquet row 1 column 'stamp_npz': stamp_npz member "
                                               r"'image_g\.npy' declares 40960128 bytes uncompressed .*more than one "
                                               r"\(64, 64\) float64 plane \(36864 bytes with header\): refused before"):
        stamps_of(chunk, 64)
    monkeypatch.setattr(zipfile.ZipExtFile, "read", no_read)   # nothing of the blob is decompressed
    with pytest.raises(StampFormatError, match="refused before decompression"):
        decode_npz(blob, 64, "row 1")


def test_npz_header_shape_is_checked_before_the_pixels_are_read(tmp_path):
    """A member small enough on the zip level whose .npy header declares a larger array."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (5000, 5000)})
        archive.writestr("image_r.npy", header.getvalue() + bytes(1000))
    with pytest.raises(StampFormatError, match=r"row 1 .*'image_r'\] has shape \(5000, 5000\), expected \(64, 64\)"):
        stamps_of(_legacy_chunk(tmp_path, buf.getvalue()), 64)

"""The S3 DVC remote (dvc-s3) against moto's S3 server on 127.0.0.1, and manifests read from s3:// directly.

The README's command sequence, run for real: `dvc remote add` (bucket URL, in git), `dvc remote modify
--local` (endpoint and credentials, git-ignored), `dvc push`, `dvc pull` and `dvc repro --pull` in fresh
clones, then the pushed survey and a hive-partitioned manifest read through `darkhalo.io.dataset` from
`s3://` and `s3a://` URIs.  No AWS variable reaches the dvc commands: the remote's settings come only
from `.dvc/config` + `.dvc/config.local`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from conftest import make_project

from darkhalo.io.dataset import read_table, resolve_uri, write_hive
from darkhalo.io.stamps import from_tensor_column

BUCKET = "dhs-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto-key", "AWS_SECRET_ACCESS_KEY": "moto-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(*buckets: str):
    """moto's threaded S3 server on 127.0.0.1 (a free port) holding ``buckets``; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def object_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def bitwise(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | list]:
    """(validity, values) of a column with floats as their bit patterns, so NaN == NaN bit for bit."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    if isinstance(arr.type, pa.FixedShapeTensorType):
        planes, present = from_tensor_column(arr)
        assert np.array_equal(present, valid)
        return valid, planes[valid].view(np.uint32)
    if pa.types.is_floating(arr.type):
        values = arr.fill_null(0).to_numpy(zero_copy_only=False)
        return valid, values[valid].view(np.uint64 if values.itemsize == 8 else np.uint32)
    return valid, arr.to_pylist()


def assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    """Same schema, same rows, byte-identical values (NaN pixels included), column by column."""
    assert a.schema == b.schema, f"schemas differ:\n{a.schema}\n---\n{b.schema}"
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        (va, xa), (vb, xb) = bitwise(a.column(name)), bitwise(b.column(name))
        assert np.array_equal(va, vb), f"column '{name}': validity differs"
        assert (np.array_equal(xa, xb) if isinstance(xa, np.ndarray) else xa == xb), f"column '{name}' differs"


def sh(cmd: list[str], cwd: Path) -> str:
    """Run a command with no AWS_* variable in its environment; fail with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", DVC_NO_ANALYTICS="true",
               GX_ANALYTICS_ENABLED="false")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc(cwd: Path, *args: str) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def configure_remote_locally(cwd: Path, endpoint: str) -> None:
    """The per-machine half of the README sequence: endpoint and credentials in .dvc/config.local."""
    for key, value in (("endpointurl", endpoint), ("access_key_id", CREDENTIALS["AWS_ACCESS_KEY_ID"]),
                       ("secret_access_key", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]), ("region", "us-east-1")):
        dvc(cwd, "remote", "modify", "--local", "storage", key, value)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def test_dvc_s3_remote_round_trip_and_manifests_on_s3(tmp_path, monkeypatch):
    root = make_project(tmp_path)
    assert "Running stage 'survey'" in dvc(root, "repro", "survey")
    survey = file_bytes(root / "data" / "survey")
    assert len(survey) == 2  # pipeline_params: 96 parents in shards of 48

    with s3_server(BUCKET) as endpoint:
        # --- shared half, committed: the bucket URL only
        dvc(root, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvcstore")
        configure_remote_locally(root, endpoint)
        shared = (root / ".dvc" / "config").read_text()
        assert f"s3://{BUCKET}/dvcstore" in shared
        assert endpoint not in shared and "moto-secret" not in shared and "access_key_id" not in shared
        assert "moto-secret" in (root / ".dvc" / "config.local").read_text()
        sh(["git", "check-ignore", "-q", ".dvc/config.local"], root)  # rc 0: ignored by git
        sh(["git", "add", "-A"], root)
        sh(["git", "commit", "-qm", "survey + S3 remote"], root)
        assert "moto-secret" not in sh(["git", "show", "HEAD"], root)

        assert "pushed" in dvc(root, "push", "survey")
        keys = object_keys(endpoint, BUCKET, "dvcstore/")
        assert len(keys) >= len(survey) + 1, keys  # the parts and the directory manifest, content-addressed

        # --- another machine: clone, its own config.local, pull
        clone = tmp_path / "clone"
        sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
        assert not (clone / ".dvc" / "config.local").exists()
        configure_remote_locally(clone, endpoint)
        dvc(clone, "pull", "survey")
        assert file_bytes(clone / "data" / "survey") == survey

        # --- a third machine: `dvc repro --pull` fetches the stage's outputs instead of running it
        third = tmp_path / "third"
        sh(["git", "clone", "-q", str(root), str(third)], tmp_path)
        configure_remote_locally(third, endpoint)
        out = dvc(third, "repro", "--pull", "survey")
        assert "Running stage" not in out and "up to date" in out, out
        assert file_bytes(third / "data" / "survey") == survey
        assert "in sync" in dvc(third, "status", "--cloud", "survey")

        # --- manifests read directly from s3:// and s3a:// through the shared reader
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(name, value)
        fs, key = resolve_uri(f"s3://{BUCKET}/manifests/survey")
        pafs.copy_files(str(root / "data" / "survey"), key, destination_filesystem=fs)
        local = read_table(str(root / "data" / "survey")).sort_by("parent_id")
        for scheme in ("s3", "s3a"):
            assert_same_rows(read_table(f"{scheme}://{BUCKET}/manifests/survey").sort_by("parent_id"), local)
        splits = np.array(["train", "val", "test"])[local.column("parent_id").to_numpy() % 3]
        write_hive(local.append_column("region_split", pa.array(splits)), f"s3://{BUCKET}/manifests/hive",
                   ["region_split"], row_group_rows=8)
        assert object_keys(endpoint, BUCKET, "manifests/hive/region_split=test/")
        columns = ["parent_id", "psfsize_r", "image_r"]
        test_rows = read_table(f"s3a://{BUCKET}/manifests/hive", columns=columns,
                               filter=ds.field("region_split") == "test").sort_by("parent_id")
        expected = local.filter(pa.array(splits == "test")).select(columns)
        assert test_rows.num_rows == expected.num_rows > 0
        assert_same_rows(test_rows, expected)

"""`engine: spark` (Spark local[2], mapInArrow) against `engine: local` on the same inputs; pruned reads.

One SparkSession for the module, started after moto's S3 server so that its Python workers see the
server's endpoint and credentials (as executors on EMR see their instance profile).  Java 17+ is
required: without it the `spark` fixture fails with the message `darkhalo.io.spark` gives, never skips.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from conftest import REPO, tiny_params, write_params
from darkhalo.io import spark as dhs_spark
from darkhalo.io.dataset import iter_chunks, read_table, resolve_uri, write_hive
from darkhalo.physics.normalize import normalize, robust_stats
from darkhalo.core.params import ParamError
from darkhalo.io.stamps import stamps_from_native, tensor_type, to_tensor_array
from darkhalo.sim.survey import simulate_parents, sky_patches, survey_config
from stages import inject, survey
from test_s3_remote import BUCKET, CREDENTIALS, assert_same_rows, s3_server



@pytest.fixture(scope="module")
def s3_endpoint():
    """moto S3 on 127.0.0.1 with the AWS variables set for this module only."""
    with s3_server(BUCKET) as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(name, value)
        yield endpoint


@pytest.fixture(scope="module")
def spark(s3_endpoint):
    """The session `darkhalo.io.spark.session` builds (local[2]), shared by the module's tests."""
    session = dhs_spark.session(workers=2, app_name="darkhalo-tests")
    assert session.sparkContext.master == "local[2]"
    yield session
    session.stop()


def s3_bytes(uri: str) -> dict[str, bytes]:
    """Parquet objects under an S3 prefix by relative key."""
    fs, prefix = resolve_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return {i.path[len(prefix) + 1:]: fs.open_input_stream(i.path).read() for i in infos
            if i.base_name.endswith(".parquet")}


def local_bytes(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


# --- the two engines give the same outputs ---------------------------------------------------

def test_survey_on_spark_writes_the_local_engines_bytes_to_s3(spark, tiny_survey, tmp_path):
    """runtime.engine = spark, output on s3a://: every part file byte-identical to the local engine's."""
    params = write_params(tmp_path / "params.yaml", tiny_params({"engine": "spark", "workers": 2}))
    out = f"s3a://{BUCKET}/runs/survey"
    survey.main(["--params", str(params), "--out", out, "--metrics", str(tmp_path / "survey.json")])
    local = local_bytes(tiny_survey)  # the conftest survey: same params, engine local, 1 worker
    assert len(local) == 3 and s3_bytes(out) == local
    assert_same_rows(read_table(out).sort_by("parent_id"), read_table(str(tiny_survey)).sort_by("parent_id"))
    assert json.loads((tmp_path / "survey.json").read_text()) == \
        json.loads((tiny_survey.parent / "survey.json").read_text())
    fs, prefix = resolve_uri(out)
    assert fs.get_file_info(f"{prefix}/_SUCCESS").is_file
    with pytest.raises(FileExistsError, match="output prefix already holds 4 object"):
        survey.main(["--params", str(params), "--out", out, "--metrics", str(tmp_path / "again.json")])


@pytest.fixture(scope="module")
def assignment(tiny_assignment):
    return tiny_assignment


def test_inject_on_spark_matches_the_local_engine(spark, tiny_survey, assignment, tmp_path):
    """gen5p (candidate pass, acceptance fit, injection pass) on both engines: identical files and metrics.

    The Spark run reads its survey from s3a:// and writes to s3://, the local run stays on disk.
    """
    fs, key = resolve_uri(f"s3://{BUCKET}/inputs/survey")
    pafs.copy_files(str(tiny_survey), key, destination_filesystem=fs)
    places = {"local": (str(tiny_survey), str(tmp_path / "local")),
              "spark": (f"s3a://{BUCKET}/inputs/survey", f"s3://{BUCKET}/runs/inject")}
    for engine, workers in (("local", 1), ("spark", 2)):
        params = tiny_params({"workers": workers, "engine": engine})
        params["inject"].update(batch_size=16)
        params["generations"]["gen5p"]["n_candidates"] = 4
        path = write_params(tmp_path / f"{engine}.yaml", params)
        survey_in, out = places[engine]
        inject.main(["--generation", "gen5p", "--params", str(path), "--survey", survey_in,
                     "--split", str(assignment), "--out", out, "--metrics", str(tmp_path / f"{engine}.json")])
    local = local_bytes(tmp_path / "local")
    # a generation is injected into train and val only (the test region is the frozen benchmark's)
    assert {k.split("/")[0] for k in local} == {"region_split=train", "region_split=val"}
    assert s3_bytes(places["spark"][1]) == local
    assert (tmp_path / "spark.json").read_text() == (tmp_path / "local.json").read_text()
    rows = {e: read_table(places[e][1]).sort_by("task_id") for e in places}
    assert_same_rows(rows["spark"], rows["local"])


# --- reads of a 1% partition: the shared reader and Spark's scan ----------------------------

N_PARTS = 100


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A native-layout manifest of 200 stamps in 100 hive partitions (part=p00..p99, 2 stamps each),
    with NaN pixels and missing bands among them."""
    config = survey_config(tiny_params(n_parents=2 * N_PARTS), "tiny")
    table = simulate_parents(config, sky_patches(config), np.arange(2 * N_PARTS, dtype=np.int64))
    parts = [f"p{i % N_PARTS:02d}" for i in range(table.num_rows)]
    root = tmp_path_factory.mktemp("manifest") / "survey"
    write_hive(table.append_column("part", pa.array(parts)), root, ["part"], row_group_rows=8)
    assert len(list(root.rglob("*.parquet"))) == N_PARTS
    return root


def read_io_bytes() -> int:
    """Bytes this process has read through read(2)-like calls (all threads): Linux file-access accounting."""
    try:
        with open("/proc/self/io") as handle:
            stats = dict(line.split(": ") for line in handle.read().splitlines())
    except FileNotFoundError:
        pytest.fail("/proc/self/io is missing: this test needs Linux per-process I/O accounting")
    return int(stats["rchar"])


def test_shared_reader_reads_only_the_selected_partition(manifest):
    """A 1% partition read (filter + projection) reads ~1% of the bytes; the full read reads them all."""
    total = sum(p.stat().st_size for p in manifest.rglob("*.parquet"))
    chosen = sum(p.stat().st_size for p in (manifest / "part=p07").rglob("*.parquet"))
    columns = ["parent_id", "psfsize_r", "image_r", "part"]
    list(iter_chunks(str(manifest), columns=["parent_id"], filter=ds.field("part") == "p01"))  # warm imports

    def measured(**kwargs) -> tuple[int, int]:
        before = read_io_bytes()
        rows = sum(c.table.num_rows for c in iter_chunks(str(manifest), **kwargs))
        return rows, read_io_bytes() - before

    rows, smoke = measured(columns=columns, filter=ds.field("part") == "p07")
    assert rows == 2
    rows_all, everything = measured()
    assert rows_all == 2 * N_PARTS and everything >= total  # the counter sees the reader's reads
    _, projected_all = measured(columns=columns)
    assert smoke <= 2 * chosen + 64 * 1024, (smoke, chosen)  # the partition (+ one footer for the schema)
    assert smoke < 0.03 * everything, (smoke, everything)
    assert projected_all < 0.6 * everything  # one band of six pixel planes: projection skips the rest


def normalised_r(table: pa.Table) -> pa.Table:
    """A per-row batch function over a manifest (the shared normalisation of the r band)."""
    stamps = stamps_from_native(table)
    median, sigma = robust_stats(stamps.image[:, 1])
    normed = normalize(stamps.image[:, 1])
    return pa.table({"parent_id": table.column("parent_id"), "part": table.column("part"),
                     "outer_median_r": pa.array(median), "outer_sigma_r": pa.array(sigma),
                     "norm_r": to_tensor_array(normed, stamps.present[:, 1])})


NORM_SCHEMA = pa.schema([("parent_id", pa.int64()), ("part", pa.string()), ("outer_median_r", pa.float64()),
                         ("outer_sigma_r", pa.float64()), ("norm_r", tensor_type(64))])


def test_spark_scan_prunes_partitions_and_tensors_survive_the_exchange(spark, manifest):
    """Spark reads only part=p07 (plan and scan metrics) and map_batches equals the local reader path."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    columns = ["parent_id", "part"] + [f"{p}_{b}" for p in ("image", "invvar") for b in "grz"]
    in_schema = dhs_spark.dataset_schema(manifest, columns)
    total = sum(p.stat().st_size for p in manifest.rglob("*.parquet"))
    chosen = sum(p.stat().st_size for p in (manifest / "part=p07").rglob("*.parquet"))

    df = dhs_spark.read_dataset(spark, manifest, columns=columns, where="part = 'p07' AND parent_id >= 0")
    result = dhs_spark.collect_table(dhs_spark.map_batches(df, normalised_r, in_schema, NORM_SCHEMA), NORM_SCHEMA)
    expected = pa.concat_tables(normalised_r(c.table) for c in iter_chunks(
        str(manifest), columns=columns, filter=(ds.field("part") == "p07") & (ds.field("parent_id") >= 0)))
    assert_same_rows(result.sort_by("parent_id"), expected.sort_by("parent_id"))

    (scan,) = dhs_spark.scan_report(df)
    assert "part" in scan["partition_filters"] and "p07" in scan["partition_filters"], scan
    assert "GreaterThanOrEqual(parent_id,0)" in scan["pushed_filters"], scan  # row-group statistics filter
    assert "image_r" in scan["read_schema"] and "psfsize_r" not in scan["read_schema"], scan
    # metrics of the executed plan: `df` ran (its scan) inside the mapInArrow plan above
    df.toArrow()
    (scan,) = dhs_spark.scan_report(df)
    assert scan["num_files"] == 1 and scan["files_size_bytes"] == chosen, (scan, chosen)
    everything = dhs_spark.read_dataset(spark, manifest, columns=columns)
    everything.toArrow()
    (full,) = dhs_spark.scan_report(everything)
    assert full["partition_filters"] == "[]" and full["num_files"] == N_PARTS and full["files_size_bytes"] == total

    # a tensor column with nulls (missing bands) both ways through Spark, bit for bit
    all_rows = dhs_spark.collect_table(dhs_spark.map_batches(everything, normalised_r, in_schema, NORM_SCHEMA),
                                       NORM_SCHEMA).sort_by("parent_id")
    local_rows = pa.concat_tables(normalised_r(c.table) for c in iter_chunks(str(manifest), columns=columns))
    assert all_rows.column("norm_r").null_count > 0  # missing r bands made it through as nulls
    assert_same_rows(all_rows, local_rows.sort_by("parent_id"))


# --- loud failures --------------------------------------------------------------------------

def test_spark_verifies_the_page_checksums_the_project_writes(spark, tmp_path):
    """4 KiB of random bytes inside a data page (footer intact): Spark's reader refuses the file, naming it,
    as the shared reader does (tests/test_storage.py), instead of returning changed pixels."""
    from test_storage import _scribble

    table = pa.table({"image_z": np.random.default_rng(0).random(100_000), "row": np.arange(100_000)})
    write_hive(table.append_column("part", pa.array(["a"] * table.num_rows)), tmp_path / "d", ["part"], 65536)
    (path,) = (tmp_path / "d").rglob("*.parquet")
    assert dhs_spark.read_dataset(spark, tmp_path / "d").count() == 100_000
    _scribble(path, 100_000)
    with pytest.raises(Exception) as err:
        dhs_spark.read_dataset(spark, tmp_path / "d", columns=["image_z"]).toArrow()
    assert "checksum" in str(err.value).lower() and path.name in str(err.value)



@pytest.mark.parametrize("stage", ["survey", "inject"])
def test_unknown_engine_is_named_with_file_and_key(tmp_path, stage):
    path = write_params(tmp_path / "params.yaml", tiny_params({"engine": "dask"}))
    message = rf"{path}: runtime\.engine = 'dask': must be one of local, spark"
    with pytest.raises(ParamError, match=message):
        if stage == "survey":
            survey.main(["--params", str(path), "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "m")])
        else:
            inject.main(["--generation", "gen5", "--params", str(path), "--out", str(tmp_path / "o"),
                         "--metrics", str(tmp_path / "m")])
    assert not (tmp_path / "o").exists()


def test_missing_java_fails_loudly_and_pyspark_stays_unimported(tmp_path):
    """engine spark without Java: the stage exits with what to install; the local path never imports pyspark."""
    path = write_params(tmp_path / "params.yaml", tiny_params({"engine": "spark"}))
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = os.path.dirname(sys.executable)  # the venv's bin: python, no java
    result = subprocess.run([sys.executable, "-m", "stages.survey", "--params", str(path), "--out",
                             str(tmp_path / "o"), "--metrics", str(tmp_path / "m.json")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "SparkUnavailable: engine 'spark' needs Java 17+" in result.stderr, result.stderr[-2000:]
    assert "no `java` on PATH and JAVA_HOME is not set" in result.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(dhs_spark.SparkUnavailable, match=r"JAVA_HOME='/nonexistent' has no bin/java"):
        dhs_spark.java_version({"JAVA_HOME": "/nonexistent", "PATH": os.environ["PATH"]})
    probe = ("import sys, stages.survey, stages.inject, darkhalo.io.parallel, darkhalo.io.spark; "
             "assert 'pyspark' not in sys.modules, 'pyspark imported'")
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, timeout=300)

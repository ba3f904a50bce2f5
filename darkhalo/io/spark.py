"""The Spark engine: session settings (the one place), shard tasks and row batches through ``mapInArrow``.

* ``session(workers)``: the SparkSession.  Under ``spark-submit`` its master and
  settings are used; otherwise ``$DARKHALO_SPARK_MASTER`` or ``local[workers]``.
  Java 17+ is checked first, with a message that says what is missing
  (PySpark's own is "Java gateway process exited").
* ``map_shards_spark``: the engine behind ``parallel.map_shards(..., engine="spark")``:
  one task per shard, ``fn(*args)`` runs in a Python worker, results are
  pickled back in shard order.  Shard functions write their own files, so
  outputs are byte-identical to the local engine's.
* ``read_dataset`` / ``map_batches`` / ``collect_table``: per-row work over a
  (hive-partitioned) manifest read by Spark itself, with partition pruning and
  column projection in the scan (``scan_report`` shows them).  Spark has no
  Arrow ``fixed_shape_tensor`` or ``fixed_size_list``: tensor columns travel
  as ``array<float>`` (row-major values; a null row stays null) and are
  restored to the dataset's tensor type before ``fn`` sees them.

pyspark is imported inside functions: importing this module does not import it.
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO_ROOT = Path(__file__).resolve().parents[1]   # holds darkhalo/ and stages/ (shipped as PYTHONPATH in local mode)
MASTER_ENV = "DARKHALO_SPARK_MASTER"              # e.g. local[8], spark://host:7077, yarn
MIN_JAVA = 17                                     # PySpark 4.x runs on Java 17 or 21

# Every session, local or cluster.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",  # ~25 MB of grz 64x64 image+invvar per Arrow batch
    "spark.python.worker.reuse": "true",
    "spark.hadoop.parquet.page.verify-checksum.enabled": "true",  # the CRCs darkhalo.io.dataset writes
    # one core per task: the shard functions are single-threaded numpy/torch
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
    "spark.executorEnv.MKL_NUM_THREADS": "1",
}
# Local mode only (a cluster has its own).
LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
    "spark.sql.shuffle.partitions": "8",
}
# Non-secret S3 settings forwarded to executors (credentials come from the executors' own chain:
# instance profile on EMR, the inherited environment in local mode).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


class SparkUnavailable(RuntimeError):
    """Spark cannot start here (no suitable Java); the message says what to install or set."""


def java_version(env: dict | None = None) -> tuple[str, int]:
    """(java executable, major version) Spark would launch with ``env``; SparkUnavailable if unusable.

    Spark's launcher takes ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` on PATH.
    """
    env = dict(os.environ if env is None else env)
    home = env.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java", path=env.get("PATH", ""))
    hint = (f"engine 'spark' needs Java {MIN_JAVA}+ (PySpark 4.x): install a JDK/JRE "
            f"(e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    if not java or not Path(java).is_file():
        where = f"JAVA_HOME={home!r} has no bin/java" if home else "no `java` on PATH and JAVA_HOME is not set"
        raise SparkUnavailable(f"{hint}; {where}")
    try:
        probe = subprocess.run([java, "-version"], capture_output=True, text=True, env=env, timeout=60)
    except OSError as exc:
        raise SparkUnavailable(f"{hint}; {java} does not run ({exc})") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', probe.stderr + probe.stdout)
    if probe.returncode != 0 or not match:
        raise SparkUnavailable(f"{hint}; `{java} -version` failed: {(probe.stderr or probe.stdout).strip()[:300]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise SparkUnavailable(f"{hint}; {java} is Java {major}")
    return java, major


def _submitted() -> bool:
    """True when this driver was started by spark-submit (PySpark then joins spark-submit's JVM)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session(workers: int = 2, app_name: str = "darkhalo"):
    """The SparkSession (an active one is reused; see the module docstring for the master)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    master = None if _submitted() else (os.environ.get(MASTER_ENV) or f"local[{workers}]")
    local = master is not None and master.startswith("local")
    if not _submitted():
        java_version()
    conf = dict(SESSION_CONF)
    for name in FORWARDED_ENV:
        if os.environ.get(name):
            conf[f"spark.executorEnv.{name}"] = os.environ[name]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:  # Spark's own s3a:// reads (needs hadoop-aws, present on EMR) against the same server
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
    if local:
        conf.update(LOCAL_CONF)
        # PySpark takes the workers' interpreter from this variable only: this one, unless set.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf["spark.executorEnv.PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def require_local_master(workers: int, what: str) -> None:
    """Fail unless the session runs in local mode (executors on this machine can write ``what``)."""
    master = session(workers).sparkContext.master
    if not master.startswith("local"):
        raise ValueError(f"{what}: engine 'spark' runs on master {master!r}, whose executors cannot write to "
                         f"this machine's disk; use an s3:// (or s3a://) output")


def _importable(fn: Callable) -> Callable:
    """``fn`` as an attribute of its importable module when it was defined in ``__main__``.

    Stages run as ``python -m stages.survey``: their shard functions live in
    ``__main__``, which executors do not have; ``stages.survey`` they do.
    """
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        return fn
    return getattr(importlib.import_module(spec.name), fn.__qualname__, fn)


def map_shards_spark(fn: Callable, shard_args: list[tuple], workers: int, desc: str) -> list:
    """``[fn(*args) for args in shard_args]`` with one Spark task per shard, in shard order.

    A failing shard fails the job with the worker's Python traceback.
    """
    n = len(shard_args)
    if n == 0:
        return []
    spark = session(workers)
    fn = _importable(fn)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for shard in batch.column(0).to_pylist():
                blob = pickle.dumps(fn(*shard_args[shard]), protocol=pickle.HIGHEST_PROTOCOL)
                yield pa.RecordBatch.from_arrays([pa.array([shard], pa.int64()), pa.array([blob], pa.binary())],
                                                 names=["shard", "result"])

    context = spark.sparkContext
    context.setJobDescription(desc)
    try:
        table = spark.range(0, n, 1, n).mapInArrow(run, "shard long, result binary").toArrow()
    finally:
        context.setJobDescription(None)
    shards = table.column("shard").to_pylist()
    if sorted(shards) != list(range(n)):
        raise RuntimeError(f"{desc}: Spark returned results for shards {sorted(shards)[:10]}... "
                           f"({len(shards)} results for {n} shards)")
    results = [None] * n
    for shard, blob in zip(shards, table.column("result").to_pylist()):
        results[shard] = pickle.loads(blob)
    return results


# --- manifests read by Spark: tensor columns across the Arrow exchange ----------------------

def spark_uri(uri: str | Path) -> str:
    """A dataset location for Spark's readers: ``s3://`` becomes ``s3a://`` (Hadoop's S3 connector;
    EMR accepts both), local paths become absolute."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://"):]
    if uri.startswith("s3a://"):
        return uri
    return str(Path(uri.removeprefix("file://")).resolve())


def is_tensor(dtype: pa.DataType) -> bool:
    return isinstance(dtype, pa.FixedShapeTensorType)


def spark_arrow_type(dtype: pa.DataType) -> pa.DataType:
    """What ``dtype`` travels as through Spark: tensors as ``list<value type>``, the rest unchanged."""
    return pa.list_(dtype.value_type) if is_tensor(dtype) else dtype


def to_spark_arrow(table: pa.Table) -> pa.Table:
    """Tensor columns -> ``list<float>`` (what Spark can hold); other columns unchanged."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if is_tensor(field.type):
            column = pa.chunked_array([c.storage.cast(spark_arrow_type(field.type)) for c in column.chunks],
                                      spark_arrow_type(field.type))
        columns.append(column)
    return pa.table(columns, schema=pa.schema([pa.field(f.name, spark_arrow_type(f.type)) for f in table.schema]))


def restore_tensor(column: pa.Array | pa.ChunkedArray, dtype: pa.FixedShapeTensorType, name: str) -> pa.Array:
    """A ``list<float>`` column from Spark -> the tensor column ``dtype``; null rows stay null (NaN values)."""
    from darkhalo.io.stamps import StampFormatError

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = int(np.prod(dtype.shape))
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    bad = valid & (lengths != width)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise StampFormatError(f"column '{name}' row {row}: {int(lengths[row])} values, expected {width} "
                               f"for a {dtype.shape} tensor")
    values = arr.flatten().cast(dtype.value_type)
    if valid.all():
        storage = pa.FixedSizeListArray.from_arrays(values, width)
    else:
        dense = np.full((len(arr), width), np.nan, dtype.value_type.to_pandas_dtype())
        dense[valid] = values.to_numpy(zero_copy_only=False).reshape(-1, width)
        storage = pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), width, mask=pa.array(~valid))
    return pa.ExtensionArray.from_storage(dtype, storage)


def from_spark_arrow(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Arrow data from Spark -> ``schema`` (names and types, tensors restored), columns in schema order."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            raise KeyError(f"column '{field.name}' missing from Spark's output (have {table.column_names})")
        column = table.column(field.name)
        columns.append(restore_tensor(column, field.type, field.name) if is_tensor(field.type)
                       else column.cast(field.type))
    return pa.table(columns, schema=schema)


def spark_schema(schema: pa.Schema):
    """Spark StructType of an Arrow schema (tensors as arrays of their value type)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema([pa.field(f.name, spark_arrow_type(f.type)) for f in schema]))


def read_dataset(spark, uri: str | Path, columns: list[str] | None = None, where: str | None = None):
    """DataFrame of a parquet dataset (hive partitions as columns): ``where`` (Spark SQL) prunes
    partitions and pushes filters into the scan, ``columns`` projects; both before any row is read."""
    df = spark.read.parquet(spark_uri(uri))
    if where:
        df = df.where(where)
    return df.select(*columns) if columns else df


def dataset_schema(uri: str | Path, columns: list[str] | None = None) -> pa.Schema:
    """Arrow schema of a dataset (through the shared reader), projected to ``columns``."""
    from darkhalo.io.dataset import open_dataset

    schema = open_dataset(str(uri)).schema
    return pa.schema([schema.field(c) for c in columns]) if columns else schema


def map_batches(df, fn: Callable[[pa.Table], pa.Table], in_schema: pa.Schema, out_schema: pa.Schema):
    """``df.mapInArrow`` of a pure batch function ``fn(table) -> table``.

    ``fn`` sees ``in_schema`` (tensors restored) and must return ``out_schema``;
    the resulting DataFrame carries tensors as arrays (``collect_table`` restores them).
    """
    fn = _importable(fn)
    wire = pa.schema([pa.field(f.name, spark_arrow_type(f.type)) for f in out_schema])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = fn(from_spark_arrow(pa.Table.from_batches([batch]), in_schema))
            yield from to_spark_arrow(out.select(out_schema.names)).cast(wire).to_batches()

    return df.mapInArrow(run, spark_schema(out_schema))


def collect_table(df, schema: pa.Schema) -> pa.Table:
    """All rows of ``df`` on the driver as ``schema`` (tensor columns restored). For small results."""
    return from_spark_arrow(df.toArrow(), schema)


def scan_report(df) -> list[dict]:
    """The file scans of ``df``'s physical plan: partition filters, pushed filters, columns read and,
    once an action has run, the files and bytes the scan selected (after pruning)."""
    plan = df._jdf.queryExecution().executedPlan()
    scans = []
    leaves = plan.collectLeaves()
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        if "FileSourceScanExec" not in leaf.getClass().getName():
            continue
        metrics = leaf.metrics()
        metadata = leaf.metadata()  # the untruncated strings of the plan's FileScan line
        text = {key: str(metadata.apply(key)) if metadata.contains(key) else ""
                for key in ("PartitionFilters", "PushedFilters", "ReadSchema", "Location")}
        value = lambda key: int(metrics.apply(key).value()) if metrics.contains(key) else None  # noqa: E731
        scans.append({"partition_filters": text["PartitionFilters"], "pushed_filters": text["PushedFilters"],
                      "read_schema": text["ReadSchema"], "location": text["Location"],
                      "num_files": value("numFiles"), "files_size_bytes": value("filesSize"),
                      "num_partitions": value("numPartitions"), "output_rows": value("numOutputRows")})
    return scans

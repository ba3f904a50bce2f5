"""Run a pure per-shard function on an engine, and the storage its shards write to.

Engines (``runtime.engine`` in params.yaml, darkhalo/core/runtime.py):

* ``local``: a process pool on this machine, with a progress bar;
* ``spark``: one Spark task per shard through ``mapInArrow`` (see ``darkhalo/io/spark.py``),
  in local mode (``local[workers]``) or on the cluster ``spark-submit`` names.

Either way a shard function writes its own output files (deterministic bytes,
so a retried or speculative task rewrites the same file) and returns a small
result; results come back in shard order.  Shard outputs live under a local
directory (replaced atomically on success) or an ``s3://`` / ``s3a://`` prefix.

Local pool workers never outlive the stage: an interrupt of the parent
(SIGINT, or SIGTERM through ``outputs.run_stage``) terminates the pool, a
SIGTERM to the process group ends them directly, and a worker whose parent
died (SIGKILL) exits within ``PARENT_POLL_S`` instead of finishing its shard.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from darkhalo.io.dataset import S3_SCHEMES
from darkhalo.core.runtime import ENGINES

PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _init_worker(parent: int) -> None:
    """Pool worker set-up: one BLAS/OpenMP thread (the pool is the parallelism: more threads
    oversubscribe the cores and make float results depend on the thread count), SIGINT left to
    the parent (it terminates the pool), SIGTERM ends the worker, and the worker exits when
    ``parent`` dies."""
    threadpool_limits(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def map_shards(fn: Callable[..., Any], shard_args: Iterable[tuple], workers: int, desc: str,
               engine: str = "local") -> list:
    """``[fn(*args) for args in shard_args]`` in shard order, on ``engine``.

    Results are returned in input order whatever the completion order, so the
    outcome is independent of ``workers`` and of the engine.
    """
    if engine == "spark":
        from darkhalo.io.spark import map_shards_spark  # pyspark is imported only when Spark is asked for

        return map_shards_spark(fn, list(shard_args), workers, desc)
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    shard_args = list(shard_args)
    with tqdm(total=len(shard_args), desc=desc, unit="shard") as bar:
        if workers <= 1 or len(shard_args) <= 1:
            results = []
            with threadpool_limits(1):   # as in a pool worker: same floats whatever ``workers``
                for args in shard_args:
                    results.append(fn(*args))
                    bar.update()
            return results
        # leaving the block (on an interrupt too) terminates the workers
        with multiprocessing.get_context("spawn").Pool(min(workers, len(shard_args)), _init_worker,
                                                       (os.getpid(),)) as pool:
            pending = [pool.apply_async(fn, args) for args in shard_args]
            results = []
            for job in pending:
                results.append(job.get())
                bar.update()
            return results


# --- where shards write ------------------------------------------------------------------

def is_s3(uri: str | Path) -> bool:
    """True for ``s3://`` and ``s3a://`` URIs."""
    return str(uri).startswith(S3_SCHEMES)


def s3_uri(uri: str | Path) -> str:
    """``uri`` with ``s3a://`` written as ``s3://`` (the form pyarrow's writers take); others unchanged."""
    uri = str(uri)
    return "s3://" + uri[len("s3a://"):] if uri.startswith("s3a://") else uri


def join_uri(base: str | Path, name: str) -> str:
    """``base/name`` for a local directory or an S3 prefix."""
    return f"{s3_uri(base).rstrip('/')}/{name}"


def make_dirs(uri: str) -> None:
    """Create a local directory (and parents); nothing to do on S3, which has no directories."""
    if not is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def part_files(uri: str | Path, pattern: str = "part-*.parquet") -> list[str]:
    """Sorted files directly under a local directory or S3 prefix whose names match ``pattern``."""
    import fnmatch

    if not is_s3(uri):
        return sorted(str(p) for p in Path(uri).glob(pattern))
    import pyarrow.fs as pafs

    from darkhalo.io.dataset import resolve_uri

    fs, prefix = resolve_uri(str(uri))
    infos = fs.get_file_info(pafs.FileSelector(prefix, allow_not_found=True))
    return sorted(join_uri(f"s3://{prefix}", i.base_name) for i in infos
                  if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern))


@contextlib.contextmanager
def shard_output(uri: str | Path, engine: str = "local", workers: int = 1) -> Iterator[str]:
    """Directory URI for shards to write into; ``uri`` holds the complete output only on success.

    Local ``uri``: a temporary sibling directory renamed over ``uri`` on
    success (``outputs.atomic_dir``), as the local engine always did.
    ``s3://`` / ``s3a://`` ``uri``: S3 has no rename, so the prefix must be
    empty; parts are written in place, ``_SUCCESS`` last, and on failure the
    objects written are deleted.  With ``engine: spark`` on a cluster master,
    executors cannot write to the driver's disk: a local ``uri`` fails loudly.
    """
    uri = str(uri)
    if not is_s3(uri):
        if engine == "spark":
            from darkhalo.io.spark import require_local_master

            require_local_master(workers, f"output {uri!r}")
        from darkhalo.core.outputs import atomic_dir

        with atomic_dir(uri) as tmp:
            yield str(tmp)
        return
    import pyarrow.fs as pafs

    from darkhalo.io.dataset import resolve_uri

    fs, prefix = resolve_uri(uri)
    existing = [i for i in fs.get_file_info(pafs.FileSelector(prefix, allow_not_found=True, recursive=True))
                if i.type == pafs.FileType.File]
    if existing:
        raise FileExistsError(f"{uri}: output prefix already holds {len(existing)} object(s) "
                              f"(e.g. {existing[0].path}); remove them or choose another output")
    try:
        yield s3_uri(uri).rstrip("/")
    except BaseException:
        fs.delete_dir_contents(prefix, missing_dir_ok=True)
        raise
    with fs.open_output_stream(f"{prefix}/_SUCCESS"):
        pass

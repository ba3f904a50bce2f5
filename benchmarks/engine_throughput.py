"""Engine throughput: the `survey` and `inject` stages on engine local and on Spark local[2], same rows, as JSON.

Runs the real stages (survey -> split -> inject@<generation>) in a temporary
directory, each one twice: `engine: local` (process pool, `workers` processes)
and `engine: spark` (Spark local[workers] through mapInArrow), checks that the
two engines wrote byte-identical files, and reports stamps/s and per-core
rates (rate / workers).  Spark's JVM start is timed apart; each stage's wall
time includes starting its Python workers (the local pool is spawned per
stage, Spark's workers are reused across stages).  The users' positives are
projected to cluster hours as  positives / (per-core rate on Spark x cores),
i.e. linear scaling from the measured per-core rate, no I/O limit (each task
writes ~100 kB per stamp; on S3 that is far below an executor's bandwidth).
Run from the repository root: python -m benchmarks.engine_throughput [--survey-rows 2000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import yaml  # noqa: E402

from darkhalo.io import spark as dhs_spark
from darkhalo.io.dataset import read_table  # noqa: E402

USERS_POSITIVES = 1_380_000


def timed(fn) -> float:
    """Wall seconds of ``fn()``; what it prints goes to stderr (stdout carries the JSON only)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        fn()
    return time.perf_counter() - start


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey-rows", type=int, default=2000, help="parents simulated (and injected into)")
    parser.add_argument("--shard-rows", type=int, default=250)
    parser.add_argument("--generation", default="gen5p")
    parser.add_argument("--workers", type=int, default=2, help="local pool processes = Spark local[N] cores")
    parser.add_argument("--cluster-cores", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    from stages import inject, split, survey

    base = yaml.safe_load(Path("params.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="engine-throughput-"))
    load_before = os.getloadavg()[0]
    engines = ("local", "spark")
    paths, outputs, walls = {}, {e: work / e for e in engines}, {}
    for engine in engines:
        params = json.loads(json.dumps(base))
        params["survey"].update(n_parents=args.survey_rows, shard_rows=args.shard_rows)
        params["runtime"].update(workers=args.workers, engine=engine)
        paths[engine] = work / f"{engine}.yaml"
        paths[engine].write_text(yaml.safe_dump(params, sort_keys=False))
    spark_start = timed(lambda: dhs_spark.session(args.workers, "engine-throughput"))
    # Interleaved (local, spark) per stage, so both engines see the same machine load.
    for engine in engines:
        out = outputs[engine]
        walls[(engine, "survey")] = timed(lambda: survey.main(
            ["--params", str(paths[engine]), "--out", str(out / "survey"), "--metrics", str(out / "survey.json")]))
    timed(lambda: split.main(["--params", str(paths["local"]), "--survey", str(outputs["local"] / "survey"),
                              "--out", str(work / "assignment.parquet"), "--metrics", str(work / "split.json")]))
    for engine in engines:
        out = outputs[engine]
        walls[(engine, "inject")] = timed(lambda: inject.main(
            ["--generation", args.generation, "--params", str(paths[engine]), "--survey", str(out / "survey"),
             "--split", str(work / "assignment.parquet"), "--out", str(out / "inject"),
             "--metrics", str(out / "inject.json")]))
    injected = read_table(str(outputs["local"] / "inject"), columns=["is_control"])
    positives = int(sum(1 for v in injected.column("is_control").to_pylist() if v == 0))
    rows = {"survey": args.survey_rows, "inject": injected.num_rows}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "workers": args.workers,
                    "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "spark_session_start_s": round(spark_start, 2),
        "inject_generation": args.generation,
        "inject_positives": positives,
    }
    for stage in ("survey", "inject"):
        identical = files_of(outputs["local"] / stage) == files_of(outputs["spark"] / stage)
        entry = {"stamps_written": rows[stage], "identical_files": identical}
        for engine in ("local", "spark"):
            wall = walls[(engine, stage)]
            entry[engine] = {"wall_s": round(wall, 2), "stamps_per_s": round(rows[stage] / wall, 1),
                             "stamps_per_s_per_core": round(rows[stage] / wall / args.workers, 1)}
        result[stage] = entry
    pos_rate_core = positives / walls[("spark", "inject")] / args.workers
    result["inject"]["spark"]["positives_per_s_per_core"] = round(pos_rate_core, 2)
    result["projection_users_positives"] = {
        "positives": USERS_POSITIVES,
        "method": "positives / (measured Spark positives/s per core x cores); linear scaling, controls included",
        "core_hours": round(USERS_POSITIVES / pos_rate_core / 3600, 1),
        "cluster_hours": {str(n): round(USERS_POSITIVES / pos_rate_core / n / 3600, 2) for n in args.cluster_cores},
    }
    shutil.rmtree(work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

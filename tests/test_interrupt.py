"""Interrupted stages leave nothing behind (issue 13): SIGTERM cleans up, a rerun sweeps what SIGKILL left."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from conftest import REPO, tiny_params, write_params
from darkhalo.core.outputs import atomic_dir, atomic_write_bytes, sweep_stale_temps
from stages import survey

SURVEY = {"n_parents": 200, "shard_rows": 20}   # 10 shards on a 2-worker pool
RUNTIME = {"workers": 2}
TIMEOUT_S = 120


def files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies count as ended: nothing may reap an orphan here)."""
    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [proc for proc in procs if alive(proc)]


def wait_until(condition, what: str, timeout_s: float = TIMEOUT_S):
    """Poll ``condition`` until it returns something truthy (returned), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)
    return value


class SurveyProcess:
    """The `survey` stage as DVC runs it (``python -m stages.survey``), in its own session; as a context
    manager, nothing of it outlives the block whatever failed."""

    def __init__(self, root: Path, params: Path):
        self.out, self.stderr = root / "data" / "survey", root / "stderr.txt"
        root.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "stages.survey", "--params", str(params), "--out", str(self.out),
                   "--metrics", str(root / "metrics" / "survey.json")]
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                         env=dict(os.environ, TQDM_DISABLE="1"), start_new_session=True)

    def __enter__(self) -> SurveyProcess:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(ProcessLookupError):   # the group has already ended
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def temps(self) -> list[Path]:
        return sorted(self.out.parent.glob(f"{self.out.name}.tmp-*"))

    def children_once_working(self, min_shards: int = 0) -> list[psutil.Process]:
        """Wait for the temp output, both pool workers and ``min_shards`` shards written into the temp;
        returns the stage's child processes."""
        def started():
            assert self.proc.poll() is None, f"stage ended early: {self.stderr.read_text()}"
            children = psutil.Process(self.proc.pid).children(recursive=True)
            workers = [c for c in children if "--multiprocessing-fork" in c.cmdline()]
            shards = [p for t in self.temps() for p in t.rglob("*.parquet")]
            return children if self.temps() and len(workers) == RUNTIME["workers"] and len(shards) >= min_shards \
                else None
        return wait_until(started, f"the temp output, the pool workers and {min_shards} shards")


def test_sigterm_removes_partial_output_and_stops_workers(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(RUNTIME, **SURVEY))
    with SurveyProcess(tmp_path / "run", params) as run:
        # both workers past their spawn start-up (a signal there interrupts Python's own bootstrap, which
        # prints its own traceback): each has written a shard
        children = run.children_once_working(min_shards=RUNTIME["workers"])
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(TIMEOUT_S) == 128 + signal.SIGTERM
        wait_until(lambda: not running(children), "the workers and the resource tracker to end", 30)
    assert run.stderr.read_text().splitlines() == ["survey: interrupted by SIGTERM; partial outputs removed"]
    assert not run.out.exists() and not list(tmp_path.rglob("*.tmp-*"))


def test_rerun_after_sigkill_sweeps_the_temp_and_matches_an_uninterrupted_run(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params(RUNTIME, **SURVEY))
    with SurveyProcess(tmp_path / "run", params) as run:
        children = run.children_once_working()
        run.proc.kill()
        (temp,) = run.temps()
        written = files(temp)
        assert run.proc.wait(TIMEOUT_S) == -signal.SIGKILL
        wait_until(lambda: not running(children), "the orphaned workers to exit", 60)
    assert files(temp) == written, "an orphaned worker went on writing after its parent died"

    with SurveyProcess(tmp_path / "run", params) as rerun:
        assert rerun.proc.wait(TIMEOUT_S) == 0, rerun.stderr.read_text()
    assert not list(tmp_path.rglob("*.tmp-*"))

    reference = tmp_path / "reference"
    survey.main(["--params", str(params), "--out", str(reference / "data" / "survey"),
                 "--metrics", str(reference / "metrics" / "survey.json")])
    assert files(run.out) == files(reference / "data" / "survey")
    assert (tmp_path / "run" / "metrics" / "survey.json").read_bytes() == \
        (reference / "metrics" / "survey.json").read_bytes()


def test_sweep_takes_only_stale_temps_of_the_same_output(tmp_path):
    stale = [tmp_path / "out.tmp-0123abcd", tmp_path / "out.tmp-deadbeef"]
    stale[0].mkdir()
    (stale[0] / "part-00000.parquet").write_bytes(b"half written")
    stale[1].write_bytes(b"half written")
    kept = ["out", "out.json.tmp-0123abcd", "xout.tmp-0123abcd", "out.tmp-DEADBEEF", "out.tmp-deadbee",
            "out.tmp-deadbeef0", "out.tmp-deadbeef.bak"]
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    with atomic_dir(tmp_path / "out") as live:
        assert not any(p.exists() for p in stale)
        sweep_stale_temps(tmp_path / "out")   # another writer's sweep leaves a live temp alone
        assert live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert (tmp_path / "out").is_dir()


def test_threads_writing_one_file_do_not_sweep_each_other(tmp_path):
    path, errors = tmp_path / "cache" / "entry.fits", []

    def write(k: int) -> None:
        try:
            for _ in range(50):
                atomic_write_bytes(path, bytes([k]) * 1000)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(path.read_bytes())) == 1
    assert [p.name for p in path.parent.iterdir()] == ["entry.fits"]

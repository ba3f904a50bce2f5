"""Writing stage outputs atomically: temp path first, rename on success.

An interrupted stage leaves nothing behind: ``run_stage`` turns SIGTERM into the
KeyboardInterrupt that SIGINT raises, so the cleanup below runs; a temp left by
SIGKILL is swept by the next write of the same output.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

_LIVE_TEMPS: set[str] = set()   # names of the temps this process is writing (threads may share an output)


def sweep_stale_temps(final: str | Path) -> None:
    """Remove the temps ``<name>.tmp-<8 hex>`` of ``final`` that an interrupted writer left.

    Only that exact pattern of this one name is touched, so writers of other
    outputs in the same directory keep their temps, and temps this process is
    still writing are skipped.  Assumes one process writes a given output at a
    time, as DVC runs a stage.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    pattern = re.compile(re.escape(final.name) + r"\.tmp-[0-9a-f]{8}")
    for entry in os.scandir(final.parent):
        if pattern.fullmatch(entry.name) and entry.name not in _LIVE_TEMPS:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


def _new_temp(final: Path) -> Path:
    """A fresh temp path ``<name>.tmp-<8 hex>`` beside ``final`` (stale ones swept first), marked live."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(final)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    _LIVE_TEMPS.add(tmp.name)
    return tmp


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only on success.

    On any exception the temporary directory is removed and ``final`` is left
    as it was, so a failed stage never leaves a partial output behind.
    """
    final = Path(final)
    tmp = _new_temp(final)
    try:
        tmp.mkdir()
        yield tmp
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _LIVE_TEMPS.discard(tmp.name)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = _new_temp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _LIVE_TEMPS.discard(tmp.name)


def _raise_interrupt(signum: int, frame) -> None:
    """Signal handler: raise KeyboardInterrupt naming the signal."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_stage(main: Callable[[], int | None]) -> None:
    """Run a stage's ``main`` as the process entry point (``python -m stages.<name>``).

    SIGTERM raises KeyboardInterrupt as SIGINT does, so temps are removed and
    worker pools terminated on the way out; an interrupted stage then prints
    one line instead of a traceback and exits with 128 + the signal number.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = main()
    except KeyboardInterrupt as exc:
        sig = signal.SIGTERM if str(exc) == signal.SIGTERM.name else signal.SIGINT
        print(f"{Path(sys.argv[0]).stem}: interrupted by {sig.name}; partial outputs removed", file=sys.stderr)
        sys.exit(128 + sig)
    sys.exit(code)


def _rounded(value, digits: int):
    """Floats rounded to ``digits`` significant digits, recursively (NaN -> None)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return _rounded(value.item(), digits)
    return value


def write_json(path: str | Path, data: dict, digits: int = 6) -> None:
    """Atomically write ``data`` as sorted, indented JSON with rounded floats."""
    text = json.dumps(_rounded(data, digits), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))

"""The package layout (issue 15): rooms in forward order, and no long module without a stated reason.

A stamp moves forward core -> io -> physics -> sim -> gates -> ml -> eval -> report
(ARCHITECTURE.md, "Library modules"): a module imports only from its own room or an
earlier one. A module over ``MAX_LINES`` lines says why it is one module in its
docstring, on a line starting with ``REASON``.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from darkhalo.core.stage_deps import imported_modules

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "darkhalo"
ROOMS = ("core", "io", "physics", "sim", "gates", "ml", "eval", "report")
MAX_LINES = 400
REASON = "One module because"


def modules() -> list[Path]:
    """Every .py file of the package (package __init__ included), sorted."""
    return sorted(PACKAGE.rglob("*.py"))


def room_of(module: str) -> str | None:
    """The room of a dotted ``darkhalo...`` module name (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "darkhalo" else None


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_module_lives_in_a_room():
    loose = [relative(p) for p in modules() if p.parent != PACKAGE and p.relative_to(PACKAGE).parts[0] not in ROOMS]
    loose += [relative(p) for p in modules() if p.parent == PACKAGE and p.name != "__init__.py"]
    assert not loose, f"modules outside the rooms {ROOMS}: {loose}"
    assert sorted(d.name for d in PACKAGE.iterdir() if (d / "__init__.py").exists()) == sorted(ROOMS)


def backwards_imports(root: Path) -> list[str]:
    """'<file> imports <module> ...' for every import of a module under ``root``/darkhalo/<room>/ from a later room."""
    found = []
    for path in sorted((root / "darkhalo").rglob("*.py")):
        if path.parent == root / "darkhalo":
            continue
        own = ROOMS.index(path.relative_to(root / "darkhalo").parts[0])
        for module in sorted(imported_modules(path, root)):
            room = room_of(module)
            if room in ROOMS and ROOMS.index(room) > own:
                found.append(f"{path.relative_to(root).as_posix()} imports {module} (room {room} comes after "
                             f"{ROOMS[own]})")
    return found


def test_imports_only_go_to_the_same_or_an_earlier_room():
    backwards = backwards_imports(ROOT)
    assert not backwards, "imports against the room order " + " -> ".join(ROOMS) + ":\n" + "\n".join(backwards)


def test_the_check_finds_relative_and_function_level_imports_from_a_later_room(tmp_path):
    """A planted sim module importing report (relative) and eval (inside a function) is reported twice; its
    imports from its own room and from core are not."""
    for room in ("core", "sim"):
        (tmp_path / "darkhalo" / room).mkdir(parents=True)
    (tmp_path / "darkhalo" / "sim" / "x.py").write_text(
        "from ..report import figures\nfrom darkhalo.core import units\n\n\ndef f():\n"
        "    from darkhalo.eval.compare import compare\n    from . import footprint\n")
    (tmp_path / "darkhalo" / "core" / "y.py").write_text("from darkhalo.core.units import BANDS\n")
    found = backwards_imports(tmp_path)
    assert {line.split()[2] for line in found} == {"darkhalo.report", "darkhalo.report.figures",
                                                   "darkhalo.eval.compare", "darkhalo.eval.compare.compare"}


@pytest.mark.parametrize("path", [p for p in modules() if line_count(p) > MAX_LINES],
                         ids=relative)
def test_a_long_module_states_why_it_is_one_module(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert any(line.strip().startswith(REASON) for line in doc.splitlines()), (
        f"{relative(path)} has {line_count(path)} lines (> {MAX_LINES}): split it along a seam or say why it is "
        f"one module in its docstring, on a line starting {REASON!r}")


def test_stage_start_up_loads_torch_and_healpy_only_where_used():
    """Every stage is a process of its own, so its imports are paid on every run: `data_gates` and `compare` parse the
    train params from the torch-free ml/config.py, and healpy (which loads matplotlib and astropy) is imported inside
    the functions that call it, so importing any stage loads no healpy (~1.5-5 s a stage)."""
    code = ("import importlib, json, pkgutil, sys, stages, stages.data_gates, stages.compare\n"
            "light = sorted({'torch', 'healpy'} & set(sys.modules))\n"
            "for m in pkgutil.iter_modules(stages.__path__): importlib.import_module('stages.' + m.name)\n"
            "print(json.dumps([light, 'healpy' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    light, healpy_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert light == [], f"importing stages.data_gates and stages.compare loads {light}"
    assert not healpy_loaded, "importing the stages loads healpy at module level"

"""Library files each DVC stage imports: the `deps` that dvc.yaml must list.

``stage_library_files("stages/train.py")`` follows every ``darkhalo`` import
(module level and inside functions, transitively) with ``ast`` -- nothing is
executed -- and returns the library files the stage can run.  A test compares
them with dvc.yaml so that editing one module reruns only the stages that use
it. A string constant in a module that names a file or folder beside it (e.g.
``"templates"`` beside ``report/render.py``) is package data the module reads: that path is a dependency too. Editing
it reruns the same stages; ``python -m darkhalo.core.stage_deps`` prints the lists for every stage and
``python -m darkhalo.core.stage_deps --write`` puts them into dvc.yaml.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "darkhalo"


def _module_file(root: Path, module: str) -> Path | None:
    """Path of a ``darkhalo...`` module (package -> its __init__.py), or None if it does not exist."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path) -> set[str]:
    """``darkhalo`` modules imported anywhere in one file, relative imports resolved (``from x import name`` may
    name a submodule: ``x.name`` is listed too). tests/test_layout.py checks the rooms' order with it."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _data_paths(path: Path) -> set[Path]:
    """Files or folders beside a module that one of its string constants names (its package data; a
    subpackage is code, followed through imports instead)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and 0 < len(node.value) < 100 \
                and node.value.isprintable() and "/" not in node.value and not node.value.startswith(".") \
                and not node.value.endswith(".py"):
            candidate = path.parent / node.value
            if candidate.exists() and candidate.name != "__pycache__" and not (candidate / "__init__.py").exists():
                found.add(candidate)
    return found


def _only_docstring(path: Path) -> bool:
    """True for a file (typically a package ``__init__``) holding nothing but a docstring."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def stage_library_files(stage_file: str | Path, root: str | Path = ".") -> list[str]:
    """Sorted library files (relative POSIX paths) reachable by imports from one stage module, with the
    package data (files or folders) those modules name.

    Files holding only a docstring (package ``__init__``s) are left out: editing them cannot
    change an output.
    """
    root = Path(root)
    seen: set[Path] = set()
    todo = [Path(root, stage_file)]
    while todo:
        path = todo.pop()
        for module in imported_modules(path, root):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__ and a/b/__init__
                file = _module_file(root, ".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    data = {d for p in seen for d in _data_paths(p)}
    return sorted(p.relative_to(root).as_posix() for p in seen | data if p.is_dir() or not _only_docstring(p))


def sync_dvc_yaml(path: str | Path = "dvc.yaml", root: str | Path = ".") -> str:
    """dvc.yaml's text with each stage's ``darkhalo/`` deps replaced by the derived list.

    The derived lines go right after the stage's own ``- stages/<module>.py`` dep; other deps,
    comments and layout are kept.
    """
    out: list[str] = []
    stage = None
    for line in Path(path).read_text().splitlines():
        item = line.strip()
        if item.startswith("- darkhalo/"):
            continue
        out.append(line)
        if item.startswith("- stages/") and item.endswith(".py"):
            stage = item[2:]
            indent = line[:line.index("-")]
            out += [f"{indent}- {file}" for file in stage_library_files(stage, root)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print each stage's library files; ``--write`` rewrites dvc.yaml's deps to match."""
    if argv is None:
        argv = sys.argv[1:]
    if argv == ["--write"]:
        Path("dvc.yaml").write_text(sync_dvc_yaml())
        return 0
    for stage in sorted(Path("stages").glob("*.py")):
        if stage.name != "__init__.py":
            print(f"{stage}:")
            for file in stage_library_files(stage):
                print(f"  - {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

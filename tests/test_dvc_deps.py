"""dvc.yaml lists, for every stage, exactly the library files that its module imports, no execution
setting among its params, and one metrics file."""
from __future__ import annotations

from pathlib import Path

import yaml

from darkhalo.core.stage_deps import stage_library_files

ROOT = Path(__file__).resolve().parents[1]


def declared_stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def test_every_stage_lists_the_library_files_it_imports():
    problems = []
    for name, spec in declared_stages().items():
        module = spec["cmd"].split("-m stages.")[1].split()[0]
        declared = sorted(d for d in spec["deps"] if isinstance(d, str) and d.startswith("darkhalo"))
        derived = stage_library_files(f"stages/{module}.py", ROOT)
        missing, extra = sorted(set(derived) - set(declared)), sorted(set(declared) - set(derived))
        if missing or extra:
            problems.append(f"{name}: missing {missing}, not imported {extra}")
    assert not problems, "dvc.yaml deps drift from imports (python -m darkhalo.core.stage_deps):\n" + "\n".join(problems)


def test_derivation_follows_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "darkhalo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""docstring only"""\n')
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("g = 1\n")
    (pkg / "unused.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "s.py").write_text("def main():\n    from darkhalo.sub.a import b\n")
    assert stage_library_files("stages/s.py", tmp_path) == [
        "darkhalo/c.py", "darkhalo/sub/__init__.py", "darkhalo/sub/a.py", "darkhalo/sub/b.py"]


def test_no_stage_lists_an_execution_setting_and_only_the_headline_is_a_metric():
    """``runtime`` is in no stage's params (a whole science section may be listed: none holds an
    execution setting, tests/test_params_strict.py); metrics/summary.json is the only metrics file."""
    problems, metrics = [], []
    for name, spec in declared_stages().items():
        for param in spec.get("params", []):
            key = param if isinstance(param, str) else next(iter(param))
            if key == "runtime" or key.startswith("runtime."):
                problems.append(f"{name}: {key}")
        metrics += [m if isinstance(m, str) else next(iter(m)) for m in spec.get("metrics", [])]
    assert not problems, f"stages list runtime settings (changing them would rerun science): {problems}"
    assert metrics == ["metrics/summary.json"], metrics

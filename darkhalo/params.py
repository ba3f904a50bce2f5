"""Loading and validating params.yaml: bad values fail loudly, naming file and key."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable

import yaml


class ParamError(ValueError):
    """A params file value that is missing, unknown, mistyped or out of range."""


def load_params(path: str | Path = "params.yaml") -> dict:
    """Parsed params file (a mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParamError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def section(params: dict, key: str, path: str | Path) -> dict:
    """``params[key]`` as a mapping, or a ParamError naming the file."""
    value = params.get(key)
    if not isinstance(value, dict):
        raise ParamError(f"{path}: '{key}' must be a mapping of parameters, got {value!r}")
    return value


Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
FRACTION: Rule = (lambda v: 0 <= v <= 1, "must be within [0, 1]")


def build(cls, values: dict, where: str, path: str | Path, rules: dict[str, Rule] | None = None, **extra):
    """Instantiate dataclass ``cls`` from ``values`` with type and range checks.

    ``where`` is the dotted params key (e.g. 'survey') used in messages;
    ``extra`` supplies fields that come from elsewhere (e.g. the global seed).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamError(f"{path}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}")
    kwargs = dict(extra)
    for name, field in fields.items():
        if name in extra:
            continue
        if name not in values:
            if field.default is dataclasses.MISSING:
                raise ParamError(f"{path}: {where}.{name} is required")
            continue
        value, want = values[name], hints[name]
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int) and not isinstance(value, bool) if want is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, want) if isinstance(want, type) else True)
        if not ok:
            raise ParamError(f"{path}: {where}.{name} = {value!r}: must be of type {getattr(want, '__name__', want)}")
        kwargs[name] = float(value) if want is float else value
    for name, (check, message) in (rules or {}).items():
        if name in kwargs and not check(kwargs[name]):
            raise ParamError(f"{path}: {where}.{name} = {kwargs[name]!r}: {message}")
    return cls(**kwargs)

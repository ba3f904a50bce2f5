"""Injection priors: parsing the per-generation prior specs and drawing from them.

A prior spec maps a parameter name to one of
    {grid: [v1, v2, ...]}          discrete values; all grid parameters form a full factorial grid
    {uniform: [lo, hi]}            continuous
    {log_uniform: [lo, hi]}        continuous, uniform in log10
    {normal: [mean, sigma], clip: [lo, hi]}   (clip optional)
    {value: v}                     constant
Each draw picks one grid configuration (``config_id`` indexes the factorial grid
in row-major order of the sorted grid parameter names) and the continuous values.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from darkhalo.core.params import FRACTION, NON_NEGATIVE, POSITIVE, ParamError, Rule

KINDS = ("grid", "uniform", "log_uniform", "normal", "value")
# Physical range of a parameter: every value its prior can draw must satisfy the rule.
BOUNDS: dict[str, Rule] = {
    "theta_e_arcsec": POSITIVE, "src_reff_arcsec": POSITIVE, "src_n_sersic": POSITIVE,
    "src_q": (lambda v: 0 < v <= 1, "must be within (0, 1]"), "shear": NON_NEGATIVE,
    "src_offset_theta_e": NON_NEGATIVE, "src_clump_flux_frac": FRACTION, "clump_sigma_arcsec": POSITIVE,
    "arc_snr_target": POSITIVE,
}


@dataclass(frozen=True)
class Prior:
    """One parameter's prior: ``kind`` in KINDS, its ``args`` and an optional ``clip`` range."""

    name: str
    kind: str
    args: tuple
    clip: tuple | None = None

    def draw(self, rng: np.random.Generator) -> float:
        """One value from a continuous or constant prior (grid priors are drawn by PriorSet)."""
        if self.kind == "uniform":
            value = rng.uniform(*self.args)
        elif self.kind == "log_uniform":
            value = 10 ** rng.uniform(math.log10(self.args[0]), math.log10(self.args[1]))
        elif self.kind == "normal":
            value = rng.normal(*self.args)
        elif self.kind == "value":
            value = self.args[0]
        else:
            raise ValueError(f"prior {self.name}: draw() is not defined for kind {self.kind}")
        if self.clip is not None:
            value = min(max(value, self.clip[0]), self.clip[1])
        return float(value)

    def density(self, x: np.ndarray) -> np.ndarray:
        """Probability density at ``x`` (continuous uniform / log-uniform only)."""
        lo, hi = self.args
        inside = (x >= lo) & (x <= hi)
        if self.kind == "uniform":
            return np.where(inside, 1.0 / (hi - lo), 0.0)
        if self.kind == "log_uniform":
            return np.where(inside, 1.0 / (np.maximum(x, 1e-300) * math.log(hi / lo)), 0.0)
        raise ValueError(f"prior {self.name}: density() needs a uniform or log_uniform prior")

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Cumulative distribution at ``x`` (uniform / log-uniform only)."""
        lo, hi = self.args
        if self.kind == "uniform":
            return np.clip((x - lo) / (hi - lo), 0, 1)
        if self.kind == "log_uniform":
            return np.clip(np.log(np.maximum(x, 1e-300) / lo) / math.log(hi / lo), 0, 1)
        raise ValueError(f"prior {self.name}: cdf() needs a uniform or log_uniform prior")

    @property
    def extremes(self) -> tuple[float, float]:
        """Smallest and largest value a draw can take (grid values are not clipped)."""
        if self.kind in ("grid", "value"):
            return min(self.args), max(self.args)
        lo, hi = (-math.inf, math.inf) if self.kind == "normal" else self.args
        if self.clip is not None:
            lo, hi = (min(max(v, self.clip[0]), self.clip[1]) for v in (lo, hi))
        return lo, hi


def parse_prior(name: str, spec, where: str, allowed: tuple[str, ...] = KINDS) -> Prior:
    """Prior from its params spec, of a kind in ``allowed``; ``where`` (file: key) is named in errors."""
    if not isinstance(spec, dict):
        raise ParamError(f"{where}.{name} = {spec!r}: must be a mapping like {{uniform: [lo, hi]}}")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"clip"})
    if len(kinds) != 1 or extra:
        raise ParamError(f"{where}.{name} = {spec!r}: needs exactly one of {', '.join(KINDS)} (and optional clip)")
    kind = kinds[0]
    if kind not in allowed:
        raise ParamError(f"{where}.{name}: must be {' or '.join(allowed)}")
    args = spec[kind]
    args = tuple(args) if isinstance(args, (list, tuple)) else (args,)
    if not args or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ParamError(f"{where}.{name}.{kind} = {spec[kind]!r}: must be numbers")
    args = tuple(float(a) for a in args)
    expected = {"uniform": 2, "log_uniform": 2, "normal": 2, "value": 1}.get(kind)
    if expected is not None and len(args) != expected:
        raise ParamError(f"{where}.{name}.{kind} = {spec[kind]!r}: needs {expected} number(s)")
    if kind in ("uniform", "log_uniform") and not args[0] < args[1]:
        raise ParamError(f"{where}.{name}.{kind} = {spec[kind]!r}: needs lo < hi")
    if kind == "log_uniform" and args[0] <= 0:
        raise ParamError(f"{where}.{name}.log_uniform = {spec[kind]!r}: needs lo > 0")
    if kind == "normal" and args[1] < 0:
        raise ParamError(f"{where}.{name}.normal = {spec[kind]!r}: sigma must be >= 0")
    if kind == "grid" and len(set(args)) != len(args):
        raise ParamError(f"{where}.{name}.grid = {spec[kind]!r}: repeated values")
    clip = spec.get("clip")
    if clip is not None:
        if not (isinstance(clip, (list, tuple)) and len(clip) == 2 and clip[0] <= clip[1]):
            raise ParamError(f"{where}.{name}.clip = {clip!r}: must be [lo, hi] with lo <= hi")
        clip = (float(clip[0]), float(clip[1]))
    prior = Prior(name, kind, args, clip)
    if name in BOUNDS:
        check, message = BOUNDS[name]
        lo, hi = prior.extremes
        if not (check(lo) and check(hi)):
            raise ParamError(f"{where}.{name} = {spec!r}: draws span [{lo:g}, {hi:g}]; {name} {message}")
    return prior


@dataclass(frozen=True)
class PriorSet:
    """All injection priors of one generation."""

    priors: dict

    @classmethod
    def from_specs(cls, specs: dict, where: str, required: tuple[str, ...] = ()) -> "PriorSet":
        missing = [name for name in required if name not in specs]
        if missing:
            raise ParamError(f"{where}: missing prior(s) {', '.join(missing)}")
        unknown = sorted(set(specs) - set(required)) if required else []
        if unknown:
            raise ParamError(f"{where}: unknown prior(s) {', '.join(unknown)}")
        return cls({name: parse_prior(name, spec, where) for name, spec in sorted(specs.items())})

    @property
    def grid_names(self) -> list[str]:
        return [n for n, p in self.priors.items() if p.kind == "grid"]

    @property
    def grid(self) -> list[tuple]:
        """The factorial grid: one tuple of values per configuration."""
        return list(itertools.product(*(self.priors[n].args for n in self.grid_names)))

    def summary(self) -> dict:
        """What the grid really is: sizes per grid parameter, configuration count, continuous parameters."""
        return {
            "n_grid_configs": len(self.grid),
            "grid_sizes": {n: len(self.priors[n].args) for n in self.grid_names},
            "continuous": sorted(n for n, p in self.priors.items() if p.kind in ("uniform", "log_uniform", "normal")),
        }

    def draw(self, rng: np.random.Generator) -> dict:
        """One draw: every parameter plus ``config_id`` (index into ``grid``)."""
        grid = self.grid
        config_id = int(rng.integers(len(grid)))
        values = dict(zip(self.grid_names, grid[config_id]))
        for name, prior in self.priors.items():
            if prior.kind != "grid":
                values[name] = prior.draw(rng)
        values["config_id"] = config_id
        return values

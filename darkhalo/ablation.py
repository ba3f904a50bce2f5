"""The leave-one-out ablation of the candidate generation, as queued DVC experiments.

``params.yaml: ablation`` maps a variant name to the param overrides that remove one
remediation from Gen5' (e.g. ``no_hard_negatives: {generations.gen5p.train.hard_negative_frac: 0.0}``).
``python -m darkhalo.ablation`` (``make ablation``) queues one ``dvc exp run`` per variant
(``--dry-run`` prints the commands); run them with ``dvc queue start`` and compare with
``dvc exp show --md --keep 'metrics/summary.json'``.  The variants are not part of the default run.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import yaml

from .params import ParamError, load_params, section


def _override(key: str, value) -> str:
    """One ``-S key=value`` argument; mappings and lists in YAML flow style (``{log_uniform: [2, 50]}``)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, (list, dict)):
        return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    return f"{key}={value}"


def queue_commands(params: dict, path: str) -> list[list[str]]:
    """``dvc exp run --queue`` argument lists, one per ablation variant, in params order."""
    variants = section(params, "ablation", path)
    commands = []
    for name, overrides in variants.items():
        if not isinstance(overrides, dict) or not overrides:
            raise ParamError(f"{path}: ablation.{name} must map param keys to values, got {overrides!r}")
        for key in overrides:
            node = params
            for part in key.split(".")[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise ParamError(f"{path}: ablation.{name}: {key!r} is not a key of params.yaml")
                node = node[part]
        args = ["dvc", "exp", "run", "--queue", "-n", f"ablation-{name}"]
        for key, value in overrides.items():
            args += ["-S", _override(key, value)]
        commands.append(args)
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    for command in queue_commands(load_params(args.params), args.params):
        print(shlex.join(command))
        if not args.dry_run:
            subprocess.run(command, check=True)
    if not args.dry_run:
        print("queued; run them with `dvc queue start` (then `dvc exp show`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

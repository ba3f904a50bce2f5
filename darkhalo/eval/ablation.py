"""The leave-one-out ablation of the candidate generation, as queued DVC experiments.

``params.yaml: ablation`` maps a variant name to the param overrides that remove one
remediation from Gen5' (e.g. ``no_hard_negatives: {generations.gen5p.train.hard_negative_frac: 0.0}``).
``python -m darkhalo.eval.ablation`` (``make ablation``) queues one ``dvc exp run`` per variant
(``--dry-run`` prints the commands); run them with ``dvc queue start``.  ``--collect``
(``make ablation-collect``) then writes ``metrics/ablation.json``: per variant, the headline
metrics of its newest experiment beside the full candidate's on the same base commit (read
with ``git show`` from the experiment refs), or ``"not measured"``; the report's "Which
remediation helped" table reads it.  The variants are not part of the default run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import yaml

from darkhalo.core.outputs import write_json
from darkhalo.core.params import ParamError, load_params, section

SUMMARY = "metrics/summary.json"
ABLATION_METRICS = "metrics/ablation.json"
# headline metrics of the candidate that the ablation table shows (keys of metrics/summary.json)
HEADLINE = ("auc", "completeness", "tpr_at_fpr_1e-3", "anchor_recall_tierA", "hard_negative_fpr_all",
            "core_only_auc_model_input", "val_auc")


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


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiment_refs(name: str) -> list[tuple[str, str, int]]:
    """(base commit, experiment commit, unix time) of every DVC experiment called ``name``."""
    found = []
    for line in _git("for-each-ref", "--format=%(refname) %(objectname) %(creatordate:unix)", "refs/exps").splitlines():
        ref, commit, when = line.split()
        parts = ref.split("/")   # refs/exps/<2 hex>/<38 hex>/<name>
        if len(parts) == 5 and parts[4] == name:
            found.append((parts[2] + parts[3], commit, int(when)))
    return found


def collect(params: dict, path: str, candidate: str) -> dict:
    """Per ablation variant: its newest experiment's headline metrics and the full candidate's at the same base."""
    variants = {}
    for name in section(params, "ablation", path):
        refs = experiment_refs(f"ablation-{name}")
        if not refs:
            variants[name] = {"status": "not measured"}
            continue
        base, commit, _ = max(refs, key=lambda r: r[2])
        full = json.loads(_git("show", f"{base}:{SUMMARY}"))[candidate]
        variant = json.loads(_git("show", f"{commit}:{SUMMARY}"))[candidate]
        variants[name] = {"status": "measured", "base_commit": base[:10], "experiment_commit": commit[:10],
                          "metrics": {m: {"full": full[m], "variant": variant[m], "delta": variant[m] - full[m]}
                                      for m in HEADLINE if m in full and m in variant}}
    return {"candidate": candidate, "variants": variants,
            "note": "one training seed per variant: a delta smaller than the Gen5 vs Gen5' bootstrap half-width "
                    "(metrics/summary.json) or the seed spread is not a measured effect"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--collect", action="store_true",
                        help=f"write {ABLATION_METRICS} from the finished ablation experiments instead of queueing")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.collect:
        result = collect(params, args.params, section(params, "compare", args.params)["candidate"])
        write_json(ABLATION_METRICS, result)
        for name, entry in result["variants"].items():
            print(f"{name}: {entry['status']}" + (f" (base {entry['base_commit']})" if "base_commit" in entry else ""))
        return 0
    for command in queue_commands(params, args.params):
        print(shlex.join(command))
        if not args.dry_run:
            subprocess.run(command, check=True)
    if not args.dry_run:
        print("queued; run them with `dvc queue start` (then `dvc exp show`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

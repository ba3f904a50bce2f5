"""The ``runtime:`` params: where and how fast the stages run, never what they compute.

No stage lists ``runtime`` in dvc.yaml, so changing it reruns nothing (tests/test_review_workflow.py).
``workers``, ``engine`` and ``cutout_workers`` leave every output byte-identical: shards are pure
functions of (params, shard index), each written by its own task with torch pinned to one thread,
results gathered in shard order; cutouts are gathered in target order.  ``threads`` and ``device``
are like moving to another machine: the float32 sums of training and scoring may round differently
(the trained weights and the scores then differ in their last bits, not in the science);
``dvc repro -f <stage>`` records a run made with the new setting.

The science configs keep these fields (``SurveyConfig.workers``, ``EngineSettings.device``,
``TrainConfig.threads``, ...), filled from here by their builders.
"""
from __future__ import annotations

from dataclasses import dataclass

from darkhalo.core.params import POSITIVE, ParamError, build

ENGINES = ("local", "spark")        # darkhalo/io/parallel.py runs shards on them
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class Runtime:
    """``runtime:`` in params.yaml (every field optional)."""

    workers: int = 2          # processes of the local engine (Spark: local[workers]): survey, hard_negatives, inject
    engine: str = "local"     # where survey and inject shards run: local (process pool) | spark (mapInArrow)
    threads: int = 2          # torch threads of train and evaluate (inject and anchors: one per process)
    device: str = "cpu"       # torch device of the injection engine (inject, anchors) and of training
    cutout_workers: int = 4   # threads fetching Legacy Survey cutouts (survey targets, galaxy_zoo, anchors cutouts)


RUNTIME_RULES = {
    "workers": POSITIVE, "threads": POSITIVE, "cutout_workers": POSITIVE,
    "engine": (lambda v: v in ENGINES, f"must be one of {', '.join(ENGINES)}"),
    "device": (lambda v: v in DEVICES, f"must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}"),
}


def runtime_config(params: dict, path: str) -> Runtime:
    """Runtime from the ``runtime`` entry of a params mapping (absent: the defaults)."""
    values = params.get("runtime")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParamError(f"{path}: 'runtime' must be a mapping of settings, got {values!r}")
    return build(Runtime, values, "runtime", path, RUNTIME_RULES)

"""DVC stage `data_gates@<generation>`, and the standalone audit of any manifest.

Pipeline (dvc.yaml, one stage per generation)::

    python -m stages.data_gates --generation gen5p

reads ``data/inject/<generation>`` and ``data/split/assignment.parquet``; writes
``metrics/<generation>/data_gates.json`` (every gate's statistic, tolerance,
interval and verdict), ``reports/<generation>/data_gates.md`` and
``data/gates/<generation>/quarantine.parquet`` (task_id, parent_id, reason, ...).

Standalone (any manifest, native or the users' legacy ``stamp_npz`` layout)::

    python -m stages.data_gates --manifest s3://bucket/manifest --out audit/ \
        [--assignment data/split/assignment.parquet] [--metadata-only] [--skip '1.1:lrg_mag_*']

writes ``DIR/data_gates.json``, ``DIR/data_gates.md``, ``DIR/quarantine.parquet``.

Outputs are always written first.  Then one line per failed gate is printed
(``GATE 1.8 FAILED [gen5p] core_flux_ratio_r = 1.310 [...] outside [0.95, 1.05]``);
the exit status is 1 when a gate failed and the run is blocking
(``generations.<g>.gates_blocking``; standalone: always, unless
``--warn-only``), else 0.  DVC keeps the written files in the workspace after
a failed stage, so the report can be read; it does not cache them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from darkhalo.gates.audit import SplitSpec, read_assignment, run_audit
from darkhalo.gates.config import GATE_FAMILIES, gates_config, generation_blocking
from darkhalo.gates.report import failure_line
from darkhalo.gates.suites import DEFAULT_DIR
from darkhalo.core.outputs import run_stage
from darkhalo.core.params import ParamError, load_params, section
from darkhalo.physics.normalize import Normalization
from darkhalo.sim.split import GENERATION_SPLITS, SPLITS, declared_over, split_config
from darkhalo.ml.config import train_config

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--generation", help="generation key in params.yaml (pipeline mode); standalone: a label")
    parser.add_argument("--manifest", help="dataset to audit (local path, s3:// or s3a://); "
                                           "default data/inject/<generation>")
    parser.add_argument("--out", help="standalone mode: directory for data_gates.json, data_gates.md, quarantine.parquet")
    parser.add_argument("--params", default=str(REPO_PARAMS), help="params file with the gates: and split: sections")
    parser.add_argument("--assignment", help="split assignment table (default in pipeline mode: "
                                             "data/split/assignment.parquet; standalone: none)")
    parser.add_argument("--metrics", help="pipeline mode: metrics path (default metrics/<generation>/data_gates.json)")
    parser.add_argument("--report", help="pipeline mode: report path (default reports/<generation>/data_gates.md)")
    parser.add_argument("--quarantine", help="pipeline mode: quarantine path "
                                             "(default data/gates/<generation>/quarantine.parquet)")
    parser.add_argument("--expectations", default=str(DEFAULT_DIR), help="directory of the suite JSON files")
    parser.add_argument("--metadata-only", action="store_true", help="skip every gate that needs pixels")
    parser.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                        help="skip gates whose id or gate number matches (glob; repeatable), e.g. '1.1:lrg_mag_*'")
    parser.add_argument("--warn-only", action="store_true", help="standalone: report failures, exit 0")
    parser.add_argument("--nside", type=int, help="override split.nside (HEALPix NESTED) for the split gates")
    parser.add_argument("--guard-rings", type=int, help="override split.guard_rings")
    parser.add_argument("--fractions", help="override declared train,val,test fractions, e.g. 0.7,0.15,0.15")
    parser.add_argument("--policy", choices=("quarantine", "fail"), help="override gates.row_contract_policy")
    parser.add_argument("--hard-negatives", help="hard negatives trained on, for the brightness-support gate "
                        "(pipeline mode default: data/hard_negatives when hard_negative_frac > 0)")
    parser.add_argument("--model-input", metavar="NAME[:CROP]", help="standalone: also measure gates 1.6/1.8 "
                        "on this model input (e.g. residual:32); pipeline mode: the generation's train.preprocessing")
    args = parser.parse_args(argv)
    if not args.out and not args.generation:
        parser.error("give --generation (pipeline mode) or --manifest and --out (standalone)")
    if args.out and not args.manifest:
        parser.error("--out needs --manifest")
    return args


def model_input_spec(text: str | None) -> Normalization | None:
    """``--model-input NAME[:CROP]`` as a preprocessing spec (None when not given)."""
    if not text:
        return None
    name, _, crop = text.partition(":")
    try:
        return Normalization(name=name, crop_pix=int(crop or 0))
    except ValueError as exc:
        raise ParamError(f"--model-input {text!r}: {exc}") from exc


def split_spec(params: dict, args) -> SplitSpec:
    """Declared split (NSIDE, guard rings, fractions) from params, with command-line overrides."""
    config = split_config(params, args.params)
    declared = dict(zip(SPLITS, map(float, config.fractions)))
    if args.fractions:
        values = [float(v) for v in args.fractions.split(",")]
        if len(values) != 3 or abs(sum(values) - 1) > 1e-6:
            raise ParamError(f"--fractions {args.fractions!r}: need three fractions train,val,test summing to 1")
        declared = dict(zip(SPLITS, values))
    return SplitSpec(args.nside or config.nside,
                     config.guard_rings if args.guard_rings is None else args.guard_rings, declared)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    args = parse_args(argv)
    params = load_params(args.params)
    values = dict(section(params, "gates", args.params))
    if args.policy:
        values["row_contract_policy"] = args.policy
    config = gates_config({**params, "gates": values}, args.params)
    spec = split_spec(params, args)
    if args.out:
        generation = args.generation or Path(args.manifest.rstrip("/")).name
        label, blocking = "standalone audit", () if args.warn_only else GATE_FAMILIES
        out = Path(args.out)
        metrics, report, quarantine = out / "data_gates.json", out / "data_gates.md", out / "quarantine.parquet"
        manifest, assignment_path = args.manifest, args.assignment
        input_spec, hard_negatives = model_input_spec(args.model_input), args.hard_negatives
    else:
        generation = args.generation
        blocking = generation_blocking(params, generation, args.params)
        label = str(params["generations"][generation].get("label", ""))
        manifest = args.manifest or f"data/inject/{generation}"
        assignment_path = args.assignment or "data/split/assignment.parquet"
        metrics = args.metrics or f"metrics/{generation}/data_gates.json"
        report = args.report or f"reports/{generation}/data_gates.md"
        quarantine = args.quarantine or f"data/gates/{generation}/quarantine.parquet"
        spec = SplitSpec(spec.nside, spec.guard_rings, declared_over(spec.declared, GENERATION_SPLITS))
        train = train_config(params, generation, args.params)
        input_spec = train.input_spec
        hard_negatives = (args.hard_negatives or "data/hard_negatives") if train.hard_negative_frac > 0 else None
    assignment = read_assignment(assignment_path) if assignment_path else None
    audit = run_audit(manifest, config, spec, assignment=assignment, generation=generation, label=label,
                      blocking=blocking, metadata_only=args.metadata_only, skip=tuple(args.skip),
                      suites_dir=args.expectations, input_spec=input_spec, hard_negatives=hard_negatives)
    audit.write(metrics, report, quarantine)
    stopping = audit.stopping
    for result in audit.failed:
        line = failure_line(result, generation)
        if not audit.stops(result):
            why = (f"gate family '{result.family}' not blocking" if result.family not in blocking else
                   "raw pixels; the model-input figure blocks")
            line = f"warning ({why}): {line}"
        print(line, file=sys.stderr)
    counts = audit.counts()
    print(f"data_gates [{generation}]: {'PASS' if audit.passed else 'FAIL'} — {counts['fail']} failed, "
          f"{counts['pass']} passed, {counts['skipped']} skipped; report {report}", file=sys.stderr)
    return 1 if stopping else 0


if __name__ == "__main__":
    run_stage(main)

"""DVC stage `report`: the generated remediation report, reports/remediation.md (+ its figures).

Reads the metrics of every stage (metrics/*.json, metrics/<generation>/*.json,
metrics/compare.json), the ROC plot data, the scores tables and the benchmark parts
(galleries), and the generations' injection data (achieved arc S/N); writes
reports/remediation.md (rendered from darkhalo/report/templates/), reports/remediation/*.png and
reports/remediation/sources.json: the file and JSON pointer every number in the markdown was read
from. All inputs are required unless --allow-missing.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from darkhalo.eval.compare import compare_config
from darkhalo.core.outputs import atomic_dir, atomic_write_bytes, run_stage
from darkhalo.core.params import load_params, section
from darkhalo.report.render import FIGURES, SIDECAR, Inputs, Sources, render, report_config
from darkhalo.report.figures import arc_snr_samples, make_figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".", help="repository root holding metrics/, plots/, data/")
    parser.add_argument("--out", default="reports/remediation.md")
    parser.add_argument("--allow-missing", action="store_true", help="report missing inputs instead of failing")
    args = parser.parse_args(argv)
    root = Path(args.root)
    params = load_params(args.params)
    cmp = compare_config(params, args.params)
    config = report_config(params, args.params)
    generations = section(params, "generations", args.params)
    inputs = Inputs(cmp.baseline, cmp.candidate, {g: str(generations[g].get("label", "")) for g in generations},
                    params=os.path.relpath(args.params, root))
    out = Path(args.out)
    src = Sources(root)
    samples = arc_snr_samples(root, inputs, str(root / src.get(inputs.benchmark, "parts", "injections", "path")))
    figures = make_figures(src, inputs, config, root, samples)
    text, sidecar, missing = render(root, inputs, config, figures)
    if missing and not args.allow_missing:
        raise FileNotFoundError("report inputs missing: " + ", ".join(missing))
    with atomic_dir(out.parent / FIGURES) as tmp:
        for name, png in sorted(figures.items()):
            (tmp / name).write_bytes(png)
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n")
    atomic_write_bytes(out, text.encode("utf-8"))
    print(f"report: {out} ({len(text.splitlines())} lines, {len(figures)} figures, "
          f"{len(sidecar['numbers'])} numbers in {FIGURES}/{SIDECAR})")


if __name__ == "__main__":
    run_stage(main)

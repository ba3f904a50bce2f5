"""The pull-request review comment: ``make review BASE=<rev>`` (``python -m darkhalo.report.review --base <rev>``).

Writes ``reports/review.md``, the comment a CI job posts on a pull request
(``.github/workflows/review.yml``: ``cml comment create reports/review.md``):

* the verdict, five lines read from ``metrics/summary.json``: the benchmark, the verdict counts and
  the headline differences (Gen5' − Gen5), each rounded to its own 95% interval;
* ``dvc metrics diff --md <rev>`` (the headline metrics file only) and ``dvc params diff --md <rev>``;
* the report's figures (ROC, completeness, selection function), linked so that CML uploads them, and
  ``dvc plots diff <rev>`` rendered to ``reports/review_plots/index.html`` (both revisions overlaid);
* a one-line provenance footer: this revision, the base and the md5 of ``dvc.lock``.

The default run's detail stays in ``reports/remediation.md``; this is what a reviewer reads first.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from darkhalo.eval.judgement import verdict_lines
from darkhalo.core.outputs import atomic_write_bytes

SUMMARY = "metrics/summary.json"
COMPARE = "metrics/compare.json"   # names the baseline and the candidate
OUT = "reports/review.md"
PLOTS_DIR = "reports/review_plots"
FIGURES = (("ROC", "remediation/roc.png"), ("completeness vs arc S/N", "remediation/completeness.png"),
           ("selection function", "remediation/selection_function.png"))


def _run(tool: str, *args: str) -> str:
    """stdout of ``git <args>`` or ``dvc <args>`` (this interpreter's DVC); a failure ends the review naming it."""
    command = [sys.executable, "-m", "dvc", *args] if tool == "dvc" else [tool, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"review: `{tool} {' '.join(args)}` failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


def build(base: str) -> str:
    """The comment's markdown, comparing the workspace with git revision ``base``."""
    summary = json.loads(Path(SUMMARY).read_text())
    roles = json.loads(Path(COMPARE).read_text())
    head_rev, base_rev = (_run("git", "rev-parse", "--short", rev) for rev in ("HEAD", base))
    metrics = _run("dvc", "metrics", "diff", base, "--md") or "_no headline metric changed_"
    params = _run("dvc", "params", "diff", base, "--md") or "_no param changed_"
    _run("dvc", "plots", "diff", base, "-o", PLOTS_DIR)
    figures = " ".join(f"![{title}]({path})" for title, path in FIGURES if (Path("reports") / path).exists())
    lock = hashlib.md5(Path("dvc.lock").read_bytes()).hexdigest()[:12] if Path("dvc.lock").exists() else "none"
    parts = ["## Lens-finder review", "", *verdict_lines(summary, roles["baseline"], roles["candidate"]), "",
             f"### Headline metrics (`dvc metrics diff {base} --md`)", "", metrics, "",
             f"### Params (`dvc params diff {base} --md`)", "", params, "", "### Figures", "", figures, "",
             f"Both revisions overlaid: `{PLOTS_DIR}/index.html` (`dvc plots diff {base}`). "
             "Every metric with its interval: `reports/remediation.md`.", "",
             f"<sub>revision {head_rev} vs base {base_rev} · dvc.lock md5 {lock}</sub>"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare with (e.g. main, HEAD~1)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    for path in (SUMMARY, COMPARE):
        if not Path(path).exists():
            raise SystemExit(f"review: {path} not found: run `dvc repro` (make repro) first")
    atomic_write_bytes(Path(args.out), build(args.base).encode())
    print(f"review: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

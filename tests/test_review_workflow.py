"""The review workflow on the real dvc.yaml: one tiny `dvc repro` (survey ... report), then the DVC
commands a reviewer runs -- metrics show / diff, plots, status after a param, code or runtime change, a queued
experiment, a second training seed.

The project is built once (shared by every test here, also across pytest-xdist workers, under a file
lock); each test works in its own `git clone` with a copy of the DVC cache, so tests never share a
workspace and nothing upstream is recomputed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DVC, copy_project, init_repo, report_numbers_mismatching, review_params, run_command, write_params

UPSTREAM = {"survey", "survey_gallery", "split", "hard_negatives", "anchors", "inject@gen5", "inject@gen5p",
            "benchmark_injections", "benchmark", "data_gates@gen5", "data_gates@gen5p", "train@gen5", "evaluate@gen5"}
GEN5P_AND_AFTER = {"train@gen5p", "evaluate@gen5p", "compare", "report"}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def build(root: Path) -> None:
    """A git + DVC repository with this project's pipeline and tiny params, reproduced and committed."""
    copy_project(root, review_params())
    init_repo(root, "tiny project")
    output = run_command(DVC + ["repro"], root)
    assert ran_stages(output) == UPSTREAM | GEN5P_AND_AFTER, output[-3000:]     # all 17 stages
    run_command(["git", "add", "-A"], root)
    run_command(["git", "commit", "-qm", "baseline: both generations evaluated, compared, reported"], root)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The reproduced tiny project (built once per session, whichever xdist worker gets here first)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    root, done = shared / "review_project", shared / "review_project.ok"
    with FileLock(str(shared / "review_project.lock")):
        if not done.exists():
            if root.exists():
                shutil.rmtree(root)
            build(root)
            done.write_text("ok")
    return root


@pytest.fixture
def clone(built, tmp_path) -> Path:
    """A private workspace: git clone of the built project plus a copy of its DVC cache, checked out."""
    root = tmp_path / "review"
    run_command(["git", "clone", "-q", str(built), str(root)], tmp_path)
    run_command(["git", "config", "user.email", "ci@example.org"], root)
    run_command(["git", "config", "user.name", "ci"], root)
    shutil.copytree(built / ".dvc" / "cache", root / ".dvc" / "cache")
    run_command(DVC + ["checkout", "-q"], root)
    return root


def set_param(root: Path, dotted: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    *path, last = dotted.split(".")
    for key in path:
        node = node[key]
    node[last] = value
    write_params(root / "params.yaml", params)


def test_metrics_plots_and_report_cover_both_generations(clone):
    assert "Data and pipelines are up to date" in run_command(DVC + ["status"], clone)
    shown = json.loads(run_command(DVC + ["metrics", "show", "--json"], clone))
    data = next(iter(shown.values()))["data"]
    assert sorted(data) == ["metrics/summary.json"]   # the headline; the detail JSONs are plain outs
    summary = data["metrics/summary.json"]["data"]
    assert {"gen5", "gen5p", "difference", "verdict_counts"} <= set(summary) and "auc" in summary["difference"]
    detail = {f"metrics/{gen}/{name}.json": json.loads((clone / "metrics" / gen / f"{name}.json").read_text())
              for gen in ("gen5", "gen5p") for name in ("evaluate", "model_gates", "train", "inject", "data_gates")}
    detail["metrics/compare.json"] = json.loads((clone / "metrics" / "compare.json").read_text())
    assert detail["metrics/gen5/evaluate.json"]["benchmark_sha256"] == \
        detail["metrics/gen5p/evaluate.json"]["benchmark_sha256"] == detail["metrics/compare.json"]["benchmark_sha256"]
    shown = json.loads(run_command(DVC + ["metrics", "show", "--json", "metrics/gen5p/evaluate.json"], clone))
    assert "roc" in next(iter(shown.values()))["data"]["metrics/gen5p/evaluate.json"]["data"]   # any file on request
    compare = detail["metrics/compare.json"]
    assert (compare["baseline"], compare["candidate"]) == ("gen5", "gen5p") and compare["n_metrics"] > 20
    # one plot per curve holding both generations (top-level plots, generations from compare.*)
    plots = json.loads(run_command(DVC + ["plots", "show", "--json"], clone))
    assert not plots.get("errors"), plots.get("errors")
    for plot_id in ("roc", "completeness_theta_e", "completeness_arc_snr"):
        values = plots["data"][plot_id][0]["content"]["data"]["values"]
        assert {"gen5", "gen5p"} <= {v["filename"].split("/")[0] for v in values}, plot_id
    assert "plots/compare/completeness_theta_e_diff.csv" in plots["data"]
    # the report: its numbers are the metrics files' numbers (sidecar), its figures exist
    report = clone / "reports" / "remediation.md"
    n_numbers, bad = report_numbers_mismatching(report, clone)
    assert n_numbers > 200 and not bad, bad[:10]
    text = report.read_text()
    for section in ("## Figures", "## Which remediation helped", "## Priorities", "<b>Data gates</b>",
                    "<b>Model gates</b>", "### Split", "### Anchors", "### Injection priors", "<b>Galleries</b>",
                    "### Are the gate thresholds appropriate?"):
        assert section in text, section
    assert "## Missing inputs" not in text
    for png in re.findall(r"\]\((remediation/[^)]+\.png)\)", text):
        assert (clone / "reports" / png).stat().st_size > 5_000, png
    assert (clone / "reports/remediation/gallery_gen5p_false_positives.png").exists()


def test_repro_wrote_every_stage_output_and_reruns_nothing(clone):
    """The tiny `dvc repro` ran every stage and wrote what a reviewer opens; in a fresh clone with the cache it is
    a no-op (every stage's deps, params and outs are recorded in dvc.lock)."""
    metrics = json.loads((clone / "metrics" / "survey.json").read_text())
    assert metrics["n_parents"] == review_params()["survey"]["n_parents"]
    assert (clone / "plots" / "survey_gallery.png").stat().st_size > 10_000
    benchmark_sha = json.loads((clone / "metrics" / "benchmark.json").read_text())["sha256"]
    for gen in ("gen5", "gen5p"):
        evaluation = json.loads((clone / "metrics" / gen / "evaluate.json").read_text())
        assert evaluation["benchmark_sha256"] == benchmark_sha
        assert (clone / "data" / "models" / gen / "model.pt").exists()
        assert evaluation["selection_function"]["n_cells"] == 36
        assert (clone / "plots" / gen / "selection_function.csv").stat().st_size > 500
    assert (clone / "reports" / "remediation" / "selection_function.png").stat().st_size > 10_000
    assert "Running stage" not in run_command(DVC + ["repro"], clone)
    assert "Data and pipelines are up to date" in run_command(DVC + ["status"], clone)


def test_two_training_seeds_combine_into_compare_intervals(clone):
    """train.seeds = 2: each generation trains and scores a second seed; compare's intervals take in the spread
    (compare.min_units 2: the tiny benchmark's few HEALPix pixels leave every metric unresolvable at 10)."""
    import torch

    exp = run_command(DVC + ["exp", "run", "-S", "train.seeds=2", "-S", "compare.min_units=2"], clone)
    assert "Running stage 'data_gates@gen5p'" not in exp and "Running stage 'train@gen5p'" in exp
    first, second = (torch.load(clone / "data/models/gen5p" / name, weights_only=True)["state_dict"]
                     for name in ("model.pt", "model_seed1.pt"))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert (clone / "data/eval/gen5p/scores_seed1.parquet").exists()
    assert json.loads((clone / "metrics/gen5p/train.json").read_text())["best_val_auc_seed_spread"]["n"] == 2
    spread = json.loads((clone / "metrics/gen5p/evaluate.json").read_text())["seed_spread"]
    assert spread["auc"]["n"] == 2 and len(spread["auc"]["per_seed"]) == 2
    compare = json.loads((clone / "metrics/compare.json").read_text())
    assert compare["n_seeds"] == 2
    combined = [m for m in compare["metrics"].values() if "seed_diffs" in m]
    assert combined
    for m in combined:
        assert len(m["seed_diffs"]) == 2 and m["diff"] == pytest.approx(sum(m["seed_diffs"]) / 2, abs=1e-5)
        assert m["hi"] - m["lo"] >= m["bootstrap_hi"] - m["bootstrap_lo"] - 1e-5   # metrics rounded to 6 digits


def test_gen5p_training_param_reruns_only_gen5p_training_and_after(clone):
    set_param(clone, "generations.gen5p.train.learning_rate", 0.0005)
    stale = set(json.loads(run_command(DVC + ["status", "--json"], clone)))
    assert "train@gen5p" in stale and stale <= GEN5P_AND_AFTER and not stale & UPSTREAM, stale
    output = run_command(DVC + ["repro"], clone)
    assert ran_stages(output) == GEN5P_AND_AFTER, output[-2000:]       # survey, split, injection, gen5: cached
    run_command(["git", "add", "-A"], clone)
    run_command(["git", "commit", "-qm", "gen5p: learning rate 5e-4"], clone)
    diff = run_command(DVC + ["metrics", "diff", "HEAD~1", "--md"], clone)
    assert diff.startswith("| Path") and "| Change" in diff.splitlines()[0]
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in diff.splitlines()[2:] if line.startswith("|")]
    assert {path for path, _ in rows} == {"metrics/summary.json"} and len(rows) < 60, diff   # the headline only
    moved = {metric.split(".")[0] for _, metric in rows}
    assert "gen5p" in moved and "gen5" not in moved, moved
    detail = run_command(DVC + ["metrics", "diff", "HEAD~1", "--md", "--targets", "metrics/gen5p/train.json",
                                "metrics/gen5p/evaluate.json", "metrics/gen5/evaluate.json", "metrics/survey.json"],
                         clone)
    moved = {line.split("|")[1].strip() for line in detail.splitlines()[2:] if line.startswith("|")}
    assert moved == {"metrics/gen5p/train.json", "metrics/gen5p/evaluate.json"}, detail   # details on request
    params = run_command(DVC + ["params", "diff", "HEAD~1", "--md"], clone)
    assert "generations.gen5p.train.learning_rate" in params
    overlay = json.loads(run_command(DVC + ["plots", "diff", "HEAD~1", "--json"], clone))
    revs = {v["rev"] for v in overlay["data"]["roc"][0]["content"]["data"]["values"]}
    assert len(revs) == 2, revs
    # `make review BASE=HEAD~1`: the comment CI posts (verdict, headline diff, params diff, figures, provenance)
    run_command([sys.executable, "-m", "darkhalo.report.review", "--base", "HEAD~1"], clone)
    text = (clone / "reports" / "review.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "## Lens-finder review" and lines[2].startswith("**gen5p vs gen5** on the frozen benchmark")
    assert re.search(r"\n- ROC AUC: [\d.]+ → [\d.]+, [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \*\*", text), text[:800]
    assert "| metrics/summary.json" in text and "generations.gen5p.train.learning_rate" in text
    assert "![ROC](remediation/roc.png)" in text and (clone / "reports" / "review_plots" / "index.html").exists()
    assert re.search(r"<sub>revision \w+ vs base \w+ · dvc.lock md5 [0-9a-f]{12}</sub>", lines[-1]), lines[-1]


def test_queued_gen5p_variant_runs_and_reports_its_metrics(clone):
    out = run_command(DVC + ["exp", "run", "--queue", "-S", "generations.gen5p.train.hard_negative_frac=0.5",
                             "-n", "hnf05"], clone)
    assert "Queued experiment 'hnf05'" in out
    run_command(DVC + ["exp", "run", "--run-all"], clone)
    shown = json.loads(run_command(DVC + ["exp", "show", "--json"], clone))
    exps = [rev for entry in shown for exp in (entry.get("experiments") or []) for rev in exp["revs"]
            if rev.get("name") == "hnf05"]
    assert len(exps) == 1, json.dumps(shown)[:2000]
    data = exps[0]["data"]
    assert data["params"]["params.yaml"]["data"]["generations"]["gen5p"]["train"]["hard_negative_frac"] == 0.5
    assert sorted(data["metrics"]) == ["metrics/summary.json"]
    assert "auc" in data["metrics"]["metrics/summary.json"]["data"]["gen5p"]
    # the detail JSONs are committed in the experiment (cache: false outs)
    train = json.loads(run_command(["git", "show", f"{exps[0]['rev']}:metrics/gen5p/train.json"], clone))
    baseline = json.loads((clone / "metrics" / "gen5p" / "train.json").read_text())
    assert train["hard_negative_share_of_negatives"]["rate"] > baseline["hard_negative_share_of_negatives"]["rate"], \
        (train, baseline)
    diff = run_command(DVC + ["exp", "diff", "HEAD", "hnf05", "--md"], clone)
    assert "metrics/summary.json" in diff and "generations.gen5p.train.hard_negative_frac" in diff
    assert "| gen5." not in diff, diff


def test_runtime_settings_rerun_nothing(clone):
    """Workers, engine, threads, device and cutout threads are in no stage's params: `dvc status` stays
    clean; science keys of a section that stages read key by key still mark exactly their readers."""
    for key, value in (("workers", 2), ("engine", "spark"), ("threads", 2), ("device", "cuda"),
                       ("cutout_workers", 9)):
        set_param(clone, f"runtime.{key}", value)
    assert json.loads(run_command(DVC + ["status", "--json"], clone)) == {}
    assert "Data and pipelines are up to date" in run_command(DVC + ["status"], clone)
    set_param(clone, "inject.acceptance_bins", 30)   # arc-S/N sampling: the injection stages only
    assert set(json.loads(run_command(DVC + ["status", "--json"], clone))) == \
        {"inject@gen5", "inject@gen5p", "benchmark_injections"}
    set_param(clone, "inject.tile_pix", 8)           # rendering: also the anchors and evaluate's arc redraws
    assert set(json.loads(run_command(DVC + ["status", "--json"], clone))) == \
        {"inject@gen5", "inject@gen5p", "benchmark_injections", "anchors", "evaluate@gen5", "evaluate@gen5p"}


def test_report_code_edit_reruns_only_the_report(clone):
    """Per-stage deps: a change to the report's template or rendering code marks `report` alone stale."""
    assert json.loads(run_command(DVC + ["status", "--json"], clone)) == {}
    for edited in ("darkhalo/report/render.py", "darkhalo/report/templates/remediation.md.j2"):
        path = clone / edited
        original = path.read_text()
        path.write_text(original + ("\n# edited\n" if edited.endswith(".py") else "\n{# edited #}\n"))
        assert set(json.loads(run_command(DVC + ["status", "--json"], clone))) == {"report"}, edited
        path.write_text(original)


def test_review_verdict_names_the_roles_and_rounds_each_difference_to_its_interval():
    from darkhalo.eval.judgement import rounded, verdict_lines

    summary = {"benchmark": {"sha256": "abc123def456", "positives": 10, "controls": 10},
               "difference": {"auc": {"value": 0.0977, "lo": 0.0902, "hi": 0.1056, "verdict": "better"}},
               "new": {"auc": 0.7}, "old": {"auc": 0.6}, "verdict_counts": {"better": 1, "worse": 0}}
    lines = verdict_lines(summary, baseline="old", candidate="new")     # roles from compare.json, not key order
    assert lines[0].startswith("**new vs old** on the frozen benchmark `abc123def456` (10 positives, 10 controls")
    assert lines[1] == "- ROC AUC: 0.6 → 0.7, +0.098 [+0.090, +0.106] **better**"
    assert rounded(0.0185, -0.1296, 0.1481) == "+0.02 [-0.13, +0.15]"    # leading digit 1: two digits

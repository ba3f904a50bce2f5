"""compare (Gen5' - Gen5 with paired bootstrap intervals) and the generated report, on constructed score tables.

The score tables are built here (two "generations" scoring one benchmark with known
differences); everything downstream is the real code: evaluation.summarise / model_gates
write the evaluate metrics, compare.compare the comparison, report.Report the markdown.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, report_numbers_mismatching
from darkhalo.core import metrics as M
from darkhalo.eval.compare import CompareConfig, compare, compare_config
from darkhalo.eval.compare_rows import BenchmarkMismatch, generation
from darkhalo.eval.judgement import conclusion, rounded, settled
from darkhalo.eval.evaluation import EvaluateConfig, model_gates, summarise
from darkhalo.core.outputs import write_json
from darkhalo.core.params import ParamError
from darkhalo.report.render import Inputs, ReportConfig, Sources, render, report_config
from darkhalo.report.figures import make_figures

N_PIX, PARENTS_PER_PIX, N_HN, N_ANCHOR = 40, 10, 60, 40
SHA = "ab" * 32


def benchmark() -> dict:
    """One benchmark: per parent a positive and its control (same HEALPix pixel), hard negatives, anchors."""
    rng = np.random.default_rng(7)
    n_par = N_PIX * PARENTS_PER_PIX
    parent = np.arange(n_par)
    pix = 1000 + parent // PARENTS_PER_PIX
    theta = rng.uniform(0.3, 3.0, n_par)
    snr = np.exp(rng.uniform(0, np.log(100), n_par))
    inj = {"part": ["injection"] * (2 * n_par), "label": np.tile([1, 0], n_par).astype(np.int8),
           "task_id": (2 * np.repeat(parent, 2) + np.tile([1, 0], n_par)).astype(np.int64),
           "parent_id": np.repeat(parent, 2).astype(np.int64), "healpix_pixel": np.repeat(pix, 2).astype(np.int64),
           "theta_e_arcsec": np.repeat(theta, 2), "arc_snr": np.repeat(snr, 2),
           "src_mag_r": np.repeat(rng.uniform(21, 27, n_par), 2),
           "arc_snr_core": np.repeat(rng.uniform(0.0, 10.0, n_par), 2), "group": [None] * (2 * n_par)}
    hn = {"part": ["hard_negative"] * N_HN, "label": np.zeros(N_HN, np.int8), "parent_id": 2**40 + np.arange(N_HN),
          "group": [["ring", "spiral", "merger"][k % 3] for k in range(N_HN)]}
    anchors = {"part": ["anchor"] * N_ANCHOR, "label": np.ones(N_ANCHOR, np.int8),
               "parent_id": 2**41 + np.arange(N_ANCHOR), "group": [["slacs:tierA", "slacs:tierB"][k % 2]
                                                                   for k in range(N_ANCHOR)]}
    return {"inj": inj, "hn": hn, "anchors": anchors, "n_par": n_par}


def scores_table(bench: dict, seed: int, signal: float, hn_level: float, small_theta_penalty: float) -> pa.Table:
    """A generation's scores: positives separated by ``signal`` (minus a penalty for theta_E < 0.6"),
    hard negatives centred at ``hn_level``, anchors like positives."""
    rng = np.random.default_rng(seed)
    inj, hn, anc = bench["inj"], bench["hn"], bench["anchors"]
    pos = inj["label"] == 1
    logit = rng.normal(-2.0, 1.0, pos.size) + pos * (signal - small_theta_penalty * (inj["theta_e_arcsec"] < 0.6))
    score = 1 / (1 + np.exp(-logit))
    suppressed = np.where(pos, 1 / (1 + np.exp(-rng.normal(-2.0, 1.0, pos.size))), np.nan)
    masked = 1 / (1 + np.exp(-(logit - 0.1 * pos)))
    rows_inj = {**{k: v for k, v in inj.items() if k != "group"}, "group": pa.array([None] * pos.size, pa.string()),
                "score": score.astype(np.float32), "score_arc_suppressed": suppressed,
                "arc_snr_core": np.where(pos, inj["arc_snr_core"], np.nan),
                "score_mask_0.5theta_e": masked.astype(np.float32),
                "score_mask_8pix": (masked * 0.9).astype(np.float32)}
    rows_hn = {**hn, "score": (1 / (1 + np.exp(-rng.normal(hn_level, 1.0, N_HN)))).astype(np.float32)}
    rows_anc = {**anc, "score": (1 / (1 + np.exp(-rng.normal(-2.0 + signal, 1.0, N_ANCHOR)))).astype(np.float32)}
    tables = [pa.table(rows_inj), pa.table(rows_hn), pa.table(rows_anc)]
    return pa.concat_tables(tables, promote_options="default")


def write_generation(root: Path, name: str, table: pa.Table, sha: str = SHA) -> dict:
    """evaluate@<name>'s files from a scores table: threshold at 5% of the controls, real summarise/model_gates."""
    config = EvaluateConfig()
    ctrl = (np.array(table.column("part").to_pylist()) == "injection") & (table.column("label").to_numpy() == 0)
    threshold = float(np.quantile(table.column("score").to_numpy()[ctrl], 0.95))
    summary = summarise(table, threshold, config)
    summary.update(generation=name, benchmark_sha256=sha)
    write_json(root / f"metrics/{name}/evaluate.json", summary)
    gates = model_gates(table, threshold, config)
    write_json(root / f"metrics/{name}/model_gates.json", {"generation": name, "gates": gates, "benchmark_sha256": sha,
                                                          "all_passed": all(g["passed"] for g in gates)})
    (root / f"data/eval/{name}").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / f"data/eval/{name}/scores.parquet")
    return json.loads((root / f"metrics/{name}/evaluate.json").read_text())


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory):
    """A root holding both generations' evaluate outputs: gen5p separates better and rejects hard negatives,
    but misses small Einstein radii (a planted regression the report must not hide)."""
    root = tmp_path_factory.mktemp("compare")
    bench = benchmark()
    a = scores_table(bench, 1, signal=1.5, hn_level=0.5, small_theta_penalty=0.0)
    b = scores_table(bench, 2, signal=3.5, hn_level=-3.0, small_theta_penalty=6.0)
    sa, sb = write_generation(root, "gen5", a), write_generation(root, "gen5p", b)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["compare"].update(n_bootstrap=300)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, (a, sa), (b, sb), params


def generations(two):
    root, (a, sa), (b, sb), _ = two
    return (generation("gen5", a, sa, str(root / "metrics/gen5/evaluate.json")),
            generation("gen5p", b, sb, str(root / "metrics/gen5p/evaluate.json")))


def config(**kw) -> CompareConfig:
    return CompareConfig(**{"seed": 11, "n_bootstrap": 300, **kw})


def test_paired_comparison_values_intervals_and_verdicts(two_generations):
    ga, gb = generations(two_generations)
    result = compare(ga, gb, config(), 10)
    m = result["metrics"]
    assert result["benchmark_sha256"] == SHA and result["baseline"] == "gen5" and result["candidate"] == "gen5p"
    # full-benchmark values are the metrics.py numbers (and, checked inside compare, evaluate.json's)
    _, (a, _), (b, _), _ = two_generations
    roc = np.isin(np.array(a.column("part").to_pylist()), ["injection", "hard_negative"])
    labels = a.column("label").to_numpy()[roc]
    assert m["auc"]["baseline"] == pytest.approx(M.roc_auc(labels, a.column("score").to_numpy()[roc]), abs=1e-12)
    assert m["auc"]["candidate"] == pytest.approx(M.roc_auc(labels, b.column("score").to_numpy()[roc]), abs=1e-12)
    for name in ("auc", "tpr_at_fpr_1e-2", "hard_negative_fpr_all", "hard_negative_fpr_ring", "anchor_recall_all"):
        assert m[name]["lo"] <= m[name]["diff"] <= m[name]["hi"], (name, m[name])
        assert m[name]["verdict"] == "better", (name, m[name])
    # the planted regression: gen5p misses theta_E < 0.6"
    assert m["completeness_theta_e_0.3-0.6"]["verdict"] == "worse", m["completeness_theta_e_0.3-0.6"]
    assert "completeness_theta_e_0.3-0.6" in result["verdicts"]["worse"]
    # TPR at 1e-3 needs 1000 negatives; 460 here
    assert m["tpr_at_fpr_1e-3"]["verdict"] == "not resolvable"
    # resampling units: HEALPix pixels for injections, single rows for hard negatives and anchors
    assert result["bootstrap"]["n_units"] == N_PIX + N_HN + N_ANCHOR
    assert m["completeness"]["n_units"] == N_PIX and m["hard_negative_fpr_all"]["n_units"] == N_HN
    assert sum(result["verdict_counts"].values()) == result["n_metrics"] == len(result["order"])
    # deterministic for a seed; another seed moves the interval, not the values
    again = compare(ga, gb, config(), 10)
    assert again["metrics"]["auc"] == m["auc"]
    other = compare(ga, gb, config(seed=12), 10)["metrics"]["auc"]
    assert other["diff"] == m["auc"]["diff"] and other["lo"] != m["auc"]["lo"]


def test_few_resampling_units_give_no_verdict(two_generations):
    ga, gb = generations(two_generations)
    result = compare(ga, gb, config(min_units=N_PIX + 1), 10)
    assert result["metrics"]["completeness"]["verdict"] == "not resolvable"
    assert "resampling units" in result["metrics"]["completeness"]["reason"]
    assert result["metrics"]["hard_negative_fpr_all"]["verdict"] == "better"   # 60 rows >= 41


def test_refuses_different_benchmarks_naming_both_hashes(two_generations):
    ga, gb = generations(two_generations)
    other = "cd" * 32
    gb.summary = {**gb.summary, "benchmark_sha256": other}
    with pytest.raises(BenchmarkMismatch, match=f"gen5: benchmark_sha256 {SHA}.*gen5p: benchmark_sha256 {other}"):
        compare(ga, gb, config(), 10)


def test_refuses_tables_with_different_rows(two_generations):
    root, (a, sa), (b, sb), _ = two_generations
    ga = generation("gen5", a, sa)
    gb = generation("gen5p", b.slice(1), sb)
    with pytest.raises(BenchmarkMismatch, match="different benchmark rows: 1 only in gen5, 0 only in gen5p"):
        compare(ga, gb, config(), 10)
    theta = b.column("theta_e_arcsec").to_numpy(zero_copy_only=False).copy()
    theta[0] += 0.1
    moved = b.set_column(b.schema.get_field_index("theta_e_arcsec"), "theta_e_arcsec", pa.array(theta))
    with pytest.raises(BenchmarkMismatch, match="disagree on column 'theta_e_arcsec'"):
        compare(ga, generation("gen5p", moved, sb), config(), 10)


def test_refuses_scores_that_disagree_with_their_evaluate_metrics(two_generations):
    ga, gb = generations(two_generations)
    gb.summary = {**gb.summary, "operating_threshold": gb.summary["operating_threshold"] * 0.5}
    with pytest.raises(ValueError, match="disagree"):
        compare(ga, gb, config(), 10)


def test_compare_params_are_checked(two_generations):
    _, _, _, params = two_generations
    bad = {**params, "compare": {**params["compare"], "candidate": "gen6"}}
    with pytest.raises(ParamError, match="compare.candidate = 'gen6': not a generation"):
        compare_config(bad, "params.yaml")
    same = {**params, "compare": {**params["compare"], "candidate": "gen5"}}
    with pytest.raises(ParamError, match="both 'gen5'"):
        compare_config(same, "params.yaml")


def inject_metrics(n_grid: int, grid_sizes: dict, target: bool) -> dict:
    """An inject metrics document with the fields the report reads (values arbitrary but consistent)."""
    doc = {"priors": {"n_grid_configs": n_grid, "grid_sizes": grid_sizes},
           "theta_e_arcsec": {"p5": 0.3, "p50": 0.6, "p95": 1.0 if not target else 1.6},
           "arc_snr": {"p5": 43.3 if not target else 2.4, "p50": 120.0 if not target else 11.0, "p95": 900.0},
           "task_acceptance": {"rate": 1.0, "lo": 0.99, "hi": 1.0, "k": 100, "n": 100}}
    if target:
        doc["arc_snr_target"] = {"kind": "log_uniform", "lo": 2.0, "hi": 50.0, "ks_distance_achieved_vs_target": 0.03,
                                 "candidate_acceptance": {"rate": 0.12, "lo": 0.11, "hi": 0.13, "k": 12, "n": 100}}
    return doc


def test_stage_and_report_numbers_equal_the_metrics_files(two_generations, tmp_path):
    from stages import compare as compare_stage

    root, _, _, params = two_generations
    write_json(root / "metrics/gen5/inject.json", inject_metrics(12, {"theta_e_arcsec": 3, "src_dmag": 2,
                                                                     "src_reff_arcsec": 2}, False))
    write_json(root / "metrics/gen5p/inject.json", inject_metrics(288, {"theta_e_arcsec": 6, "src_dmag": 12,
                                                                       "src_reff_arcsec": 4}, True))
    compare_stage.main(["--params", str(root / "params.yaml"), "--root", str(root),
                        "--out", str(root / "metrics/compare.json"), "--plots-dir", str(root / "plots/compare")])
    doc = json.loads((root / "metrics/compare.json").read_text())
    assert doc["metrics"]["auc"]["verdict"] == "better"
    summary = json.loads((root / "metrics/summary.json").read_text())      # beside --out, never the repo's
    assert summary["difference"]["auc"]["verdict"] == "better" and summary["gen5p"]["auc"] == pytest.approx(
        doc["metrics"]["auc"]["candidate"], rel=1e-3)
    bench = summary["benchmark"]                  # what the numbers rest on: the frozen benchmark's hash and size
    assert len(bench["sha256"]) == 12 and bench["positives"] > 0 and bench["controls"] > 0
    assert (root / "plots/compare/completeness_theta_e_diff.csv").read_text().startswith('"theta_e"')
    assert '"metric","diff","lo","hi","verdict"' in (root / "plots/compare/metric_diffs.csv").read_text()
    inputs = Inputs("gen5", "gen5p", {"gen5": "Gen5", "gen5p": "Gen5'"})
    figures = make_figures(Sources(root), inputs, report_config(params, "params.yaml"), root, galleries=False)
    assert {"completeness.png", "completeness_diff.png"} <= set(figures)
    text, sidecar, missing = render(root, inputs, report_config(params, "params.yaml"), figures)
    (root / "reports/remediation").mkdir(parents=True, exist_ok=True)
    (root / "reports/remediation.md").write_text(text)
    (root / "reports/remediation/sources.json").write_text(json.dumps(sidecar))
    n_numbers, bad = report_numbers_mismatching(root / "reports/remediation.md", root)
    assert n_numbers > 300 and not bad, bad[:10]
    lines = text.splitlines()
    # a review, not a wall: the five-line verdict first, then the headline table rounded to its intervals
    assert lines[0] == "# Gen5 remediation report" and lines[2:7] == doc["judgement"]["verdict"]
    assert lines[2].startswith("**gen5p vs gen5** on the frozen benchmark") and SHA not in "".join(lines[:8])
    auc = doc["metrics"]["auc"]
    row = next(line for line in lines if line.startswith(f"| {auc['title']} |"))
    assert rounded(auc["diff"], auc["lo"], auc["hi"]) in row and text.index(row) < text.index("<details>")
    assert max(len(line) for line in lines) < 1000 and "](../" not in text      # no value links, no wall lines
    assert "<summary><b>Every compared metric</b>" in text and "<summary><b>Data gates</b>" in text
    assert lines[-1].startswith("<sub>Generated by `dvc repro report`") and "dvc.lock md5 none" in lines[-1]
    # not written to flatter: the planted regression is named as worse, with its interval
    worse = doc["metrics"]["completeness_theta_e_0.3-0.6"]
    assert any(worse["title"] in line for line in doc["judgement"]["priorities"])
    assert "**gen5p is worse than gen5** on:" in text and worse["title"] in text.split("**gen5p is worse")[1]
    # the users' hand-written grid size (params compare.claimed_n_grid_configs) is checked against the real one
    assert doc["judgement"]["grid_claims"]["gen5p"] == {"claimed": 180, "actual": 288, "correct": False}
    assert doc["judgement"]["grid_claims"]["gen5"]["correct"]
    claim = next(line for line in lines if "grid size for gen5p is wrong" in line)
    assert "it states 180 configurations; the grid actually run has 288" in claim
    # absent inputs are listed, not silently skipped
    assert "## Missing inputs" in text and "`metrics/split.json`" in text
    assert set(missing) >= {"metrics/split.json", "metrics/gen5/data_gates.json"}


def test_judgement_rules_land_in_compare_json_without_changing_a_number(two_generations, tmp_path):
    """The judgement is an added key: every other key of compare.json is compare()'s output as it was."""
    root, _, _, params = two_generations
    ga, gb = generations(two_generations)
    n_bins = json.loads((root / "metrics/gen5/evaluate.json").read_text())["calibration"]["n_bins"]
    from stages import compare as compare_stage

    compare_stage.main(["--params", str(root / "params.yaml"), "--root", str(root),
                        "--out", str(root / "metrics/compare.json"), "--plots-dir", str(root / "plots/compare")])
    doc = json.loads((root / "metrics/compare.json").read_text())
    judgement = doc.pop("judgement")
    write_json(tmp_path / "direct.json", compare(ga, gb, compare_config(params, "params.yaml"), n_bins))
    assert doc == json.loads((tmp_path / "direct.json").read_text())
    assert [r["conclusion"] for r in judgement["remediations"]][0] == "helped"    # hard negatives: planted better
    assert judgement["centre_mask"]["gen5p"]["mask"] == "0.5theta_e"
    assert conclusion({"better": 1, "worse": 1, "not distinguishable": 0, "not resolvable": 0}).startswith("mixed")
    assert settled({"n": 100, "lo": 0.03, "hi": 0.05}, 0.02).endswith("a clear failure.")
    assert settled({"n": 100, "lo": 0.01, "hi": 0.03}, 0.02).startswith("The interval straddles")


def test_report_config_checks_its_params():
    with pytest.raises(ParamError, match=r"report.gallery_n = 0"):
        report_config({"report": {"gallery_n": 0}}, "params.yaml")
    with pytest.raises(ParamError, match="report: unknown key .anchor_max_interval_width."):   # a compare (judgement) param now
        report_config({"report": {"anchor_max_interval_width": 0.2}}, "params.yaml")
    assert ReportConfig().gallery_n == 12


def test_threshold_rounded_in_evaluate_json_is_resolved_from_the_recorded_counts(two_generations, tmp_path):
    _, (a, _), _, _ = two_generations
    part, label = np.array(a.column("part").to_pylist()), a.column("label").to_numpy()
    scores = a.column("score").to_numpy().copy()
    ctrl = np.flatnonzero((part == "injection") & (label == 0))
    exact = float(np.float32(0.73456751))              # written to 6 digits as 0.734568: above the exact value
    scores[ctrl[:3]] = exact
    table = a.set_column(a.schema.get_field_index("score"), "score", pa.array(scores))
    config_ = EvaluateConfig()
    summary = summarise(table, exact, config_)
    summary.update(generation="gen5", benchmark_sha256=SHA)
    write_json(tmp_path / "evaluate.json", summary)
    recorded = json.loads((tmp_path / "evaluate.json").read_text())
    assert recorded["operating_threshold"] == 0.734568 > exact
    ga = generation("gen5", table, recorded)
    gb = generation("gen5p", table, recorded)
    result = compare(ga, gb, config(n_bootstrap=20), 10)
    assert ga.threshold == exact and result["operating_threshold"]["gen5"] == exact
    assert result["metrics"]["gate_1_3_fraction_above"]["baseline"] == pytest.approx(
        summary["gate_1_3_null_injection"]["fraction_above"]["rate"], abs=1e-12)

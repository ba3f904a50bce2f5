"""Gate results -> one-line verdicts, the metrics JSON entries and the markdown report."""
from __future__ import annotations

import math

from darkhalo.core.stats import wilson_interval
from darkhalo.gates.validate import GateResult

MODEL_INPUT_GATES = ("1.6", "1.8")   # measured on raw pixels and on the model input; the model input blocks

UNITS = {"schema": "columns", "pixels": "HEALPix pixels", "parents": "parents", "pairs": "pairs",
         "fractions": "splits", "split_values": "distinct values"}
MAP_KINDS = ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between",
             "expect_column_values_to_be_unique", "expect_column_values_to_be_null",
             "expect_column_values_to_not_be_null")

FAMILY_NOTES = {
    "1.1": "Quality columns (seeing, depth, masking, extinction, lens magnitudes) must have the same distribution "
           "for positives and controls, or a model can separate the classes by observing conditions.",
    "1.5": "The statistics the robust normalisation uses (outer median, outer 1.4826·MAD, clip fraction) must not "
           "differ between classes, or every normalised pixel carries the label.",
    "1.6": "A logistic regression that sees only the central r < k px must not tell positives from controls "
           "(held-out AUC near 0.5); otherwise a network can learn 'bright core' instead of arcs (docs/domain.md). "
           "Measured on the raw pixels and on the model input (`input_core_only_auc`, which blocks).",
    "1.8": "Mean core flux of positives over controls: injected light overlapping the lens core makes positives "
           "brighter there, a shortcut that passes as 'lens'. On the model input (`input_core_rms_ratio`, which "
           "blocks) the ratio of mean core RMS: a residual input has zero core mean by construction.",
    "brightness": "Brightness support: at most a set fraction of the hard negatives may be brighter (feature S/N) "
                  "than the positives' 95th-percentile arc S/N, or the model learns 'bright arc-like structure = "
                  "not a lens'.",
    "1.2": "Every stamp has g, r and z, finite pixels and the declared shape.",
    "1.4": "Every stamp has a usable noise estimate per band.",
    "split": "HEALPix region-disjoint splits: no pixel in two splits, guard band honoured, pairs together, "
             "declared fractions met.",
    "contract": "Schema, identifiers, value ranges of injection physics, controls without injection.",
}


def _fmt(x, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "nan"
    return format(x, spec)


def summary(result: GateResult) -> dict:
    """{'statistic': {...}, 'tolerance': {...}, 'interval': {...}} of a result (for JSON and tables)."""
    kw, obs = result.kwargs, result.observed
    value = obs.get("observed_value")
    kind = result.kind
    if kind == "expect_column_two_group_effect_sizes_to_be_within" and isinstance(value, dict):
        return {"statistic": {"ks_d": value["ks_d"], "smd": value["smd"], "mean_positive": value["mean_positive"],
                              "mean_control": value["mean_control"]},
                "tolerance": {"max_ks_d": kw["max_ks_d"], "max_abs_smd": kw["max_abs_smd"]},
                "interval": {"smd_ci95": value["smd_ci95"], "ks_d_null95": value["ks_d_null95"],
                             "smd_null95": value["smd_null95"]},
                "n": {"positive": value["n_positive"], "control": value["n_control"],
                      "nonfinite": value["n_nonfinite"]},
                "resolution_limited": value["resolution_limited"]}
    if kind == "expect_column_roc_auc_to_be_between" and isinstance(value, dict):
        return {"statistic": {"auc": value["auc"]}, "tolerance": {"min": kw["min_value"], "max": kw["max_value"]},
                "interval": {"auc_ci95": value["auc_ci95"], "auc_null95": value["auc_null95"]},
                "n": {"positive": value["n_positive"], "control": value["n_control"]},
                "resolution_limited": value["resolution_limited"]}
    if kind == "expect_column_group_mean_ratio_to_be_between" and isinstance(value, dict):
        return {"statistic": {"ratio": value["ratio"], "mean_positive": value["mean_positive"],
                              "mean_control": value["mean_control"]},
                "tolerance": {"min": kw["min_value"], "max": kw["max_value"]},
                "interval": {"ratio_ci95": value["ratio_ci95"]},
                "n": {"positive": value["n_positive"], "control": value["n_control"]}}
    if kind in MAP_KINDS and "element_count" in obs:
        n, k = int(obs["element_count"]), int(obs.get("unexpected_count") or 0)
        lo, hi = map(float, wilson_interval(k, n))
        allowed = 1.0 - float(kw.get("mostly", 1.0))
        return {"statistic": {"unexpected_count": k, "element_count": n, "unexpected_frac": k / n if n else 0.0},
                "tolerance": {"max_unexpected_frac": allowed}, "interval": {"unexpected_frac_ci95": [lo, hi]}}
    if kind in ("expect_column_mean_to_be_between", "expect_column_max_to_be_between") and value is not None:
        return {"statistic": {"value": value}, "tolerance": {"min": kw.get("min_value"), "max": kw.get("max_value")},
                "interval": {}}
    return {"statistic": {}, "tolerance": {}, "interval": {}}


def describe(result: GateResult) -> str:
    """The statistic phrase of a result, e.g. 'core_flux_ratio_r = 1.31 [1.25, 1.37] outside [0.95, 1.05]'."""
    if result.reason:
        return f"{result.check}: {result.reason}"
    s = summary(result)
    stat, tol, ci = s["statistic"], s["tolerance"], s["interval"]
    where = "within" if result.verdict == "pass" else "outside"
    kind = result.kind
    limited = " — resolution-limited: this sample cannot resolve the tolerance" if s.get("resolution_limited") else ""
    if kind == "expect_column_two_group_effect_sizes_to_be_within" and stat:
        lo, hi = ci["smd_ci95"]
        return (f"{result.check}: KS D = {_fmt(stat['ks_d'], '.3f')} (max {_fmt(tol['max_ks_d'], 'g')}, "
                f"null 95% level {_fmt(ci['ks_d_null95'], '.3f')}), SMD = {_fmt(stat['smd'], '+.3f')} "
                f"[{_fmt(lo, '+.3f')}, {_fmt(hi, '+.3f')}] (max |SMD| {_fmt(tol['max_abs_smd'], 'g')}, "
                f"null 95% level {_fmt(ci['smd_null95'], '.3f')}); "
                f"n = {s['n']['positive']} positives / {s['n']['control']} controls{limited}")
    if kind == "expect_column_roc_auc_to_be_between" and stat:
        lo, hi = ci["auc_ci95"]
        return (f"{result.check} = {_fmt(stat['auc'], '.3f')} [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}] {where} "
                f"[{_fmt(tol['min'], 'g')}, {_fmt(tol['max'], 'g')}] (held-out, null 95% level "
                f"0.5 ± {_fmt(ci['auc_null95'], '.3f')}, n = {s['n']['positive']} positives / "
                f"{s['n']['control']} controls){limited}")
    if kind == "expect_column_group_mean_ratio_to_be_between" and stat:
        lo, hi = ci["ratio_ci95"]
        return (f"{result.check} = {_fmt(stat['ratio'], '.3f')} [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}] {where} "
                f"[{_fmt(tol['min'], 'g')}, {_fmt(tol['max'], 'g')}]")
    if kind in MAP_KINDS and stat:
        lo, hi = ci["unexpected_frac_ci95"]
        unit = UNITS.get(result.table, "rows")
        text = (f"{result.check}: {stat['unexpected_count']} of {stat['element_count']} {unit} violate it "
                f"({stat['unexpected_frac']:.2%} [{lo:.2%}, {hi:.2%}], allowed {tol['max_unexpected_frac']:.2%})")
    elif kind in ("expect_column_mean_to_be_between", "expect_column_max_to_be_between") and stat:
        text = (f"{result.check} = {_fmt(stat['value'], '.4g')} {where} "
                f"[{_fmt(tol['min'], 'g')}, {_fmt(tol['max'], 'g')}]")
    else:
        text = f"{result.check}: {result.verdict}"
    if result.examples and result.verdict != "pass":
        text += "; e.g. " + " | ".join(result.examples[:3])
    return text


def failure_line(result: GateResult, generation: str) -> str:
    """'GATE <gate> FAILED [<generation>] <statistic phrase>'."""
    return f"GATE {result.gate} FAILED [{generation}] {describe(result)}"


def gate_entry(result: GateResult) -> dict:
    """The metrics-JSON entry of one result: statistic, tolerance, interval, verdict."""
    s = summary(result)
    entry = {"gate": result.gate, "check": result.check, "family": result.family, "title": result.title,
             "verdict": result.verdict, **s}
    if result.reason:
        entry["reason"] = result.reason
    if result.examples:
        entry["examples"] = result.examples[:10]
    return entry


def _cell(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, ".3g") for v in value) + "]"
    if isinstance(value, float):
        return _fmt(value, ".4g")
    return str(value)


def _stat_text(result: GateResult | None) -> str:
    if result is None:
        return "—"
    if result.verdict == "skipped" or not summary(result)["statistic"]:
        return f"{result.verdict} ({result.reason})" if result.reason else result.verdict
    value = next(iter(summary(result)["statistic"].values())) if result.gate != "1.8" else \
        summary(result)["statistic"].get("ratio")
    return f"{_fmt(value, '.3g')} ({result.verdict.upper() if result.verdict == 'fail' else result.verdict})"


def raw_twin(check: str) -> str:
    """The raw-pixel check measuring what a model-input check measures (``input_core_rms_ratio_g`` ->
    ``core_flux_ratio_g``: on the model input 1.8 compares core RMS, on raw pixels core flux)."""
    return check.removeprefix("input_").replace("core_rms_ratio", "core_flux_ratio")


def side_by_side(audit) -> list[str]:
    """Gates 1.6 / 1.8 on the raw pixels beside the same gates on the model input (which block)."""
    if audit.extra.get("input_spec") is None:
        return []
    by_id = {r.id: r for r in audit.results}
    rows = []
    for r in audit.results:
        if r.gate in MODEL_INPUT_GATES and r.on_model_input:
            raw_check = raw_twin(r.check)
            rows.append(f"| {r.gate} | {raw_check} | {_stat_text(by_id.get(f'{r.gate}:{raw_check}'))} | {r.check} | "
                        f"{_stat_text(r)} |")
    spec = audit.extra["input_spec"]
    return ["## Shortcut gates: raw pixels and model input", "",
            f"The model sees `{spec['name']}`" + (f" cropped to {spec['crop_pix']} px" if spec.get("crop_pix") else "")
            + ". The raw-pixel figures carry the physical signal of arc light near the lens core; the model-input "
            "figures say what of it the network can still use, and those block. (Gate 1.5's statistics are the "
            "model input's own normalisation statistics, so 1.5 has one figure.)", "",
            "| gate | raw pixels | statistic | model input | statistic (blocking) |", "|---|---|---|---|---|",
            *rows, ""]


def markdown(audit) -> str:
    """Human-readable report of an audit (darkhalo.gates.audit.Audit)."""
    counts = audit.counts()
    lines = [f"# Data gates: {audit.generation}" + (f" — {audit.label}" if audit.label else ""), ""]
    lines.append(f"**Verdict: {'PASS' if audit.passed else 'FAIL'}** — {counts['fail']} failed, {counts['pass']} "
                 f"passed, {counts['skipped']} skipped of {sum(counts.values())} gate checks. "
                 f"Blocking gate families: {', '.join(audit.blocking) if audit.blocking else 'none (failures are warnings)'}.")
    lines += ["", f"Manifest `{audit.uri}` ({audit.layout} layout): {audit.n_rows} rows; after quarantine "
              f"{audit.n_positive} positives and {audit.n_control} controls. Row-contract policy: "
              f"`{audit.config.row_contract_policy}`.", ""]
    failed = [r for r in audit.results if r.verdict == "fail"]
    if failed:
        lines += ["## Failed gates", ""] + [f"- `{failure_line(r, audit.generation)}`" for r in failed] + [""]
    lines += ["## What the gates found", ""] + [f"- {p}" for p in audit.findings()] + [""]
    lines += side_by_side(audit)
    q = audit.quarantine_summary()
    lines += ["## Quarantine", "",
              f"{q['n_rows']} rows quarantined ({q['fraction']:.3%}, 95% interval [{q['fraction_ci95'][0]:.3%}, "
              f"{q['fraction_ci95'][1]:.3%}]; tolerance {audit.config.max_quarantine_frac:.2%} under policy "
              f"`{audit.config.row_contract_policy}`): {q['n_primary']} failed a row contract, {q['n_pair_partner']} "
              "are their pair partners. Training excludes every quarantined task_id.", ""]
    if q["by_contract"]:
        lines += ["| contract | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in q["by_contract"].items()] + [""]
    if audit.quarantine.num_rows:
        lines += ["| task_id | parent_id | reason | detail | file | row |", "|---|---|---|---|---|---|"]
        for row in audit.quarantine.slice(0, 25).to_pylist():
            lines.append(f"| {row['task_id']} | {row['parent_id']} | {row['reason']} | {row['detail']} | "
                         f"{row['source_file']} | {row['row_in_file']} |")
        if audit.quarantine.num_rows > 25:
            lines.append(f"| … | | {audit.quarantine.num_rows - 25} more in the quarantine list | | | |")
        lines.append("")
    lines += ["## Class balance per split", "", "| split | positives | controls |", "|---|---|---|"]
    for split, c in audit.class_balance().items():
        lines.append(f"| {split} | {c['n_positive']} | {c['n_control']} |")
    lines += ["", "## All gates", "", "| gate | check | verdict | statistic | tolerance | interval | note |",
              "|---|---|---|---|---|---|---|"]
    for r in audit.results:
        s = summary(r)
        stat = ", ".join(f"{k} {_cell(v)}" for k, v in s["statistic"].items())
        tol = ", ".join(f"{k} {_cell(v)}" for k, v in s["tolerance"].items())
        ci = ", ".join(f"{k} {_cell(v)}" for k, v in s["interval"].items())
        note = r.reason or ("; ".join(r.examples[:2]) if r.verdict == "fail" else "")
        lines.append(f"| {r.gate} | {r.check} | {r.verdict.upper() if r.verdict == 'fail' else r.verdict} | "
                     f"{stat} | {tol} | {ci} | {note.replace('|', '/')} |")
    lines += ["", "## Gate families", ""] + [f"- **{k}**: {v}" for k, v in FAMILY_NOTES.items()] + [""]
    lines += [f"Normalisation audited: `{audit.config.normalization.to_dict()}`; core radius "
              f"{audit.config.core_radius_pix:g} px. Suites: `expectations/*.json` (Great Expectations).", ""]
    return "\n".join(lines)

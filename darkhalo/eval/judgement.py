"""The comparison's judgement rules: what compare's numbers *mean*, written into metrics/compare.json.

``judge`` turns the paired differences (``compare.compare``) and the generations' stage metrics into
verdicts -- the five-line verdict, which remediation helped, whether a gate's interval settles it,
whether a model reads the core, whether the anchors measure anything, where the benchmark
extrapolates beyond the training priors, and the priorities. The report only renders these; the
thresholds are ``compare:`` params (``anchor_max_interval_width``, ``core_separation_min``,
``weak_auc_max``) and ``evaluate:`` gate tolerances.
"""
from __future__ import annotations

import math

import numpy as np

VERDICTS = ("better", "worse", "not distinguishable", "not resolvable")
# headline differences in the verdict: summary key -> label
VERDICT_METRICS = (("auc", "ROC AUC"), ("completeness", "completeness at the operating threshold"),
                   ("hard_negative_fpr_all", "hard-negative FPR"), ("anchor_recall_tierA", "Tier-A anchor recall"))
# each remediation: (name, the train setting it changed or None, the metric families it was meant to move)
REMEDIATIONS = (
    ("hard-negative mixing", "hard_negative_frac", ("hard_negative_fpr",)),
    ("residual model input (lens light subtracted)", "preprocessing", ("model_gates",)),
    ("arc-S/N targeting and wider grids", None, ("completeness", "completeness_theta_e", "completeness_arc_snr", "roc")),
)


def gate17_resolved(arc_snr_core, max_core_arc_snr: float) -> np.ndarray:
    """Positives gate 1.7 judges: matched-filter S/N of the arc light left in the core < ``max_core_arc_snr``.

    NaN (controls, other parts) is never resolved.  One rule for evaluate's gate and compare's difference.
    """
    return np.nan_to_num(np.asarray(arc_snr_core, dtype=np.float64), nan=np.inf) < max_core_arc_snr


def interval_decimals(lo: float, hi: float) -> int:
    """Decimals that an interval's half-width resolves: its first significant digit (two when that
    digit is 1 or 2); 3 for a zero-width interval."""
    half = abs(hi - lo) / 2
    if not half > 0 or not math.isfinite(half):
        return 3
    exponent = math.floor(math.log10(half))
    return max(0, -exponent + (1 if half / 10 ** exponent < 3 else 0))


def rounded(value: float, lo: float, hi: float) -> str:
    """'value [lo, hi]' to the decimals the interval resolves, e.g. +0.098 [+0.090, +0.106]."""
    d = interval_decimals(lo, hi)
    return f"{value:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"


def verdict_lines(summary: dict, baseline: str, candidate: str) -> list[str]:
    """The five-line verdict of a metrics/summary.json (generations named as in metrics/compare.json)."""
    counts = summary.get("verdict_counts", {})
    bench = summary.get("benchmark", {})
    lines = [f"**{candidate} vs {baseline}** on the frozen benchmark `{bench.get('sha256', '?')}` "
             f"({bench.get('positives', '?')} positives, {bench.get('controls', '?')} controls, "
             f"{bench.get('hard_negatives', '?')} hard negatives, {bench.get('anchors', '?')} anchors): "
             + ", ".join(f"{counts[k]} {k}" for k in VERDICTS if k in counts) + " (paired bootstrap, 95% intervals)."]
    for key, label in VERDICT_METRICS:
        diff = summary.get("difference", {}).get(key)
        if diff is None or diff.get("value") is None:
            continue
        a, b = summary[baseline].get(key), summary[candidate].get(key)
        lines.append(f"- {label}: {a:.3g} → {b:.3g}, {rounded(diff['value'], diff['lo'], diff['hi'])} "
                     f"**{diff['verdict']}**")
    return lines


def conclusion(counts: dict) -> str:
    """A remediation's conclusion from the verdict counts of the metric families it targets."""
    if counts["better"] and counts["worse"]:
        return "mixed: better on some metrics, worse on others"
    if counts["better"]:
        return "helped"
    if counts["worse"]:
        return "hurt"
    return "no measurable effect" if counts["not distinguishable"] else "not measurable here"


def remediations(result: dict) -> list[dict]:
    """Per remediation: the families present in the comparison, their summed verdict counts, the conclusion."""
    fam = result.get("family_verdict_counts") or {}
    out = []
    for name, setting, families in REMEDIATIONS:
        present = [f for f in families if f in fam]
        if present:
            counts = {v: sum(fam[f][v] for f in present) for v in VERDICTS}
            out.append({"name": name, "setting": setting, "families": present, "counts": counts,
                        "conclusion": conclusion(counts)})
    return out


def settled(rate: dict, tolerance: float) -> str:
    """Whether a rate's interval settles an upper-limit gate, in words."""
    lo, hi = rate.get("lo"), rate.get("hi")
    if not rate.get("n") or lo is None or hi is None:
        return "No rows: the gate is not measured."
    if lo > tolerance:
        return "The whole interval is above the tolerance: a clear failure."
    if hi <= tolerance:
        return "The whole interval is within the tolerance: a clear pass."
    return ("The interval straddles the tolerance: at this sample size the verdict is not settled; more "
            "benchmark rows are needed before the gate decides anything.")


def data_gate_noise(gates: dict) -> dict:
    """Which effect-size gates have a tolerance below their own null-noise level, the core-only AUC
    interval against its band, and the core-brightness bands outside their tolerance."""
    def noisy(stat: str, tol: str, null: str) -> list[str]:
        return [gid for gid, e in gates.items() if stat in (e.get("statistic") or {})
                and (e.get("interval") or {}).get(null) is not None and e["tolerance"][tol] < e["interval"][null]]

    out = {"n_effect_checks": sum("ks_d" in (e.get("statistic") or {}) for e in gates.values()),
           "ks_below_noise": noisy("ks_d", "max_ks_d", "ks_d_null95"),
           "smd_below_noise": noisy("smd", "max_abs_smd", "smd_null95")}
    core = gates.get("1.6:core_only_auc")
    if core and (core.get("interval") or {}).get("auc_ci95"):
        lo, hi = core["interval"]["auc_ci95"]
        out["core_only_auc_interval_wider_than_band"] = (hi - lo) > (core["tolerance"]["max"] - core["tolerance"]["min"])
    ratios = [gid for gid in gates if gid.startswith("1.8:")]
    if ratios:
        out["core_brightness_outside"] = [gid for gid in ratios if gates[gid]["verdict"] == "fail"]
    return out


def mask_order(names) -> list[str]:
    """Mask names ('0.5theta_e', '8pix', ...): theta_E-relative first, each by radius."""
    def key(name: str):
        unit = "theta_e" if name.endswith("theta_e") else "pix"
        try:
            radius = float(name.removesuffix(unit))
        except ValueError:
            radius = math.inf
        return (unit != "theta_e", radius, name)
    return sorted(names, key=key)


def centre_mask(evaluate: dict, config) -> dict | None:
    """The smallest theta_E-relative mask: does the model's separation come from the core?"""
    masks = evaluate.get("centre_masked") or {}
    core = next((m for m in mask_order(masks) if m.endswith("theta_e")), None)
    if core is None:
        return None
    kept = masks[core]["separation_retained"]
    auc = (evaluate.get("roc") or {}).get("auc_vs_controls")
    return {"mask": core, "reads_core": kept is not None and kept < config.core_separation_min,
            "weak_separation": auc is not None and auc < config.weak_auc_max}


def anchors(evaluates: dict, config) -> dict:
    """(generation, group) anchor recalls whose 95% interval is wider than a measurement allows."""
    wide, total = [], 0
    for g, ev in evaluates.items():
        for grp, r in (ev.get("anchor_recall_by_group") or {}).items():
            total += 1
            if r["lo"] is None or r["hi"] is None or r["hi"] - r["lo"] > config.anchor_max_interval_width:
                wide.append([g, grp])
    return {"n_groups": total, "too_wide": wide, "measured": total > 0 and not wide}


def extrapolation(inject: dict, evaluate: dict) -> dict:
    """Benchmark bins beyond the training priors: theta_E above its p95, arc S/N below its p5."""
    top, floor = inject["theta_e_arcsec"]["p95"], inject["arc_snr"]["p5"]
    beyond = [k for k, b in enumerate(evaluate["completeness_vs_theta_e"]["bins"]) if b["bin_lo"] >= top and b["n"]]
    below = [k for k, b in enumerate(evaluate["completeness_vs_arc_snr"]["bins"]) if b["bin_hi"] <= floor and b["n"]]
    return {"theta_e_bins_beyond_training": beyond, "arc_snr_bins_below_training": below,
            "extrapolates": bool(beyond or below)}


def priorities(result: dict, data_gates: dict, model_gates: dict) -> list[str]:
    """What to do next, most important first."""
    base, cand = result["baseline"], result["candidate"]
    out = []
    gates = data_gates.get(cand) or {}
    if gates.get("verdict") == "fail":
        out.append(f"Fix the {gates['n_gates']['fail']} failing data gates of {cand} ({', '.join(gates['failed'])}): "
                   "a model trained on data that fails its shortcut gates cannot be trusted whatever its metrics.")
    failed = [g["gate"] for g in (model_gates.get(cand) or {}).get("gates", []) if not g["passed"]]
    if failed:
        out.append(f"Model gate(s) {', '.join(failed)} fail for {cand} (see Model gates).")
    worse = result["verdicts"]["worse"]
    if worse:
        out.append(f"Investigate where {cand} is worse than {base}: "
                   + "; ".join(result["metrics"][k]["title"] for k in worse) + ".")
    if result["verdicts"]["not resolvable"]:
        out.append("Enlarge the benchmark where metrics are not resolvable: "
                   + ", ".join(result["verdicts"]["not resolvable"]) + ".")
    out.append("Measure on real data: anchors in cutouts mode, hard negatives from Galaxy Zoo DECaLS, and a "
               "training-seed repeat of both generations.")
    return out


def judge(result: dict, summary: dict, detail: dict, config, gate_tolerances: dict) -> dict:
    """compare.json's ``judgement``: every verdict the report states, from compare's numbers and the stage metrics.

    ``detail``: ``{kind: {generation: doc}}`` for kind in data_gates, evaluate, model_gates, inject (absent
    documents as {}), plus ``split``, ``anchors``, ``hard_negatives`` (single docs or {});
    ``gate_tolerances``: evaluate's ``operating_fpr``, ``gate13_max_fraction_above``, ``gate17_max_retained_fraction``.
    """
    gens = [result["baseline"], result["candidate"]]
    ev = {g: detail["evaluate"].get(g) or {} for g in gens}
    out: dict = {"verdict": verdict_lines(summary, *gens), "remediations": remediations(result)}
    out["data_gates"] = {g: data_gate_noise(detail["data_gates"][g].get("gates", {}))
                         for g in gens if detail["data_gates"].get(g)}
    model = {}
    for g in gens:
        if ev[g].get("gate_1_3_null_injection"):
            model[g] = {
                "gate_1_3": settled(ev[g]["gate_1_3_null_injection"]["fraction_above"],
                                    gate_tolerances["gate13_max_fraction_above"]),
                "gate_1_3_fails_by_construction":
                    gate_tolerances["gate13_max_fraction_above"] < gate_tolerances["operating_fpr"],
                "gate_1_7": settled(ev[g]["gate_1_7_arc_suppressed"]["retained_fraction"],
                                    gate_tolerances["gate17_max_retained_fraction"])}
    out["model_gates"] = model
    out["centre_mask"] = {g: m for g in gens if (m := centre_mask(ev[g], config)) is not None}
    out["anchors"] = {**anchors({g: e for g, e in ev.items() if e}, config),
                      "mode": (detail.get("anchors") or {}).get("mode")}
    inject = detail.get("inject") or {}
    out["ranges"] = {g: extrapolation(inject[g], ev[g]) for g in gens if inject.get(g) and ev[g]}
    claimed = config.claimed_n_grid_configs or {}
    out["grid_claims"] = {g: {"claimed": claimed[g], "actual": inject[g]["priors"]["n_grid_configs"],
                              "correct": claimed[g] == inject[g]["priors"]["n_grid_configs"]}
                          for g in gens if g in claimed and inject.get(g)}
    split = detail.get("split") or {}
    if split:
        out["split"] = {"guard_costs_nothing": split["guard"]["n_parents"] == 0}
    out["missing_checks"] = {
        "tpr_at_fpr_1e-3_resolvable": {g: bool(r.get("resolvable", True)) for g in gens
                                       if (r := (ev[g].get("roc") or {}).get("tpr_at_fpr_1e-3"))},
        "hard_negatives_simulated": (detail.get("hard_negatives") or {}).get("mode") == "embedded"}
    out["priorities"] = priorities(result, detail["data_gates"], detail["model_gates"])
    return out

"""The generated remediation report: reports/remediation.md and the figures it embeds.

Every number in the markdown is a link to the metrics (or params) file and the JSON pointer
it was read from, e.g. ``[0.5976](../metrics/gen5p/evaluate.json#/roc/auc)``: the report
never computes a number it prints, so the numbers equal the metrics files' (tested), and
each claim names the metric it rests on. Figures are drawn from the same files (and the
scores tables / benchmark pixels for the galleries) with matplotlib's Agg backend.

Judgement words ("too wide", "reads the core") come from rules whose thresholds are
``report:`` params, printed with links to params.yaml.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import yaml  # noqa: E402

from .dataset import iter_chunks, read_table, stamps_of  # noqa: E402
from .gallery import gallery_png  # noqa: E402
from .params import FRACTION, POSITIVE, build, section  # noqa: E402

FIGURES = "remediation"        # figures folder, beside remediation.md


@dataclass(frozen=True)
class ReportConfig:
    """``report:`` params."""

    gallery_n: int = 12                      # stamps per gallery
    gallery_columns: int = 6
    anchor_max_interval_width: float = 0.2   # a recall whose 95% interval is wider than this is not a measurement
    core_separation_min: float = 0.8         # centre-masked: separation kept at 0.5 theta_E below this = core reliance
    weak_auc_max: float = 0.7                # below this AUC the centre-masked ratios are called noise-dominated
    claimed_n_grid_configs: dict | None = None   # the users' hand-written numbers, checked against inject metrics


REPORT_RULES = {"gallery_n": POSITIVE, "gallery_columns": POSITIVE, "anchor_max_interval_width": FRACTION,
                "core_separation_min": FRACTION, "weak_auc_max": FRACTION}


def report_config(params: dict, path: str) -> ReportConfig:
    return build(ReportConfig, section(params, "report", path), "report", path, REPORT_RULES)


# --------------------------------------------------------------------------- numbers with their sources

def format_value(value) -> str:
    """The one way the report prints a value: 4 significant digits, ints as is, None as 'n/a'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) if value else "none"
    return str(value)


def pointer_of(keys) -> str:
    """JSON pointer (RFC 6901) of a key path, URL-quoted for a markdown link fragment."""
    return "/" + "/".join(quote(str(k).replace("~", "~0").replace("/", "~1"), safe=":@.-_,=+") for k in keys)


def resolve_pointer(doc, pointer: str):
    """The value at an (unquoted) JSON pointer; KeyError naming the missing step."""
    from urllib.parse import unquote

    node = doc
    for raw in pointer.lstrip("/").split("/") if pointer.strip("/") else []:
        key = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise KeyError(f"no '{key}' at {pointer}")
    return node


class Sources:
    """Metrics and params files (paths relative to the repository root) and links to their values."""

    def __init__(self, root: str | Path = ".", report_dir: str = "reports"):
        self.root = Path(root)
        self.up = "../" * len(Path(report_dir).parts)
        self._docs: dict[str, object] = {}

    def has(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def load(self, rel: str):
        if rel not in self._docs:
            path = self.root / rel
            if not path.is_file():
                raise FileNotFoundError(f"report input {rel} not found (under {self.root})")
            text = path.read_text()
            self._docs[rel] = yaml.safe_load(text) if rel.endswith((".yaml", ".yml")) else json.loads(text)
        return self._docs[rel]

    def get(self, rel: str, *keys):
        node = self.load(rel)
        for i, key in enumerate(keys):
            if isinstance(node, list):
                node = node[int(key)]
            elif isinstance(node, dict) and str(key) in node:
                node = node[str(key)]
            else:
                raise KeyError(f"{rel}: no key {'/'.join(map(str, keys[:i + 1]))}")
        return node

    def opt(self, rel: str, *keys, default=None):
        try:
            return self.get(rel, *keys)
        except (KeyError, IndexError, FileNotFoundError):
            return default

    def n(self, rel: str, *keys) -> str:
        """``[value](../rel#/pointer)``: the value, linked to where it was read."""
        return f"[{format_value(self.get(rel, *keys))}]({self.up}{rel}#{pointer_of(keys)})"

    def n_or(self, rel: str, *keys, default: str = "n/a") -> str:
        """``n`` where the key exists, else ``default`` (for fields other stages may not write)."""
        try:
            self.get(rel, *keys)
        except (KeyError, IndexError, FileNotFoundError):
            return default
        return self.n(rel, *keys)

    def interval(self, rel: str, *keys, lo: str = "lo", hi: str = "hi") -> str:
        return f"[{self.n(rel, *keys, lo)}, {self.n(rel, *keys, hi)}]"

    def rate(self, rel: str, *keys) -> str:
        """'rate [lo, hi] (k/n)' of a rate_with_interval dict."""
        return (f"{self.n(rel, *keys, 'rate')} {self.interval(rel, *keys)} "
                f"({self.n(rel, *keys, 'k')}/{self.n(rel, *keys, 'n')})")


# --------------------------------------------------------------------------- figures

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _log_axis(ax, logx: bool) -> None:
    if logx:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def roc_figure(curves: dict[str, pa.Table]) -> bytes:
    """ROC curves (log FPR) of every generation on one axis."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for (name, table), colour in zip(curves.items(), COLOURS):
        fpr = np.asarray(table.column("fpr").to_numpy(), dtype=float)
        tpr = np.asarray(table.column("tpr").to_numpy(), dtype=float)
        keep = fpr > 0
        ax.step(fpr[keep], tpr[keep], where="post", color=colour, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate (controls + hard negatives)")
    ax.set_ylabel("true-positive rate (benchmark injections)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def completeness_figure(summaries: dict[str, dict], keys: list[tuple[str, str, bool]]) -> bytes:
    """Completeness per bin with Wilson bands, generations overlaid; one panel per (key, label, log x)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, (key, label, logx) in zip(axes[0], keys):
        for (name, summary), colour in zip(summaries.items(), COLOURS):
            bins = (summary.get(key) or {}).get("bins") or []
            x = np.array([b["centre"] for b in bins], dtype=float)
            y = np.array([np.nan if b["rate"] is None else b["rate"] for b in bins], dtype=float)
            lo = np.array([np.nan if b["lo"] is None else b["lo"] for b in bins], dtype=float)
            hi = np.array([np.nan if b["hi"] is None else b["hi"] for b in bins], dtype=float)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.18, step="mid")
            ax.plot(x, y, "o-", color=colour, label=name, ms=3)
        _log_axis(ax, logx)
        ax.set_xlabel(label)
        ax.set_ylabel("completeness at the operating threshold")
        ax.set_ylim(bottom=-0.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


SELECTION_PANELS = (("selection_theta_e_psf", "psf_fwhm_r", "r PSF FWHM (arcsec)"),
                    ("selection_theta_e_depth", "depth_r", "r 5σ depth (mag)"))


def selection_figure(grids: dict[str, dict[str, pa.Table]]) -> bytes:
    """Selection-function heatmaps: completeness on theta_E x PSF and theta_E x depth, one row per generation.

    Each cell shows its completeness and count; cells flagged "too few" are grey.
    """
    fig, axes = plt.subplots(len(grids), len(SELECTION_PANELS), figsize=(5.2 * len(SELECTION_PANELS), 3.6 * len(grids)),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    for row, (gen, tables) in zip(axes, grids.items()):
        for ax, (name, axis, label) in zip(row, SELECTION_PANELS):
            t = tables[name].to_pydict()
            xs, ys = sorted(set(zip(t["theta_e_lo"], t["theta_e_hi"]))), sorted(set(zip(t[f"{axis}_lo"], t[f"{axis}_hi"])))
            grid = np.full((len(ys), len(xs)), np.nan)
            for i, (xl, yl, rate, n, status) in enumerate(zip(t["theta_e_lo"], t[f"{axis}_lo"], t["completeness"], t["n"],
                                                            t["status"])):
                cx, cy = [x[0] for x in xs].index(xl), [y[0] for y in ys].index(yl)
                ok = status == "ok"
                grid[cy, cx] = rate if ok else np.nan
                ax.text(cx, cy, f"{rate:.2f}\nn={n}" if n else "n=0", ha="center", va="center", fontsize=7,
                        color="black" if ok else "grey")
            image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{lo:g}–{hi:g}" for lo, hi in xs], fontsize=7)
            ax.set_yticks(range(len(ys)), [f"{lo:g}–{hi:g}" for lo, hi in ys], fontsize=7)
            ax.set_xlabel("theta_E (arcsec)")
            ax.set_ylabel(label)
            ax.set_title(f"{gen}: completeness", fontsize=9)
        fig.colorbar(image, ax=row.tolist(), fraction=0.03, label="completeness")
    return _png(fig)


def difference_figure(compare: dict, families: list[tuple[str, str, bool]]) -> bytes:
    """Candidate − baseline completeness per bin with the paired-bootstrap interval."""
    fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families), 3.6), squeeze=False)
    for ax, (family, label, logx) in zip(axes[0], families):
        rows = [r for r in compare["metrics"].values() if r["family"] == family and r["diff"] is not None]
        x = np.array([0.5 * (r["bin_lo"] + r["bin_hi"]) for r in rows], dtype=float)
        d = np.array([r["diff"] for r in rows], dtype=float)
        lo = np.array([np.nan if r["lo"] is None else r["lo"] for r in rows], dtype=float)
        hi = np.array([np.nan if r["hi"] is None else r["hi"] for r in rows], dtype=float)
        ax.axhline(0, color="grey", lw=0.8)
        ax.errorbar(x, d, yerr=[np.nan_to_num(d - lo), np.nan_to_num(hi - d)], fmt="o", color="k", capsize=3)
        _log_axis(ax, logx)
        ax.set_xlabel(label)
        ax.set_ylabel(f"completeness {compare['candidate']} − {compare['baseline']}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def arc_snr_figure(samples: dict[str, np.ndarray], target: dict | None) -> bytes:
    """Achieved arc S/N of each training set (and the benchmark), log bins."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    finite = [v[np.isfinite(v) & (v > 0)] for v in samples.values()]
    if any(len(v) for v in finite):
        lo = max(0.1, min(float(v.min()) for v in finite if len(v)))
        hi = max(float(v.max()) for v in finite if len(v))
        edges = np.geomspace(lo, hi * 1.01, 40)
        for (name, v), colour in zip(zip(samples, finite), COLOURS):
            ax.hist(v, bins=edges, histtype="step", weights=np.full(len(v), 1.0 / len(v)), color=colour,
                    label=f"{name} (n={len(v)})")
    if target:
        for value in (target.get("lo"), target.get("hi")):
            if value:
                ax.axvline(value, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("arc_snr (matched-filter S/N of the injected arc)")
    ax.set_ylabel("fraction of positives per log bin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- galleries

def _read_images(uri: str, key_column: str, keys: list[int]) -> dict[int, np.ndarray]:
    """grz images of the rows whose ``key_column`` is in ``keys`` (one pass over the dataset)."""
    if not keys:
        return {}
    found = {}
    for chunk in iter_chunks(uri, filter=ds.field(key_column).isin(pa.array(keys, pa.int64()))):
        size = int(chunk.table.column("stamp_size")[0].as_py()) if "stamp_size" in chunk.table.column_names else 64
        stamps = stamps_of(chunk, size)
        for k, image in zip(chunk.table.column(key_column).to_pylist(), stamps.image):
            found[int(k)] = image
    missing = sorted(set(int(k) for k in keys) - set(found))
    if missing:
        raise KeyError(f"{uri}: {len(missing)} {key_column} value(s) not found, e.g. {missing[:5]}")
    return found


def gallery_rows(scores: pa.Table, threshold: float, n: int) -> dict[str, pa.Table]:
    """The highest-scoring negatives and the missed injected positives (brightest arc S/N first)."""
    part = np.array(scores.column("part").to_pylist(), dtype=object)
    label = scores.column("label").to_numpy()
    score = scores.column("score").to_numpy().astype(np.float64)
    neg = np.flatnonzero(label == 0)
    top_fp = neg[np.argsort(-score[neg], kind="stable")[:n]]
    snr = scores.column("arc_snr").to_numpy(zero_copy_only=False).astype(np.float64) \
        if "arc_snr" in scores.column_names else np.full(len(part), np.nan)
    missed = np.flatnonzero((part == "injection") & (label == 1) & (score < threshold))
    missed = missed[np.argsort(-np.nan_to_num(snr[missed], nan=-np.inf), kind="stable")[:n]]
    return {"false_positives": scores.take(pa.array(top_fp, pa.int64())),
            "missed_positives": scores.take(pa.array(missed, pa.int64()))}


def gallery_images(rows: pa.Table, parts: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """Pixels (from the benchmark parts) and labels of gallery rows, in row order."""
    cols = rows.to_pydict()
    wanted = {"injection": ("task_id", "injections"), "hard_negative": ("parent_id", "hard_negatives"),
              "anchor": ("parent_id", "anchors")}
    images = {}
    for part, (key, name) in wanted.items():
        keys = [int(cols[key][i]) for i in range(rows.num_rows) if cols["part"][i] == part]
        if keys:
            if name not in parts:
                raise KeyError(f"benchmark has no '{name}' part, needed for the gallery")
            images[part] = _read_images(parts[name], key, keys)
    out, labels = [], []
    for i in range(rows.num_rows):
        part = cols["part"][i]
        key = cols["task_id" if part == "injection" else "parent_id"][i]
        out.append(images[part][int(key)])
        text = f"p={cols['score'][i]:.3f}"
        if part == "injection":
            kind = "control" if cols["label"][i] == 0 else "lens"
            text = f"{text} θE={cols['theta_e_arcsec'][i]:.2f}\" S/N={cols['arc_snr'][i]:.0f}" \
                if kind == "lens" else f"control {text}"
        else:
            text = f"{cols['group'][i]} {text}"
        labels.append(text)
    return (np.stack(out) if out else np.zeros((0, 3, 64, 64), np.float32)), labels


# --------------------------------------------------------------------------- the markdown

@dataclass
class Inputs:
    """What the report reads: generation names, file paths relative to the root, benchmark parts."""

    baseline: str
    candidate: str
    labels: dict
    params: str = "params.yaml"
    compare: str = "metrics/compare.json"
    benchmark: str = "metrics/benchmark.json"
    split: str = "metrics/split.json"
    anchors: str = "metrics/anchors.json"
    hard_negatives: str = "metrics/hard_negatives.json"
    benchmark_inject: str = "metrics/benchmark/inject.json"
    ablation: str = "metrics/ablation.json"

    @property
    def generations(self) -> list[str]:
        return [self.baseline, self.candidate]

    def m(self, gen: str, name: str) -> str:
        return f"metrics/{gen}/{name}.json"


class Report:
    """Builds the markdown from Sources; ``missing`` lists inputs that were absent."""

    def __init__(self, src: Sources, inputs: Inputs, config: ReportConfig):
        self.s, self.i, self.c = src, inputs, config
        self.missing: list[str] = []

    def need(self, rel: str) -> bool:
        if self.s.has(rel):
            return True
        if rel not in self.missing:
            self.missing.append(rel)
        return False

    def gname(self, gen: str) -> str:
        return f"{gen} — {self.i.labels[gen]}" if self.i.labels.get(gen) else gen

    # ----- sections

    def header(self) -> list[str]:
        s, i = self.s, self.i
        cmp = i.compare
        lines = ["# Gen5 remediation report (generated)", "",
                 f"Generated by `dvc repro report` from the pipeline's metrics files; nothing in it is typed by "
                 f"hand. Every number links to the file and JSON pointer it was read from. Baseline "
                 f"**{self.gname(i.baseline)}**, candidate **{self.gname(i.candidate)}**; differences are "
                 f"candidate − baseline on one frozen benchmark (sha256 {s.n(cmp, 'benchmark_sha256')}): "
                 f"{s.n(cmp, 'rows', 'injection')} injection rows (positives and their controls), "
                 f"{s.n(cmp, 'rows', 'hard_negative')} hard negatives, {s.n(cmp, 'rows', 'anchor')} anchors.", ""]
        return lines

    def summary(self) -> list[str]:
        s, i = self.s, self.i
        cmp = i.compare
        doc = s.load(cmp)
        lines = ["## Summary", "",
                 f"Of {s.n(cmp, 'n_metrics')} compared metrics, {i.candidate} is **better** on "
                 f"{s.n(cmp, 'verdict_counts', 'better')}, **worse** on {s.n(cmp, 'verdict_counts', 'worse')}, "
                 f"not distinguishable on {s.n(cmp, 'verdict_counts', 'not distinguishable')} and not resolvable "
                 f"on {s.n(cmp, 'verdict_counts', 'not resolvable')} (paired bootstrap, "
                 f"{s.n(cmp, 'bootstrap', 'n_bootstrap')} replicates over {s.n(cmp, 'bootstrap', 'n_units')} "
                 f"resampling units, {s.n(cmp, 'bootstrap', 'confidence')} intervals, verdict margin "
                 f"{s.n(cmp, 'bootstrap', 'tolerance')}).", ""]
        for name in ("auc", "tpr_at_fpr_1e-2", "tpr10", "completeness", "hard_negative_fpr_all", "ece",
                     "gate_1_7_retained_fraction", "anchor_recall_all"):
            if name in doc["metrics"]:
                lines.append("- " + self.metric_sentence(name))
        worse = doc["verdicts"]["worse"]
        lines += [""]
        if worse:
            lines.append(f"**{i.candidate} is worse than {i.baseline}** on: "
                         + "; ".join(f"{doc['metrics'][k]['title']} ({s.n(cmp, 'metrics', k, 'diff')} "
                                     f"{s.interval(cmp, 'metrics', k)})" for k in worse) + ".")
        else:
            lines.append(f"No metric is significantly worse for {i.candidate} than for {i.baseline}.")
        better = doc["verdicts"]["better"]
        lines += ["", (f"{i.candidate} is better on: " + "; ".join(doc["metrics"][k]["title"] for k in better) + "."
                       ) if better else f"No metric is significantly better for {i.candidate}.", ""]
        lines += [f"Caveat ({s.n(cmp, 'bootstrap', 'note')}): with {s.n(cmp, 'n_metrics')} intervals at "
                  f"{s.n(cmp, 'bootstrap', 'confidence')}, a few verdicts are expected to flip by chance; a single "
                  "training run per generation means training-seed variance is not in the intervals.", ""]
        return lines

    def metric_sentence(self, name: str) -> str:
        s, i = self.s, self.i
        cmp = i.compare
        r = s.get(cmp, "metrics", name)
        return (f"{r['title']}: {i.baseline} {s.n(cmp, 'metrics', name, 'baseline')}, {i.candidate} "
                f"{s.n(cmp, 'metrics', name, 'candidate')}, difference {s.n(cmp, 'metrics', name, 'diff')} "
                f"{s.interval(cmp, 'metrics', name)}: **{s.n(cmp, 'metrics', name, 'verdict')}**"
                + (f" ({s.n(cmp, 'metrics', name, 'reason')})" if "reason" in r else ""))

    def comparison_table(self) -> list[str]:
        s, i = self.s, self.i
        cmp = i.compare
        doc = s.load(cmp)
        lines = [f"## {i.candidate} vs {i.baseline}: every headline metric", "",
                 f"Thresholded metrics use each generation's own operating threshold ({i.baseline} "
                 f"{s.n(cmp, 'operating_threshold', i.baseline)}, {i.candidate} "
                 f"{s.n(cmp, 'operating_threshold', i.candidate)}), set at FPR "
                 f"{s.n(i.params, 'evaluate', 'operating_fpr')} on that generation's own val controls. "
                 f"Resampling: {s.n(cmp, 'bootstrap', 'resampled')}. Arrow = better direction.", "",
                 f"| metric | ↑↓ | {i.baseline} | {i.candidate} | Δ | {s.n(cmp, 'bootstrap', 'confidence')} interval "
                 f"| verdict | rows |", "|---|---|---|---|---|---|---|---|"]
        for name in doc.get("order", doc["metrics"]):
            r = doc["metrics"][name]
            lines.append(f"| {r['title']} | {'↑' if r['higher_is_better'] else '↓'} | "
                         f"{s.n(cmp, 'metrics', name, 'baseline')} | {s.n(cmp, 'metrics', name, 'candidate')} | "
                         f"{s.n(cmp, 'metrics', name, 'diff')} | {s.interval(cmp, 'metrics', name)} | "
                         f"{s.n(cmp, 'metrics', name, 'verdict')} | {s.n(cmp, 'metrics', name, 'n_rows')} |")
        return lines + [""]

    REMEDIATIONS = (
        ("hard-negative mixing", ("train", "hard_negative_frac"), ("hard_negative_fpr",)),
        ("residual model input (lens light subtracted)", ("train", "preprocessing"), ("model_gates",)),
        ("arc-S/N targeting and wider grids", None,
         ("completeness", "completeness_theta_e", "completeness_arc_snr", "roc")),
    )

    def setting(self, gen: str, key: str) -> str:
        """A generation's effective train setting, linked to where params.yaml sets it."""
        s, i = self.s, self.i
        if s.opt(i.params, "generations", gen, "train", key) is not None:
            return s.n(i.params, "generations", gen, "train", key)
        return s.n(i.params, "train", key)

    def remediations(self) -> list[str]:
        s, i = self.s, self.i
        fam = s.opt(i.compare, "family_verdict_counts") or {}
        lines = ["## Which remediation helped", "",
                 "Each remediation is judged by the metrics it was meant to move (verdict counts per metric family; "
                 "the table below has every number). This attributes by metric family, not by cause: every "
                 "remediation changed at once. The leave-one-out ablation (`make ablation`, README) measures each "
                 "one's own effect; its variants are not part of the default run.", "",
                 f"| remediation | {i.baseline} | {i.candidate} | metric families | better | worse | not "
                 f"distinguishable "
                 "| not resolvable | conclusion |", "|---|---|---|---|---|---|---|---|---|"]
        for name, setting, families in self.REMEDIATIONS:
            if setting:
                a, b = (self.setting(g, setting[1]) for g in i.generations)
                a, b = f"{setting[1]} {a}", f"{setting[1]} {b}"
            else:
                a, b = ([f"{s.n(i.m(g, 'inject'), 'priors', 'n_grid_configs')} grid configs, target "
                         + (f"{s.n(i.m(g, 'inject'), 'arc_snr_target', 'kind')}"
                            if s.opt(i.m(g, 'inject'), 'arc_snr_target')
                            else "none") if s.has(i.m(g, "inject")) else "—" for g in i.generations])
            present = [f for f in families if f in fam]
            if not present:
                continue
            verdicts = ("better", "worse", "not distinguishable", "not resolvable")
            counts = [" + ".join(s.n(i.compare, "family_verdict_counts", f, v) for f in present) for v in verdicts]
            total = {v: sum(fam[f][v] for f in present) for v in verdicts}
            conclusion = ("mixed: better on some metrics, worse on others" if total["better"] and total["worse"] else
                          "helped" if total["better"] else "hurt" if total["worse"] else
                          "no measurable effect" if total["not distinguishable"] else "not measurable here")
            lines.append(f"| {name} | {a} | {b} | {', '.join(present)} | " + " | ".join(counts)
                         + f" | **{conclusion}** |")
        lines += self.ablation()
        cal = "calibration" in fam
        if cal:
            lines += ["", "- " + self.metric_sentence("ece") + " (not a remediation target; reported because the "
                      "scores are read as probabilities)."]
        return lines + [""]

    ABLATION_METRICS = (("auc", "AUC"), ("completeness", "completeness"), ("anchor_recall_tierA", "Tier-A recall"),
                        ("hard_negative_fpr_all", "HN FPR"), ("core_only_auc_model_input", "input core AUC"))

    def ablation(self) -> list[str]:
        """Leave-one-out table from metrics/ablation.json (``make ablation-collect``): variant - full candidate."""
        s, i = self.s, self.i
        if not s.has(i.ablation):
            return ["", f"Leave-one-out ablation: not measured ({i.ablation} absent; `make ablation`, then "
                    "`make ablation-collect`)."]
        lines = ["", f"Leave-one-out ablation of {i.candidate} ({i.ablation}; variant − full {i.candidate} on the "
                 "variant's base commit; one training seed each, so a Δ within the bootstrap half-widths of the "
                 "table above is not an effect):", "",
                 "| variant removes | status | " + " | ".join(f"Δ {label}" for _, label in self.ABLATION_METRICS)
                 + " |", "|---|---|" + "---|" * len(self.ABLATION_METRICS)]
        for name, entry in s.get(i.ablation, "variants").items():
            if entry.get("status") != "measured":
                lines.append(f"| {name} | not measured | " + " | ".join("—" for _ in self.ABLATION_METRICS) + " |")
                continue
            cells = [s.n_or(i.ablation, "variants", name, "metrics", key, "delta", default="—")
                     for key, _ in self.ABLATION_METRICS]
            lines.append(f"| {name} | measured (base {entry['base_commit'][:7]}) | " + " | ".join(cells) + " |")
        return lines

    def curves(self, figures: dict) -> list[str]:
        lines = ["## ROC and completeness", ""]
        for name, caption in (("roc.png", "ROC on the frozen benchmark (plots/<generation>/roc.csv)"),
                              ("selection_function.png", "the selection function: completeness on theta_E x r PSF "
                                                         "FWHM and theta_E x r depth (grey: too few injections; "
                                                         "the full theta_E x PSF x depth table with Wilson intervals "
                                                         "is plots/<generation>/selection_function.csv)"),
                              ("completeness.png", "completeness per bin with 95% Wilson bands "
                                                   "(metrics/<generation>/evaluate.json, completeness_vs_*)"),
                              ("completeness_diff.png", "candidate − baseline completeness per bin with the "
                                                        "paired-bootstrap interval (metrics/compare.json)")):
            if name in figures:
                lines += [f"![{caption}]({FIGURES}/{name})", "", f"*{caption}*", ""]
        return lines

    def data_gates(self) -> list[str]:
        s, i = self.s, self.i
        lines = ["## Data gates", ""]
        files = {g: i.m(g, "data_gates") for g in i.generations if self.need(i.m(g, "data_gates"))}
        if not files:
            return lines + ["**Missing input**: no data_gates metrics.", ""]
        for g, f in files.items():
            blocking = (f"blocking families {s.n(f, 'blocking_families')}" if s.opt(f, "blocking_families") is not None
                        else f"blocking {s.n_or(f, 'blocking')}")
            lines.append(f"- {g}: verdict **{s.n(f, 'verdict')}** ({s.n(f, 'n_gates', 'fail')} failed, "
                         f"{s.n(f, 'n_gates', 'pass')} passed, {s.n(f, 'n_gates', 'skipped')} skipped; {blocking}); "
                         f"{s.n_or(f, 'quarantine', 'n_rows')} rows quarantined "
                         f"({s.n_or(f, 'quarantine', 'fraction')} of "
                         f"{s.n_or(f, 'n_rows')}). Full report: `reports/{g}/data_gates.md`.")
        lines += ["", "Statistical and shortcut gates (row contracts that passed for every generation are "
                      "counted above, not listed):", "",
                  "| gate | check | " + " | ".join(files) + " | tolerance "
                  "|", "|---|---|" + "---|" * len(files) + "---|"]
        ids = []
        for f in files.values():
            for gid in s.get(f, "gates"):
                if gid not in ids:
                    ids.append(gid)
        for gid in sorted(ids):
            entries = {g: s.opt(f, "gates", gid) for g, f in files.items()}
            first = next(e for e in entries.values() if e)
            if gid.startswith("contract:") and all(e is None or e["verdict"] == "pass" for e in entries.values()):
                continue
            cells = []
            for g, f in files.items():
                e = entries[g]
                cells.append("—" if e is None else self.gate_cell(f, gid, e))
            lines.append(f"| {first['gate']} | {first['check']} | " + " | ".join(cells) + " | "
                         + self.gate_tolerance(next(f for g, f in files.items() if entries[g]), gid, first) + " |")
        return lines + [""]

    def gate_cell(self, f: str, gid: str, e: dict) -> str:
        s = self.s
        verdict = s.n(f, "gates", gid, "verdict")
        verdict = f"**{verdict}**" if e.get("verdict") == "fail" else verdict
        stat = e.get("statistic") or {}
        if "ks_d" in stat:
            body = (f"KS D {s.n(f, 'gates', gid, 'statistic', 'ks_d')} (null 95% "
                    f"{s.n_or(f, 'gates', gid, 'interval', 'ks_d_null95')}), SMD "
                    f"{s.n(f, 'gates', gid, 'statistic', 'smd')}"
                    + (f" (null 95% {s.n(f, 'gates', gid, 'interval', 'smd_null95')})"
                       if s.opt(f, "gates", gid, "interval", "smd_null95") is not None else ""))
        elif "auc" in stat:
            body = (f"AUC {s.n(f, 'gates', gid, 'statistic', 'auc')} "
                    f"[{s.n(f, 'gates', gid, 'interval', 'auc_ci95', 0)}, "
                    f"{s.n(f, 'gates', gid, 'interval', 'auc_ci95', 1)}]")
        elif "ratio" in stat:
            body = (f"ratio {s.n(f, 'gates', gid, 'statistic', 'ratio')} "
                    f"[{s.n(f, 'gates', gid, 'interval', 'ratio_ci95', 0)}, "
                    f"{s.n(f, 'gates', gid, 'interval', 'ratio_ci95', 1)}]")
        elif "unexpected_count" in stat:
            body = (f"{s.n(f, 'gates', gid, 'statistic', 'unexpected_count')} of "
                    f"{s.n(f, 'gates', gid, 'statistic', 'element_count')}")
        elif "value" in stat:
            body = f"{s.n(f, 'gates', gid, 'statistic', 'value')}"
        else:
            body = ""
        return f"{verdict} {body}".strip()

    def gate_tolerance(self, f: str, gid: str, e: dict) -> str:
        s = self.s
        return ", ".join(f"{k} {s.n(f, 'gates', gid, 'tolerance', k)}" for k in (e.get("tolerance") or {}))

    def model_gates(self) -> list[str]:
        s, i = self.s, self.i
        lines = ["## Model gates", "",
                 f"| generation | gate | statistic | value [95% interval] | tolerance | passed "
                 f"|", "|---|---|---|---|---|---|"]
        for g in i.generations:
            f, ev = i.m(g, "model_gates"), i.m(g, "evaluate")
            if not (self.need(f) and self.need(ev)):
                continue
            where = {"1.3": ("gate_1_3_null_injection", "fraction_above"),
                     "1.7": ("gate_1_7_arc_suppressed", "retained_fraction")}
            for k, gate in enumerate(s.get(f, "gates")):
                path = where.get(gate["gate"])
                value = s.rate(ev, *path) if path else s.n(f, "gates", k, "value")
                lines.append(f"| {g} | {s.n(f, 'gates', k, 'gate')} {gate['name']} | {gate['statistic']} | {value} | "
                             f"{s.n(f, 'gates', k, 'tolerance')} | {s.n(f, 'gates', k, 'passed')} |")
        lines.append("")
        for g in i.generations:
            ev = i.m(g, "evaluate")
            if not s.has(ev):
                continue
            p = ("gate_1_3_null_injection", "purity")
            lines.append(f"- {g}: mean score of test controls "
                         f"{s.n(ev, 'gate_1_3_null_injection', 'mean_score', 'mean')}"
                         f" {s.interval(ev, 'gate_1_3_null_injection', 'mean_score')}; purity implied at prevalence "
                         f"{s.n(ev, *p, 'prevalence')}: {s.n(ev, *p, 'purity')} {s.interval(ev, *p)}. Gate 1.7: "
                         f"{s.n(ev, 'gate_1_7_arc_suppressed', 'positives_detected')} detected of "
                         f"{s.n(ev, 'gate_1_7_arc_suppressed', 'positives_resolved')} resolved positives; mean score "
                         f"with the arc removed "
                         f"{s.n(ev, 'gate_1_7_arc_suppressed', 'mean_score_detected_arc_suppressed')}"
                         f" vs controls {s.n(ev, 'gate_1_7_arc_suppressed', 'mean_score_controls')}.")
        return lines + [""]

    def split(self) -> list[str]:
        s, i = self.s, self.i
        f = i.split
        lines = ["## Split (HEALPix, region-disjoint)", ""]
        if not self.need(f):
            return lines + [f"**Missing input**: `{f}`.", ""]
        lines += [f"NSIDE {s.n(f, 'nside')} ({s.get(f, 'healpix_scheme')}; pixels of "
                  f"{s.n(f, 'pixel_area_deg2')} deg²), "
                  f"guard band {s.n(f, 'guard_rings')} ring(s); {s.n(f, 'n_parents')} parents in "
                  f"{s.n(f, 'n_units')} assignment units (largest unit {s.n(f, 'largest_unit_fraction')} of the "
                  f"parents)"
                  f"; footprint {s.n(f, 'area_deg2')} deg². Guard band: {s.n(f, 'guard', 'n_pixels')} pixels, "
                  f"{s.n(f, 'guard', 'area_deg2')} deg² ({s.n(f, 'guard', 'fraction_of_area_lost')} of the area), "
                  f"{s.n(f, 'guard', 'n_parents')} parents ({s.n(f, 'guard', 'fraction_of_parents_lost')}) lost.", "",
                  "| split | parents | fraction (declared) | HEALPix pixels | area deg² |", "|---|---|---|---|---|"]
        for split in s.get(f, "splits"):
            lines.append(f"| {split} | {s.n(f, 'splits', split, 'n_parents')} | "
                         f"{s.n(f, 'splits', split, 'fraction_of_kept_parents')} "
                         f"({s.n(f, 'splits', split, 'declared_fraction')})"
                         f" | {s.n(f, 'splits', split, 'n_pixels')} | {s.n(f, 'splits', split, 'area_deg2')} |")
        return lines + [""]

    def anchors(self) -> list[str]:
        s, i = self.s, self.i
        f = i.anchors
        lines = ["## Anchors (known lenses)", ""]
        if not self.need(f):
            return lines + [f"**Missing input**: `{f}`.", ""]
        lines.append(f"Mode {s.n(f, 'mode')}; {s.n(f, 'n_written')} anchors written, "
                     f"{s.n(f, 'drops', 'n_dropped')} dropped "
                     f"by the position/centre checks (policy {s.n(f, 'drops', 'centre_policy')}). Tier A: "
                     f"arc-visibility "
                     f"S/N ≥ {s.n(f, 'tier_snr_threshold')}.")
        lines += ["", "| set | n | tier A | tier B | tier A fraction [95%] |", "|---|---|---|---|---|"]
        for name in s.get(f, "counts"):
            lines.append(f"| {name} | {s.n(f, 'counts', name, 'n')} | {s.n(f, 'counts', name, 'A')} | "
                         f"{s.n(f, 'counts', name, 'B')} | {s.n(f, 'tier_a_fraction', name, 'rate')} "
                         f"{s.interval(f, 'tier_a_fraction', name)} |")
        lines += ["", "Recall per set and tier at each generation's operating threshold (Wilson 95%):", "",
                  "| group | " + " | ".join(i.generations) + " | Δ [interval] verdict "
                  "|", "|---|" + "---|" * len(i.generations) + "---|"]
        groups = []
        for g in i.generations:
            for k in (s.opt(i.m(g, "evaluate"), "anchor_recall_by_group") or {}):
                if k not in groups:
                    groups.append(k)
        for grp in sorted(groups):
            cells = [s.rate(i.m(g, "evaluate"), "anchor_recall_by_group", grp)
                     if s.opt(i.m(g, "evaluate"), "anchor_recall_by_group", grp) else "—" for g in i.generations]
            lines.append(f"| {grp} | " + " | ".join(cells) + f" | {self.delta(f'anchor_recall_{grp}')} |")
        if not groups:
            lines.append("| (no anchors were scored) | " + " | ".join("—" for _ in i.generations) + " | — |")
        return lines + [""]

    def delta(self, name: str) -> str:
        s, cmp = self.s, self.i.compare
        if s.opt(cmp, "metrics", name) is None:
            return "—"
        return (f"{s.n(cmp, 'metrics', name, 'diff')} {s.interval(cmp, 'metrics', name)} "
                f"{s.n(cmp, 'metrics', name, 'verdict')}")

    def hard_negatives(self) -> list[str]:
        s, i = self.s, self.i
        lines = ["## Hard negatives", ""]
        if self.need(i.hard_negatives):
            f = i.hard_negatives
            lines.append(f"Mode {s.n(f, 'mode')}; benchmark (test split) counts per class: "
                         + ", ".join(f"{k} {s.n(f, 'counts', 'test', k)}"
                                     for k in s.opt(f, "counts", "test", default={}))
                         + ".")
        lines += ["", "| class | " + " | ".join(f"{g} FPR [95%]" for g in i.generations) + " | Δ [interval] verdict |",
                  "|---|" + "---|" * len(i.generations) + "---|"]
        classes = []
        for g in i.generations:
            for k in (s.opt(i.m(g, "evaluate"), "hard_negative_fpr_by_class") or {}):
                if k not in classes:
                    classes.append(k)
        for cls in sorted(classes):
            cells = [s.rate(i.m(g, "evaluate"), "hard_negative_fpr_by_class", cls)
                     if s.opt(i.m(g, "evaluate"), "hard_negative_fpr_by_class", cls) else "—" for g in i.generations]
            lines.append(f"| {cls} | " + " | ".join(cells) + f" | {self.delta(f'hard_negative_fpr_{cls}')} |")
        return lines + [""]

    def injection(self, figures: dict) -> list[str]:
        s, i = self.s, self.i
        lines = ["## Injection priors and the achieved arc S/N", ""]
        claimed = self.c.claimed_n_grid_configs or {}
        rows = ["| generation | grid configurations | claimed in the hand-written report | grid sizes "
                "| theta_E p5 / p50 / p95 "
                "| arc_snr p5 / p50 / p95 | arc_snr target | KS D achieved vs target | candidate acceptance | task "
                "acceptance |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        mismatches = []
        for g in i.generations:
            f = i.m(g, "inject")
            if not self.need(f):
                continue
            sizes = ", ".join(f"{k} {s.n(f, 'priors', 'grid_sizes', k)}" for k in s.get(f, "priors", "grid_sizes"))
            claim = s.n(i.params, "report", "claimed_n_grid_configs", g) if g in claimed else "—"
            if g in claimed and claimed[g] != s.get(f, "priors", "n_grid_configs"):
                mismatches.append(g)
            target = s.opt(f, "arc_snr_target")
            tcell = (f"{s.n(f, 'arc_snr_target', 'kind')} "
                     f"[{s.n(f, 'arc_snr_target', 'lo')}, {s.n(f, 'arc_snr_target', 'hi')}]"
                     if target else "none")
            ks = s.n(f, "arc_snr_target", "ks_distance_achieved_vs_target") if target else "—"
            cand = s.rate(f, "arc_snr_target", "candidate_acceptance") if target else "—"
            rows.append(f"| {g} | {s.n(f, 'priors', 'n_grid_configs')} | {claim} | {sizes} | "
                        f"{s.n(f, 'theta_e_arcsec', 'p5')} / {s.n(f, 'theta_e_arcsec', 'p50')} / "
                        f"{s.n(f, 'theta_e_arcsec', 'p95')} | "
                        f"{s.n(f, 'arc_snr', 'p5')} / {s.n(f, 'arc_snr', 'p50')} / {s.n(f, 'arc_snr', 'p95')} | "
                        f"{tcell} | {ks} | "
                        f"{cand} | {s.rate(f, 'task_acceptance')} |")
        lines += rows + [""]
        for g in mismatches:
            f = i.m(g, "inject")
            lines.append(f"- **The hand-written report's grid size for {g} is wrong**: it states "
                         f"{s.n(i.params, 'report', 'claimed_n_grid_configs', g)} configurations; the grid actually "
                         f"run has {s.n(f, 'priors', 'n_grid_configs')} (the product of the grid sizes above).")
        if self.need(i.benchmark_inject):
            b = i.benchmark_inject
            lines.append(f"- The benchmark's positives: theta_E p5 / p95 {s.n(b, 'theta_e_arcsec', 'p5')} / "
                         f"{s.n(b, 'theta_e_arcsec', 'p95')}, arc_snr p5 / p50 / p95 {s.n(b, 'arc_snr', 'p5')} / "
                         f"{s.n(b, 'arc_snr', 'p50')} / {s.n(b, 'arc_snr', 'p95')}.")
        if "arc_snr.png" in figures:
            lines += ["", f"![achieved arc S/N]({FIGURES}/arc_snr.png)", "",
                      "*Achieved arc_snr of each generation's training positives and of the benchmark "
                      "(dashed: the candidate's target range).*"]
        return lines + [""]

    def galleries(self, figures: dict) -> list[str]:
        lines = ["## Galleries", ""]
        for g in self.i.generations:
            for kind, caption in (("false_positives", "highest-scoring negatives (controls and hard negatives)"),
                                  ("missed_positives", "missed benchmark positives, brightest arc S/N first")):
                name = f"gallery_{g}_{kind}.png"
                if name in figures:
                    lines += [f"**{g}: {caption}**", "", f"![{g} {kind}]({FIGURES}/{name})", ""]
        return lines

    # ----- the review questions

    def review(self) -> list[str]:
        lines = ["## Review questions, answered from the metrics", ""]
        for title, fn in (("Are the gate thresholds appropriate?", self.q_thresholds),
                          ("What does the centre-masked diagnostic show once the mask is scaled to theta_E?",
                           self.q_mask),
                          ("Are the anchors sufficient?", self.q_anchors),
                          ("Are the parameter ranges reasonable?", self.q_ranges),
                          ("The NSIDE and guard-band choice: what did it cost?", self.q_nside),
                          ("Missing checks", self.q_missing),
                          ("Priorities", self.q_priorities)):
            lines += [f"### {title}", ""] + fn() + [""]
        return lines

    def q_thresholds(self) -> list[str]:
        s, i = self.s, self.i
        out = []
        for g in i.generations:
            f = i.m(g, "data_gates")
            if not s.has(f):
                continue
            gates = s.get(f, "gates")
            noisy = [gid for gid, e in gates.items() if "ks_d" in (e.get("statistic") or {})
                     and (e.get("interval") or {}).get("ks_d_null95") is not None
                     and e["tolerance"]["max_ks_d"] < e["interval"]["ks_d_null95"]]
            noisy_smd = [gid for gid, e in gates.items() if "smd" in (e.get("statistic") or {})
                         and (e.get("interval") or {}).get("smd_null95") is not None
                         and e["tolerance"]["max_abs_smd"] < e["interval"]["smd_null95"]]
            effect = [gid for gid, e in gates.items() if "ks_d" in (e.get("statistic") or {})]
            if noisy:
                gid = noisy[0]
                scope = "every effect-size check" if len(noisy) == len(effect) else "the checks " + ", ".join(noisy)
                out.append(f"- {g}, gates 1.1/1.5: for {scope} the KS tolerance "
                           f"({s.n(f, 'gates', gid, 'tolerance', 'max_ks_d')}) is below the KS D that sampling noise "
                           f"alone "
                           f"reaches 5% of the time at this sample size (e.g. {gid}: "
                           f"{s.n(f, 'gates', gid, 'interval', 'ks_d_null95')}), so a pass or fail there is decided by "
                           "noise: these gates need more stamps or a tolerance tied to the null level.")
                if noisy_smd:
                    gid = noisy_smd[0]
                    out.append(f"- {g}: likewise the |SMD| tolerance "
                               f"({s.n(f, 'gates', gid, 'tolerance', 'max_abs_smd')}) "
                               f"is below the SMD noise level "
                               f"({'every check' if len(noisy_smd) == len(effect) else ', '.join(noisy_smd)}; e.g. "
                               f"{gid}: "
                               f"{s.n(f, 'gates', gid, 'interval', 'smd_null95')}).")
            elif effect:
                gid = effect[0]
                out.append(f"- {g}, gates 1.1/1.5: the KS tolerance is above the noise level of KS D for every "
                           f"effect-size check (e.g. {gid}: tolerance {s.n(f, 'gates', gid, 'tolerance', 'max_ks_d')}, "
                           f"null 95% {s.n(f, 'gates', gid, 'interval', 'ks_d_null95')}): a failure is a real "
                           f"difference.")
            core = s.opt(f, "gates", "1.6:core_only_auc")
            if core and core.get("interval", {}).get("auc_ci95"):
                lo, hi = core["interval"]["auc_ci95"]
                tmin, tmax = core["tolerance"]["min"], core["tolerance"]["max"]
                wide = (hi - lo) > (tmax - tmin)
                out.append(f"- {g}, gate 1.6: core-only AUC {s.n(f, 'gates', '1.6:core_only_auc', 'statistic', 'auc')} "
                           f"[{s.n(f, 'gates', '1.6:core_only_auc', 'interval', 'auc_ci95', 0)}, "
                           f"{s.n(f, 'gates', '1.6:core_only_auc', 'interval', 'auc_ci95', 1)}] against the band "
                           f"[{s.n(f, 'gates', '1.6:core_only_auc', 'tolerance', 'min')}, "
                           f"{s.n(f, 'gates', '1.6:core_only_auc', 'tolerance', 'max')}]: "
                           + ("the interval is wider than the band, so the gate cannot confirm a pass at this size."
                              if wide else "the interval is narrower than the band, so the gate can tell."))
            ratios = [gid for gid, e in gates.items() if gid.startswith("1.8:")]
            failed = [gid for gid in ratios if gates[gid]["verdict"] == "fail"]
            if ratios:
                out.append(f"- {g}, gate 1.8 (core brightness): "
                           + ("outside the band: " + ", ".join(f"{gid} {s.n(f, 'gates', gid, 'statistic', 'ratio')}"
                                                               for gid in failed) if failed else "every band within it")
                           + ".")
        ev = {g: i.m(g, "evaluate") for g in i.generations if s.has(i.m(g, "evaluate"))}
        for g, f in ev.items():
            p = ("gate_1_3_null_injection", "purity")
            out.append(f"- {g}, gate 1.3: the tolerance "
                       f"{s.n(i.params, 'evaluate', 'gate13_max_fraction_above')} on the "
                       f"test-control fraction above threshold compares with the operating FPR "
                       f"{s.n(i.params, 'evaluate', 'operating_fpr')} the threshold was set at; observed "
                       f"{s.rate(f, 'gate_1_3_null_injection', 'fraction_above')}. Passing it is not a purity "
                       f"requirement: at prevalence {s.n(f, *p, 'prevalence')} the implied purity is "
                       f"{s.n(f, *p, 'purity')} {s.interval(f, *p)}.")
            out[-1] += " " + self.decided(s.get(f, "gate_1_3_null_injection", "fraction_above"),
                                          s.get(i.params, "evaluate", "gate13_max_fraction_above"))
            if s.get(i.params, "evaluate", "gate13_max_fraction_above") < s.get(i.params, "evaluate", "operating_fpr"):
                out[-1] += (" The tolerance is below the FPR the threshold is set at, so the gate fails by "
                            "construction: choose the two together.")
            out.append(f"- {g}, gate 1.7: retained fraction "
                       f"{s.rate(f, 'gate_1_7_arc_suppressed', 'retained_fraction')} "
                       f"against ≤ {s.n(i.params, 'evaluate', 'gate17_max_retained_fraction')} (an arc-reading model "
                       f"retains about its false-positive rate). "
                       + self.decided(s.get(f, "gate_1_7_arc_suppressed", "retained_fraction"),
                                      s.get(i.params, "evaluate", "gate17_max_retained_fraction")))
        return out or ["No gate metrics available."]

    @staticmethod
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

    @staticmethod
    def decided(rate: dict, tolerance: float) -> str:
        """Whether a rate's 95% interval settles an upper-limit gate."""
        lo, hi = rate.get("lo"), rate.get("hi")
        if not rate.get("n") or lo is None or hi is None:
            return "No rows: the gate is not measured."
        if lo > tolerance:
            return "The whole interval is above the tolerance: a clear failure."
        if hi <= tolerance:
            return "The whole interval is within the tolerance: a clear pass."
        return ("The interval straddles the tolerance: at this sample size the verdict is not settled; more "
                "benchmark rows are needed before the gate decides anything.")

    def q_mask(self) -> list[str]:
        s, i = self.s, self.i
        out = []
        cov = s.opt(i.compare, "benchmark", "fixed_mask_coverage") or {}
        for name in self.mask_order(cov):
            out.append(f"- A fixed {s.n(i.compare, 'benchmark', 'fixed_mask_coverage', name, 'radius_pix')} px mask "
                       f"({s.n(i.compare, 'benchmark', 'fixed_mask_coverage', name, 'radius_arcsec')}\") covers the "
                       f"Einstein radius of "
                       f"{s.rate(i.compare, 'benchmark', 'fixed_mask_coverage', name, 'positives_theta_e_inside')}"
                       " benchmark positives: for those the mask removes the arc itself, so a score drop there says "
                       "nothing about core reliance (the users' confound).")
        table = ["| generation | mask | separation kept | positives' mean drop | controls' mean drop | "
                 "positives recall | controls FPR |", "|---|---|---|---|---|---|---|"]
        verdicts = []
        for g in i.generations:
            f = i.m(g, "evaluate")
            masks = s.opt(f, "centre_masked") or {}
            for m in self.mask_order(masks):
                table.append(f"| {g} | {m} | {s.n(f, 'centre_masked', m, 'separation_retained')} | "
                             f"{s.n(f, 'centre_masked', m, 'positives_mean_drop')} | "
                             f"{s.n(f, 'centre_masked', m, 'controls_mean_drop')} | "
                             f"{s.rate(f, 'centre_masked', m, 'positives_recall_at_threshold')} | "
                             f"{s.rate(f, 'centre_masked', m, 'controls_fpr_at_threshold')} |")
            core = next((m for m in self.mask_order(masks) if m.endswith("theta_e")), None)
            if core is not None:
                kept = masks[core]["separation_retained"]
                reads_core = kept is not None and kept < self.c.core_separation_min
                verdicts.append(
                    f"- {g}: refilling r < {core.replace('theta_e', ' theta_E')} (inside the arcs) keeps "
                    f"{s.n(f, 'centre_masked', core, 'separation_retained')} of the positive−control separation "
                    f"(rule: below {s.n(i.params, 'report', 'core_separation_min')} = core reliance); controls' mean "
                    f"score moves by {s.n(f, 'centre_masked', core, 'controls_mean_drop')}, positives' by "
                    f"{s.n(f, 'centre_masked', core, 'positives_mean_drop')}: "
                    + ("**the model's separation depends on the core**." if reads_core else
                       "the separation does not come from the core inside the arcs."))
                auc = s.opt(f, "roc", "auc_vs_controls")
                if auc is not None and auc < self.c.weak_auc_max:
                    verdicts.append(f"  - Caveat: {g}'s unmasked separation is weak (AUC vs controls "
                                    f"{s.n(f, 'roc', 'auc_vs_controls')} < {s.n(i.params, 'report', 'weak_auc_max')}), "
                                    "so these ratios of small differences are noise-dominated (they carry no "
                                    "interval).")
        return out + [""] + table + [""] + verdicts

    def q_anchors(self) -> list[str]:
        s, i = self.s, self.i
        out, wide, total = [], [], 0
        for g in i.generations:
            f = i.m(g, "evaluate")
            for grp, r in (s.opt(f, "anchor_recall_by_group") or {}).items():
                total += 1
                if r["lo"] is None or r["hi"] is None or r["hi"] - r["lo"] > self.c.anchor_max_interval_width:
                    wide.append((g, grp))
        if not total:
            return ["No anchors were scored: anchor recall is not measured at all."]
        scope = "Every" if len(wide) == total else "These"
        out.append(f"- {scope} (generation, group) anchor recall has a 95% interval wider than "
                   f"{s.n(i.params, 'report', 'anchor_max_interval_width')}: "
                   + ("; ".join(f"{g} {grp} {s.interval(i.m(g, 'evaluate'), 'anchor_recall_by_group', grp)} "
                                f"(n = {s.n(i.m(g, 'evaluate'), 'anchor_recall_by_group', grp, 'n')})"
                                for g, grp in wide)
                      if wide else "none does") + ".")
        if wide:
            out.append("- Those are not measurements: a recall difference between generations smaller than the "
                       "interval cannot be seen. More anchors (anchors.max_per_set, or the real cutouts mode with the "
                       "full catalogue sets) are needed before anchor recall can decide anything.")
        if s.has(i.anchors):
            out.append(f"- The anchors are {s.n(i.anchors, 'mode')} (mode): "
                       + ("arcs simulated at catalogue positions, so their recall tests the simulation, not DR10 "
                          "images." if s.get(i.anchors, "mode") == "embedded" else "real Legacy Survey cutouts."))
        return out

    def q_ranges(self) -> list[str]:
        s, i = self.s, self.i
        out = []
        bench = s.opt(i.params, "benchmark", "injection", "priors", "theta_e_arcsec")
        if isinstance(bench, dict) and len(bench) == 1:
            kind = next(iter(bench))
            out.append(f"- The benchmark draws theta_E from {kind} "
                       f"[{s.n(i.params, 'benchmark', 'injection', 'priors', 'theta_e_arcsec', kind, 0)}, "
                       f"{s.n(i.params, 'benchmark', 'injection', 'priors', 'theta_e_arcsec', kind, 1)}]\" and its "
                       f"positives span arc_snr p5–p95 {s.n(i.benchmark_inject, 'arc_snr', 'p5')}–"
                       f"{s.n(i.benchmark_inject, 'arc_snr', 'p95')}." if s.has(i.benchmark_inject) else
                       f"- The benchmark draws theta_E from {kind}.")
        for g in i.generations:
            f, ev = i.m(g, "inject"), i.m(g, "evaluate")
            if not (s.has(f) and s.has(ev)):
                continue
            top = s.get(f, "theta_e_arcsec", "p95")
            floor = s.get(f, "arc_snr", "p5")
            beyond = [k for k, b in enumerate(s.get(ev, "completeness_vs_theta_e", "bins"))
                      if b["bin_lo"] >= top and b["n"]]
            below = [k for k, b in enumerate(s.get(ev, "completeness_vs_arc_snr", "bins"))
                     if b["bin_hi"] <= floor and b["n"]]
            text = (f"- {g} trained on theta_E up to {s.n(f, 'theta_e_arcsec', 'p95')}\" (p95) and arc_snr down to "
                    f"{s.n(f, 'arc_snr', 'p5')} (p5). ")
            if beyond:
                text += ("Beyond its largest theta_E the benchmark completeness is "
                         + ", ".join(self.bin_rate(ev, "completeness_vs_theta_e", k) for k in beyond) + ". ")
            if below:
                text += ("Below its faintest training arcs: "
                         + ", ".join(self.bin_rate(ev, "completeness_vs_arc_snr", k) for k in below) + ". ")
            if not beyond and not below:
                text += "The benchmark stays inside its training ranges."
            out.append(text.rstrip() + (" These are extrapolations: the training priors do not cover the range the "
                                        "science needs." if beyond or below else ""))
        fam = s.opt(i.compare, "family_verdict_counts") or {}
        for family, label in (("completeness_theta_e", "theta_E"), ("completeness_arc_snr", "arc S/N")):
            if family in fam:
                out.append(f"- Per {label} bin, {i.candidate} − {i.baseline}: better in "
                           f"{s.n(i.compare, 'family_verdict_counts', family, 'better')}, worse in "
                           f"{s.n(i.compare, 'family_verdict_counts', family, 'worse')}, not distinguishable in "
                           f"{s.n(i.compare, 'family_verdict_counts', family, 'not distinguishable')}, not "
                           f"resolvable in "
                           f"{s.n(i.compare, 'family_verdict_counts', family, 'not resolvable')} bins (table above).")
        return out or ["No injection metrics available."]

    def bin_rate(self, rel: str, key: str, k: int) -> str:
        s = self.s
        return (f"{s.n(rel, key, 'bins', k, 'rate')} {s.interval(rel, key, 'bins', k)} in "
                f"[{s.n(rel, key, 'bins', k, 'bin_lo')}, {s.n(rel, key, 'bins', k, 'bin_hi')}]")

    def q_nside(self) -> list[str]:
        s, i = self.s, self.i
        f = i.split
        if not s.has(f):
            return ["`metrics/split.json` missing."]
        out = [f"- NSIDE {s.n(f, 'nside')} pixels are {s.n(f, 'pixel_area_deg2')} deg²; the guard band of "
               f"{s.n(f, 'guard_rings')} ring(s) cost {s.n(f, 'guard', 'area_deg2')} deg² "
               f"({s.n(f, 'guard', 'fraction_of_area_lost')} of the area) and {s.n(f, 'guard', 'n_parents')} parents "
               f"({s.n(f, 'guard', 'fraction_of_parents_lost')}).",
               f"- The split fractions deviate from the declared ones by at most {s.n(f, 'max_abs_fraction_deviation')}"
               f" (largest assignment unit: {s.n(f, 'largest_unit_fraction')} of the parents).",
               f"- The test region is {s.n(f, 'splits', 'test', 'n_pixels')} pixels: the comparison resamples whole "
               "pixels, so this, not the number of stamps, sets the width of the intervals above."]
        if s.get(f, "guard", "n_parents") == 0:
            out.append("- The guard band costs nothing here because the parents sit in separated sky patches; on "
                       "contiguous real data the same NSIDE and guard drop the border pixels of every unit "
                       "(set split.region_nside to make units blocks), so re-check this cost on real data.")
        return out

    def q_missing(self) -> list[str]:
        s, i = self.s, self.i
        out = []
        for g in i.generations:
            f = i.m(g, "evaluate")
            r = s.opt(f, "roc", "tpr_at_fpr_1e-3")
            if r and not r.get("resolvable", True):
                out.append(f"- {g}: TPR at FPR 1e-3 is not resolvable with {s.n(f, 'roc', 'tpr_at_fpr_1e-3', 'n_neg')} "
                           "negatives: the benchmark needs more controls and hard negatives.")
            elif r:
                out.append(f"- {g}: TPR at FPR 1e-3 rests on {s.n(f, 'roc', 'tpr_at_fpr_1e-3', 'n_fp')} "
                           f"false positives "
                           f"among {s.n(f, 'roc', 'tpr_at_fpr_1e-3', 'n_neg')} negatives (smallest resolvable FPR "
                           f"{s.n(f, 'roc', 'tpr_at_fpr_1e-3', 'min_resolvable_fpr')}): the survey regime (FPR ≲ 1e-4) "
                           "is not measured.")
            skipped = s.opt(f, "skipped_rows") or {}
            if any(skipped.values()):
                out.append(f"- {g}: rows skipped in evaluation (counted, not scored): "
                           + ", ".join(f"{k} {s.n(f, 'skipped_rows', k)}" for k in skipped if skipped[k]) + ".")
        if s.has(i.hard_negatives) and s.get(i.hard_negatives, "mode") == "embedded":
            out.append(f"- Hard negatives are {s.n(i.hard_negatives, 'mode')} (simulated): FPR on real rings, spirals "
                       "and mergers (Galaxy Zoo DECaLS mode) is not measured.")
        out.append("- Training-seed variance: each generation is one training run, so a difference can be a seed "
                   "effect; repeat training with different seeds (a queued `dvc exp run`) before trusting small "
                   "differences.")
        out.append("- Real-data shift: the benchmark is drawn from the same simulated survey as training; no check "
                   "compares score distributions on real DR10 cutouts.")
        return out

    def q_priorities(self) -> list[str]:
        s, i = self.s, self.i
        out = []
        f = i.m(i.candidate, "data_gates")
        if s.has(f) and s.get(f, "verdict") == "fail":
            out.append(f"Fix the {s.n(f, 'n_gates', 'fail')} failing data gates of {i.candidate} "
                       f"({', '.join(s.get(f, 'failed'))}): a model trained on data that fails its shortcut gates "
                       "cannot be trusted whatever its metrics.")
        mg = i.m(i.candidate, "model_gates")
        failed = [g["gate"] for g in s.get(mg, "gates") if not g["passed"]] if s.has(mg) else []
        if failed:
            out.append(f"Model gate(s) {', '.join(failed)} fail for {i.candidate} (see Model gates).")
        worse = s.get(i.compare, "verdicts", "worse")
        if worse:
            titles = [s.get(i.compare, "metrics", k, "title") for k in worse]
            out.append(f"Investigate where {i.candidate} is worse than {i.baseline}: {'; '.join(titles)}.")
        nr = s.get(i.compare, "verdicts", "not resolvable")
        if nr:
            out.append(f"Enlarge the benchmark where metrics are not resolvable: {', '.join(nr)}.")
        out.append("Measure on real data: anchors in cutouts mode, hard negatives from Galaxy Zoo DECaLS, and a "
                   "training-seed repeat of both generations.")
        return [f"{k}. {text}" for k, text in enumerate(out, 1)]

    def build(self, figures: dict) -> str:
        sections = [self.header(), self.summary(), self.remediations(), self.comparison_table(), self.curves(figures),
                    self.data_gates(),
                    self.model_gates(), self.split(), self.anchors(), self.hard_negatives(), self.injection(figures),
                    self.galleries(figures), self.review()]
        lines = [line for section in sections for line in section]
        if self.missing:
            lines += ["## Missing inputs", ""] + [f"- `{m}`" for m in self.missing] + [""]
        return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- assembling the figures

def read_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(path)


def make_figures(src: Sources, inputs: Inputs, config: ReportConfig, root: Path,
                 arc_snr_samples: dict[str, np.ndarray] | None = None, galleries: bool = True) -> dict[str, bytes]:
    """Every figure the report embeds, as PNG bytes by file name."""
    figures = {}
    curves = {g: read_csv(root / f"plots/{g}/roc.csv") for g in inputs.generations
              if (root / f"plots/{g}/roc.csv").is_file()}
    if curves:
        figures["roc.png"] = roc_figure(curves)
    summaries = {g: src.load(inputs.m(g, "evaluate")) for g in inputs.generations}
    figures["completeness.png"] = completeness_figure(summaries, [
        ("completeness_vs_theta_e", "theta_E (arcsec)", False), ("completeness_vs_arc_snr", "arc_snr", True),
        ("completeness_vs_src_mag_r", "source r mag", False)])
    figures["completeness_diff.png"] = difference_figure(src.load(inputs.compare), [
        ("completeness_theta_e", "theta_E (arcsec)", False), ("completeness_arc_snr", "arc_snr", True)])
    grids = {g: {name: read_csv(root / f"plots/{g}/{name}.csv") for name, _, _ in SELECTION_PANELS}
             for g in inputs.generations
             if all((root / f"plots/{g}/{name}.csv").is_file() for name, _, _ in SELECTION_PANELS)}
    if grids:
        figures["selection_function.png"] = selection_figure(grids)
    if arc_snr_samples:
        figures["arc_snr.png"] = arc_snr_figure(arc_snr_samples, src.opt(inputs.m(inputs.candidate, "inject"),
                                                                          "arc_snr_target"))
    if galleries:
        parts = {name: part["path"] for name, part in src.get(inputs.benchmark, "parts").items()}
        for g in inputs.generations:
            scores = read_table(str(root / f"data/eval/{g}/scores.parquet"))
            threshold = float(src.get(inputs.m(g, "evaluate"), "operating_threshold"))
            for kind, rows in gallery_rows(scores, threshold, config.gallery_n).items():
                if rows.num_rows == 0:
                    continue
                images, labels = gallery_images(rows, {k: str(root / v) for k, v in parts.items()})
                title = {"false_positives": f"{g}: highest-scoring negatives (threshold {threshold:.3f})",
                         "missed_positives": f"{g}: missed positives (score < {threshold:.3f})"}[kind]
                figures[f"gallery_{g}_{kind}.png"] = gallery_png(images, labels, config.gallery_columns, title)
    return figures


def arc_snr_samples(root: Path, inputs: Inputs, benchmark_uri: str | None) -> dict[str, np.ndarray]:
    """arc_snr of the positives of each generation's training data (and of the benchmark)."""
    out = {}
    for name, uri in [(g, str(root / f"data/inject/{g}")) for g in inputs.generations] + \
            ([("benchmark", benchmark_uri)] if benchmark_uri else []):
        if not Path(uri).exists():
            continue
        table = read_table(uri, columns=["arc_snr", "is_control"])
        keep = table.column("is_control").to_numpy() == 0
        out[name] = table.column("arc_snr").to_numpy(zero_copy_only=False).astype(np.float64)[keep]
    return out

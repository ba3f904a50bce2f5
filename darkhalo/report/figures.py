"""The remediation report's figures: ROC, completeness, selection function, arc S/N, galleries.

Drawn with matplotlib's Agg backend from the same metrics files the report reads (and the scores
tables / benchmark pixels for the galleries); ``make_figures`` returns them as PNG bytes by name.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

from darkhalo.io.dataset import iter_chunks, read_table, stamps_of  # noqa: E402
from darkhalo.io.gallery import gallery_png  # noqa: E402
from darkhalo.report.render import Inputs, ReportConfig, Sources  # noqa: E402

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

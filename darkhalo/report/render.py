"""The generated remediation report: reports/remediation.md, rendered from a jinja2 template.

The template (``darkhalo/report/templates/remediation.md.j2``) only renders: every judgement it
states (verdicts, which remediation helped, whether a gate is settled) is read from
metrics/compare.json's ``judgement`` (darkhalo/eval/judgement.py), every number from a metrics or params
file. ``Sources.n`` prints a value and records where it was read (file and JSON pointer) and on
which line it landed; that record is the sidecar ``reports/remediation/sources.json``, which the
tests check against the files. Differences are rounded to their intervals
(``Sources.rounded``); other values to 4 significant digits.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import jinja2
import yaml

from darkhalo.eval.judgement import VERDICTS, interval_decimals, mask_order
from darkhalo.core.params import POSITIVE, build, section

FIGURES = "remediation"        # figures folder, beside remediation.md
SIDECAR = "sources.json"       # in the figures folder: where each number came from
TEMPLATES = Path(__file__).with_name("templates")
TEMPLATE = "remediation.md.j2"
_MARK = "\x1f"                 # brackets a number's index in the rendered text until its line is known


@dataclass(frozen=True)
class ReportConfig:
    """``report:`` params (the judgement thresholds are ``compare:`` params)."""

    gallery_n: int = 12                      # stamps per gallery
    gallery_columns: int = 6


REPORT_RULES = {"gallery_n": POSITIVE, "gallery_columns": POSITIVE}


def report_config(params: dict, path: str) -> ReportConfig:
    return build(ReportConfig, section(params, "report", path), "report", path, REPORT_RULES)


def format_value(value) -> str:
    """The default way the report prints a value: 4 significant digits, ints as is, None as 'n/a'."""
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


def show(value, spec: str) -> str:
    """``value`` printed with a format spec ('+.3f'), or with ``format_value`` when spec is 'text'."""
    if spec == "text" or not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return format_value(value)
    return format(value, spec)


def pointer_of(keys) -> str:
    """JSON pointer (RFC 6901) of a key path, URL-quoted."""
    return "/" + "/".join(quote(str(k).replace("~", "~0").replace("/", "~1"), safe=":@.-_,=+") for k in keys)


def resolve_pointer(doc, pointer: str):
    """The value at an (URL-quoted) JSON pointer; KeyError naming the missing step."""
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
    """Metrics and params files (paths relative to the repository root); ``n`` prints a value and records its source."""

    def __init__(self, root: str | Path = "."):
        self.root = Path(root)
        self._docs: dict[str, object] = {}
        self.numbers: list[dict] = []
        self.missing: list[str] = []

    def has(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def need(self, rel: str) -> bool:
        """``has``, listing an absent file among the report's missing inputs."""
        if self.has(rel):
            return True
        if rel not in self.missing:
            self.missing.append(rel)
        return False

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

    def n(self, rel: str, *keys, spec: str = "text") -> str:
        """The value at ``keys`` of ``rel``, printed with ``spec``; its source goes to the sidecar."""
        value = self.get(rel, *keys)
        self.numbers.append({"file": rel, "pointer": pointer_of(keys), "format": spec, "shown": show(value, spec)})
        return f"{_MARK}{len(self.numbers) - 1}{_MARK}"

    def n_or(self, rel: str, *keys, default: str = "n/a") -> str:
        """``n`` where the key exists, else ``default`` (for fields other stages may not write)."""
        return default if self.opt(rel, *keys) is None else self.n(rel, *keys)

    def interval(self, rel: str, *keys, lo: str = "lo", hi: str = "hi") -> str:
        return f"[{self.n(rel, *keys, lo)}, {self.n(rel, *keys, hi)}]"

    def rate(self, rel: str, *keys) -> str:
        """'rate [lo, hi] (k/n)' of a rate_with_interval dict."""
        return (f"{self.n(rel, *keys, 'rate')} {self.interval(rel, *keys)} "
                f"({self.n(rel, *keys, 'k')}/{self.n(rel, *keys, 'n')})")

    def rounded(self, rel: str, *keys, value: str = "diff", lo: str = "lo", hi: str = "hi", sign: bool = True) -> str:
        """'value [lo, hi]' to the decimals the interval resolves (judgement.interval_decimals); 'n/a' without one."""
        entry = self.get(rel, *keys)
        if any(entry.get(k) is None or not math.isfinite(entry[k]) for k in (value, lo, hi)):
            return self.n(rel, *keys, value)
        spec = f"{'+' if sign else ''}.{interval_decimals(entry[lo], entry[hi])}f"
        return (f"{self.n(rel, *keys, value, spec=spec)} "
                f"[{self.n(rel, *keys, lo, spec=spec)}, {self.n(rel, *keys, hi, spec=spec)}]")

    def union(self, rels, *keys) -> list[str]:
        """Sorted union of the keys of the mapping at ``keys`` in each of ``rels`` (absent: none)."""
        return sorted({k for rel in rels for k in (self.opt(rel, *keys) or {})})

    def place(self, text: str) -> tuple[str, list[dict]]:
        """The rendered text with each number in place, and the sidecar entries with their line numbers."""
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if _MARK in line:
                parts = line.split(_MARK)
                for k in range(1, len(parts), 2):
                    entry = self.numbers[int(parts[k])]
                    entry["line"] = number
                    parts[k] = entry["shown"]
                lines[number - 1] = "".join(parts)
        return "\n".join(lines), [e for e in self.numbers if "line" in e]


@dataclass
class Inputs:
    """What the report reads: generation names, file paths relative to the root."""

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
    lock: str = "dvc.lock"

    @property
    def generations(self) -> list[str]:
        return [self.baseline, self.candidate]

    def m(self, gen: str, name: str) -> str:
        return f"metrics/{gen}/{name}.json"


HEADLINE = ("auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "completeness", "hard_negative_fpr_all", "anchor_recall_tierA",
            "anchor_recall_all", "ece", "gate_1_3_fraction_above", "gate_1_7_retained_fraction")
ABLATION_METRICS = (("auc", "AUC"), ("completeness", "completeness"), ("anchor_recall_tierA", "Tier-A recall"),
                    ("hard_negative_fpr_all", "HN FPR"), ("core_only_auc_model_input", "input core AUC"))


def lock_digest(root: Path, rel: str, own_stage: str = "report") -> str:
    """md5 (12 hex) of dvc.lock without this stage's own entry: the upstream state the report was rendered from
    (the report's own entry is written after it runs, so including it would make the report unreproducible)."""
    path = root / rel
    if not path.is_file():
        return "none"
    lock = yaml.safe_load(path.read_text()) or {}
    stages = {k: v for k, v in (lock.get("stages") or {}).items() if k != own_stage}
    return hashlib.md5(json.dumps(stages, sort_keys=True).encode()).hexdigest()[:12]


def render(root: str | Path, inputs: Inputs, config: ReportConfig, figures: dict) -> tuple[str, dict, list[str]]:
    """(markdown, sidecar document, missing inputs) of the report over the files under ``root``."""
    src = Sources(root)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
                             extensions=["jinja2.ext.do"])
    env.globals.update(mask_order=mask_order, headline=HEADLINE, ablation_metrics=ABLATION_METRICS,
                       verdicts=VERDICTS)
    text = env.get_template(TEMPLATE).render(
        s=src, i=inputs, c=config, figures=figures, figures_dir=FIGURES,
        judgement=src.opt(inputs.compare, "judgement") or {},
        labels={g: f"{g} — {inputs.labels[g]}" if inputs.labels.get(g) else g for g in inputs.generations},
        lock=lock_digest(src.root, inputs.lock))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    text, numbers = src.place(text.strip() + "\n")
    sidecar = {"report": "remediation.md", "numbers": numbers,
               "note": "every number the report prints: the file and JSON pointer it was read from, the format "
                       "spec it was printed with ('text': 4 significant digits) and the report line it is on"}
    return text, sidecar, src.missing

"""Run the suites with Great Expectations and turn each expectation result into a GateResult.

Each expectation's ``meta.table`` names the table it validates; expectations
are grouped per table into one GX batch (a pandas DataFrame) validated with
``batch.validate(suite, expectation_parameters=...)``.  Expectations whose
``needs`` are unmet, whose columns are absent, or that match a ``--skip``
pattern are resolved here without GX (verdict ``fail`` or ``skipped``, with the
reason).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from tqdm import tqdm

COLUMN_KWARGS = ("column", "group_column", "label_column", "cluster_column")
NOT_EVALUATED_ABSENT = "not evaluated (absent)"   # reason prefix of a check whose optional column is absent


@dataclass
class GateResult:
    """One expectation's outcome: verdict 'pass', 'fail' or 'skipped'."""

    id: str
    gate: str
    check: str
    family: str
    title: str
    verdict: str
    kind: str
    kwargs: dict                     # resolved (tolerances filled in)
    table: str = ""                  # the table it validates
    observed: dict = field(default_factory=dict)   # GX result dict (observed_value, unexpected counts, ...)
    reason: str = ""                 # why skipped / why it could not be evaluated
    examples: list[str] = field(default_factory=list)   # offending rows / pixels / columns, human-readable

    @property
    def on_model_input(self) -> bool:
        """Measured on the generation's model input (checks named ``input_*``), not the raw pixels."""
        return self.check.startswith("input_")


def resolve(value, parameters: dict):
    """Fill ``{"$PARAMETER": name}`` references (recursively) from ``parameters``."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            name = value["$PARAMETER"]
            if name not in parameters:
                raise KeyError(f"suite parameter {name!r} has no value (known: {sorted(parameters)})")
            return parameters[name]
        return {k: resolve(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, parameters) for v in value]
    return value


def _skip_reason(meta: dict, skip_patterns: list[str]) -> str:
    for pattern in skip_patterns:
        if fnmatch.fnmatchcase(meta["id"], pattern) or fnmatch.fnmatchcase(meta["gate"], pattern):
            return f"skipped by request ({pattern})"
    return ""


@dataclass
class TableSpec:
    """A table to validate, as column builders called at most once while the table is in use.

    Tables are handed to GX one expectation at a time, as a frame holding only
    the columns that expectation reads: GX's pandas map metrics copy the whole
    frame for every expectation, so narrow frames keep the cost (time and
    memory) proportional to the columns read.
    """

    columns: dict
    _cache: dict = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame) -> "TableSpec":
        return cls({c: (lambda c=c: frame[c].to_numpy()) for c in frame.columns})

    def frame(self, names):
        import pandas as pd

        for name in names:
            if name not in self._cache:
                self._cache[name] = self.columns[name]()
        return pd.DataFrame({name: self._cache[name] for name in names}, copy=False)

    def release(self) -> None:
        self._cache.clear()


def run_suites(docs: dict[str, dict], tables: dict[str, TableSpec], parameters: dict, *,
               table_errors: dict[str, str], unmet: dict[str, tuple[str, str]],
               skip_patterns: list[str]) -> list[GateResult]:
    """Validate every expectation of ``docs`` on ``tables``; results in suite order.

    ``unmet`` maps a need ('pixels', 'assignment') to (verdict, reason) when it
    cannot be met; ``table_errors`` maps a table that could not be built to why.
    Tables are built one at a time and released after validation (memory).
    """
    results: list[GateResult] = []
    pending: list[tuple[int, dict]] = []
    for family, doc in docs.items():
        for expectation in doc["expectations"]:
            meta = expectation["meta"]
            kwargs = resolve(expectation["kwargs"], parameters)
            result = GateResult(meta["id"], meta["gate"], meta["check"], family, meta["title"], "pending",
                                expectation["type"], kwargs, meta["table"])
            results.append(result)
            table_name = meta["table"]
            reason = _skip_reason(meta, skip_patterns)
            if reason:
                result.verdict, result.reason = "skipped", reason
                continue
            need = next((n for n in meta["needs"] if n in unmet), None)
            if need:
                result.verdict, result.reason = unmet[need]
                continue
            if table_name in table_errors:
                result.verdict, result.reason = "fail", table_errors[table_name]
                continue
            missing = [kwargs[k] for k in COLUMN_KWARGS if k in kwargs and kwargs[k] not in tables[table_name].columns]
            if missing:
                if meta["on_missing_column"] == "skip":
                    result.verdict = "skipped"
                    result.reason = f"{NOT_EVALUATED_ABSENT}: column {', '.join(missing)} not in the manifest"
                else:
                    result.verdict, result.reason = "fail", f"column {', '.join(missing)} not in the manifest"
                continue
            pending.append((len(results) - 1, expectation))
    if pending:
        _validate_with_gx(pending, tables, parameters, results)
    return results


def _validate_with_gx(pending: list, tables: dict, parameters: dict, results: list[GateResult]) -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.execution_engine import pandas_execution_engine

    from darkhalo.gates import expectations  # noqa: F401  (registers the custom expectation types)

    # GX fingerprints every pandas batch below 1 GB with an md5 of the whole frame (a batch marker
    # these gates never read): about a second per 10 million rows and table, so it is switched off.
    pandas_execution_engine.HASH_THRESHOLD = 0
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)   # our own tqdm bar covers the run
    definition = context.data_sources.add_pandas("darkhalo_gates").add_dataframe_asset("table") \
        .add_batch_definition_whole_dataframe("frame")
    for i, expectation in tqdm(pending, desc="data gates: expectations", unit="expectation", mininterval=2.0):
        spec = tables[expectation["meta"]["table"]]
        needed = list(dict.fromkeys(results[i].kwargs[k] for k in COLUMN_KWARGS if k in results[i].kwargs))
        frame = spec.frame(needed)
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=f"darkhalo.{expectation['meta']['id']}",
                                    expectations=[{k: expectation[k] for k in ("type", "kwargs", "meta")}])
        validation = batch.validate(suite, expectation_parameters=parameters,
                                    result_format={"result_format": "BASIC", "partial_unexpected_count": 5})
        result = results[i]
        for outcome in validation.results:
            message = _exception_message(outcome.exception_info)
            if message:
                result.verdict = "fail"
                result.reason = f"could not be evaluated: {message}"
                continue
            result.verdict = "pass" if outcome.success else "fail"
            result.observed = _plain(outcome.result)
        del batch, frame
        spec.release()


def _exception_message(info) -> str:
    """The first exception message in a GX exception_info (flat, or keyed by metric), '' if none."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    for value in info.values():
        message = _exception_message(value)
        if message:
            return message
    return ""


def _plain(value):
    """JSON-friendly copy of a GX result (numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value

"""The data-gate suites, defined in code and kept as JSON in ``expectations/``.

Four data-gate suites, one per gate family, and the model-gate suite:

* ``contracts``: schema and dtypes, task_id unique, row contracts 1.2/1.4
  (with the quarantine tolerance), value ranges of injection physics columns,
  controls carry no injection;
* ``split``: no HEALPix pixel in two splits, guard band honoured, each parent in
  one split, pairs intact, declared fractions met, rows agree with the
  assignment table;
* ``shortcuts``: gates 1.1 (quality matched), 1.5 (normalisation statistics
  matched), 1.6 (core-only AUC), 1.8 (core brightness ratio); 1.6 and 1.8 on
  the raw pixels and (checks named ``input_*``) on the generation's model input
  (1.5's statistics are the model input's own normalisation statistics);
* ``priors``: brightness support (the hard negatives' feature S/N inside the
  positives' arc-S/N support);
* ``model_gates``: gates 1.3 (null injection) and 1.7 (arc-suppressed), run by
  ``evaluate@<generation>`` over its scores table (darkhalo/eval/evaluation.py).

Every expectation carries ``meta``: ``id`` (gate:check), ``gate``, ``check``,
``table`` (the table it validates, built by darkhalo.gates.audit), ``needs``
(``pixels`` / ``assignment`` / ``pairing`` / ...), ``on_missing_column`` (``fail`` or ``skip``) and
a ``title``.  Tolerances are ``$PARAMETER`` references filled from the
``gates:`` params at validation time, so the JSON does not change when a
tolerance does.

Regenerate the JSON after editing this module::

    python -m darkhalo.gates.suites            # writes expectations/*.json
    python -m darkhalo.gates.suites --check    # exit 1 if the files are stale
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from darkhalo.core.units import BANDS
from darkhalo.gates.columns import INJECTION_COLUMNS, PHYSICS_RANGES, QUALITY_COLUMNS, SPLIT_NAMES
from darkhalo.gates.contracts import PIXEL_CONTRACTS, ROW_CONTRACTS, flag_column

SUITE_NAMES = ("contracts", "split", "shortcuts", "priors")   # the data-gate families
MODEL_SUITE = "model_gates"                          # gates 1.3 and 1.7, over evaluate's scores table
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "expectations"
NORM_STATS = ("outer_median_nmgy", "outer_sigma_nmgy", "clip_frac")

ROW_CONTRACT_TITLES = {
    "1.2:bandset": "bandset is grz", "1.2:shape": "declared stamp shape", "1.2:bands": "g, r and z all present",
    "1.2:finite": "finite pixels", "1.4:noise": "invvar present and positive where unmasked",
    "contract:cutout_ok": "cutout_ok = 1", "contract:sky": "ra, dec finite sky coordinates",
    "1.2:pixel_range": "pixel values plausible (|flux| <= gates.max_abs_pixel_nmgy)",
    "contract:quality_range": "quality columns within gates.quality_ranges",
}


def _p(name: str) -> dict:
    return {"$PARAMETER": name}


def _e(kind: str, *, id: str, table: str, title: str, needs: tuple = (), on_missing: str = "fail", **kwargs) -> dict:
    gate, _, check = id.partition(":")
    return {"type": kind, "kwargs": kwargs,
            "meta": {"id": id, "gate": gate, "check": check, "table": table, "needs": list(needs),
                     "on_missing_column": on_missing, "title": title}}


def contracts_suite() -> list[dict]:
    """Expectations of the contracts family (gates 1.2, 1.4 and metadata contracts)."""
    out = [
        _e("expect_column_values_to_be_in_set", id="contract:schema", table="schema",
           title="required columns present with the right kind", column="ok", value_set=[True]),
        _e("expect_column_values_to_be_unique", id="contract:task_id_unique", table="rows",
           title="task_id unique", column="task_id"),
        _e("expect_column_values_to_be_in_set", id="contract:is_control", table="rows",
           title="is_control is 0 or 1", column="is_control", value_set=[0, 1]),
        _e("expect_column_values_to_be_in_set", id="contract:region_split", table="split_values",
           title="region_split is train, val or test", column="region_split", value_set=list(SPLIT_NAMES)),
    ]
    for contract in ROW_CONTRACTS:
        out.append(_e("expect_column_values_to_be_in_set", id=contract, table="rows",
                      title=ROW_CONTRACT_TITLES[contract], needs=("pixels",) if contract in PIXEL_CONTRACTS else (),
                      column=flag_column(contract), value_set=[True], mostly=_p("row_contract_mostly")))
    out.append(_e("expect_column_max_to_be_between", id="contract:quarantine_fraction", table="quarantine",
                  title="quarantined fraction of rows within tolerance", column="quarantined_frac",
                  min_value=0.0, max_value=_p("max_quarantine_frac")))
    for column, (low, high) in PHYSICS_RANGES.items():   # per column: consecutive, so it is read once
        out.append(_e("expect_column_values_to_be_between", id=f"contract:range:{column}", table="physics_positives",
                      title=f"{column} within [{low:g}, {high:g}] on positives", on_missing="skip",
                      column=column, min_value=low, max_value=high))
        if column in INJECTION_COLUMNS:
            out.append(_e("expect_column_values_to_not_be_null", id=f"contract:injected:{column}",
                          table="physics_positives", title=f"{column} set on every positive", on_missing="skip",
                          column=column))
            out.append(_e("expect_column_values_to_be_null", id=f"contract:control_null:{column}",
                          table="physics_controls", title=f"{column} null on every control", on_missing="skip",
                          column=column))
    return out


def split_suite() -> list[dict]:
    """Expectations of the split family."""
    return [
        _e("expect_column_values_to_be_between", id="split:disjoint", table="pixels",
           title="no HEALPix pixel in two splits", column="n_splits", max_value=1),
        _e("expect_column_values_to_be_between", id="split:guard", table="pixels",
           title="no pixel of another split within the guard band", column="n_other_splits_within_guard",
           max_value=0),
        _e("expect_column_values_to_be_between", id="split:parent", table="parents", needs=("pairing",),
           title="every stamp of a parent in one split", column="n_splits", max_value=1),
        _e("expect_column_values_to_be_in_set", id="split:pairs", table="pairs", needs=("pairing",),
           title="pairs intact: one positive and one control per (parent_id, replicate)", column="unpaired",
           value_set=[0], mostly=_p("pairs_mostly")),
        _e("expect_column_values_to_be_between", id="split:fractions", table="fractions",
           title="split fractions as declared", column="abs_fraction_deviation",
           max_value=_p("split_fraction_tolerance")),
        _e("expect_column_values_to_be_in_set", id="split:assignment", table="survivors",
           needs=("assignment", "pairing"),
           title="region_split as in the split stage's assignment (no guard-band parents)",
           column="split_agrees_with_assignment", value_set=[True]),
        _e("expect_column_values_to_be_in_set", id="split:healpix_pixel", table="survivors", on_missing="skip",
           title="stored healpix_pixel equals the pixel of (ra, dec)", column="healpix_pixel_agrees",
           value_set=[True]),
    ]


def shortcuts_suite() -> list[dict]:
    """Expectations of the shortcut family (gates 1.1, 1.5, 1.6, 1.8)."""
    out = [_e("expect_column_two_group_effect_sizes_to_be_within", id=f"1.1:{column}", table="survivors",
              title=f"{column} matched between positives and controls", on_missing="skip", column=column,
              group_column="is_control",
              positive_value=0, max_ks_d=_p("quality_max_ks_d"), max_abs_smd=_p("quality_max_abs_smd"))
           for column in QUALITY_COLUMNS]
    for stat in NORM_STATS:
        for band in BANDS:
            out.append(_e("expect_column_two_group_effect_sizes_to_be_within", id=f"1.5:{stat}_{band}",
                          table="stamps", needs=("pixels",), title=f"normalisation {stat} ({band}) matched",
                          column=f"{stat}_{band}", group_column="is_control", positive_value=0,
                          max_ks_d=_p("norm_max_ks_d"), max_abs_smd=_p("norm_max_abs_smd")))
    out.append(_e("expect_column_roc_auc_to_be_between", id="1.6:core_only_auc", table="core_scores",
                  needs=("pixels",), title="core-only classifier cannot tell positives from controls",
                  column="core_only_score", label_column="is_control", positive_value=0,
                  min_value=_p("core_auc_min"), max_value=_p("core_auc_max")))
    for band in BANDS:
        out.append(_e("expect_column_group_mean_ratio_to_be_between", id=f"1.8:core_flux_ratio_{band}",
                      table="stamps", needs=("pixels",), title=f"mean core flux ({band}) positives / controls",
                      column=f"core_flux_nmgy_{band}", group_column="is_control", positive_value=0,
                      cluster_column="pair_key", min_value=_p("core_flux_ratio_min"),
                      max_value=_p("core_flux_ratio_max")))
    # gates 1.6 and 1.8 on the generation's model input (what the network sees); these block
    out.append(_e("expect_column_roc_auc_to_be_between", id="1.6:input_core_only_auc", table="core_scores_input",
                  needs=("pixels", "model_input"),
                  title="model input: core-only classifier cannot tell positives from controls",
                  column="core_only_score", label_column="is_control", positive_value=0,
                  min_value=_p("core_auc_min"), max_value=_p("core_auc_max")))
    for band in BANDS:
        out.append(_e("expect_column_group_mean_ratio_to_be_between", id=f"1.8:input_core_rms_ratio_{band}",
                      table="stamps", needs=("pixels", "model_input"),
                      title=f"model input: mean core RMS ({band}) positives / controls",
                      column=f"input_core_rms_{band}", group_column="is_control", positive_value=0,
                      cluster_column="pair_key", min_value=_p("core_flux_ratio_min"),
                      max_value=_p("core_flux_ratio_max")))
    return out


def priors_suite() -> list[dict]:
    """Expectations of the priors family: the training positives cover what the model is shown as negative."""
    return [_e("expect_column_max_to_be_between", id="brightness:support", table="brightness_support",
               needs=("hard_negatives",), title="hard negatives no brighter than the positives: fraction above "
               "the positives' arc-S/N quantile", column="frac_above_positive_quantile",
               min_value=0.0, max_value=_p("brightness_max_frac_above"))]


def model_gates_suite() -> list[dict]:
    """Expectations of the model gates, over per-row outcome columns of the benchmark scores table.

    ``control_above_threshold``: 1 where a test control scores >= the operating threshold (1.3);
    ``detected_retained``: 1 where a detected positive (arc light left in the core below
    ``gate17_max_core_arc_snr``) is still detected with the arc removed outside the core (1.7).  Their means are the rates.
    """
    return [
        _e("expect_column_mean_to_be_between", id="1.3:fraction_above_threshold", table="model_scores",
           title="null injection: test controls above the operating threshold", column="control_above_threshold",
           min_value=0.0, max_value=_p("gate13_max_fraction_above")),
        _e("expect_column_mean_to_be_between", id="1.7:retained_fraction", table="model_scores",
           title="arc-suppressed: detected positives still detected with the arc removed", column="detected_retained",
           min_value=0.0, max_value=_p("gate17_max_retained_fraction")),
    ]


BUILDERS = {"contracts": contracts_suite, "split": split_suite, "shortcuts": shortcuts_suite, "priors": priors_suite,
            MODEL_SUITE: model_gates_suite}


def suite_json(name: str) -> dict:
    """The JSON document of one suite, as GX 1.x serialises it (validated by building it with GX)."""
    import great_expectations as gx

    from darkhalo.gates import expectations  # noqa: F401  (registers the custom expectation types)

    gx.get_context(mode="ephemeral")
    suite = gx.ExpectationSuite(name=name, expectations=BUILDERS[name]())
    doc = suite.to_json_dict()
    doc.pop("id", None)
    for expectation in doc["expectations"]:
        expectation.pop("id", None)
    doc["meta"] = {"great_expectations_version": gx.__version__,
                   "generated_by": "python -m darkhalo.gates.suites"}
    return doc


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def load_suite_docs(directory: str | Path = DEFAULT_DIR, names: tuple = SUITE_NAMES) -> dict[str, dict]:
    """The committed suite JSON documents, by name; missing or unreadable files fail loudly."""
    directory = Path(directory)
    docs = {}
    for name in names:
        path = directory / f"{name}.json"
        try:
            docs[name] = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: suite missing; regenerate with `python -m darkhalo.gates.suites`") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return docs


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from darkhalo.core.outputs import atomic_write_bytes

    parser = argparse.ArgumentParser(description="Write (or --check) the data-gate suites in expectations/.")
    parser.add_argument("--out", default=str(DEFAULT_DIR))
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed suite differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for name in SUITE_NAMES + (MODEL_SUITE,):
        path = Path(args.out) / f"{name}.json"
        text = render(suite_json(name))
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            atomic_write_bytes(path, text.encode("utf-8"))
            print(f"wrote {path}")
    if stale:
        print("stale suites (run `python -m darkhalo.gates.suites`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

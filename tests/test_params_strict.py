"""params.yaml is refused at load when a key is repeated or unknown, and when a value leaves its physical range."""
from __future__ import annotations

import dataclasses
import importlib
import re

import pytest
import yaml

from conftest import REPO, gates_params, review_params, tiny_params, write_params
from darkhalo.sim.anchors_config import SIMULATION_KEYS, AnchorsConfig
from darkhalo.eval.compare import CompareConfig
from darkhalo.io.cutouts import CutoutConfig
from darkhalo.eval.evaluation import EvaluateConfig, evaluate_config
from darkhalo.sim.anchors_config import anchors_config
from darkhalo.io.galaxy_zoo import GalaxyZooConfig, galaxy_zoo_config
from darkhalo.gates.config import GatesConfig
from darkhalo.sim.hard_negatives import HardNegativesConfig, hard_negatives_config
from darkhalo.sim.injection import EngineSettings, benchmark_spec, engine_settings, generation_spec
from darkhalo.core.params import EACH, SCHEMA, TRAIN, ParamError, check_keys, load_params
from darkhalo.report.render import ReportConfig
from darkhalo.core.runtime import Runtime, runtime_config
from darkhalo.sim.split import SplitConfig, split_config
from darkhalo.sim.survey import SurveyConfig, survey_config
from darkhalo.ml.config import TrainConfig, train_config
from stages.survey_gallery import GalleryConfig

GENERATION_KEYS = ("arc_snr_target, gates_blocking, label, n_candidates, n_clumps, priors, replicates, "
                   "source_bank, train")


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def refused(tmp_path, params: dict) -> str:
    """The ParamError message load_params gives for ``params`` written to bad.yaml."""
    path = write_params(tmp_path / "bad.yaml", params)
    with pytest.raises(ParamError) as info:
        load_params(path)
    return str(info.value)


def test_repository_params_load_and_validate_cleanly():
    path = REPO / "params.yaml"
    params = load_params(path)
    survey_config(params, path)
    evaluate_config(params, path)
    benchmark_spec(params, path)
    for name in params["generations"]:
        generation_spec(params, name, path)
        train_config(params, name, path)


@pytest.mark.parametrize("make", [tiny_params, gates_params, review_params])
def test_fixture_params_pass_the_structure_check(make):
    check_keys(make(), SCHEMA, "params.yaml")


@pytest.mark.parametrize("keys,cls,extra", [
    (("runtime",), Runtime, set()),
    (("survey",), SurveyConfig, {"seed", "workers", "engine", "cutout_workers"}),
    (("survey_gallery",), GalleryConfig, set()),
    (("inject",), EngineSettings, {"default_priors", "device", "workers", "engine"}),
    (("train",), TrainConfig, {"threads", "device"}),
    (("evaluate",), EvaluateConfig, set()), (("split",), SplitConfig, {"seed"}), (("gates",), GatesConfig, {"seed"}),
    (("hard_negatives",), HardNegativesConfig, {"workers"}),
    (("hard_negatives", "galaxy_zoo"), GalaxyZooConfig, {"cutout_workers"}),
    (("hard_negatives", "galaxy_zoo", "cutout"), CutoutConfig, {"workers"}),
    (("anchors",), AnchorsConfig, {"cutout_workers"}),
    (("compare",), CompareConfig, {"seed"}), (("report",), ReportConfig, set()),
])
def test_schema_lists_exactly_the_dataclass_fields(keys, cls, extra):
    """``extra``: a field set from elsewhere (the global seed, a ``runtime`` setting) or a key parsed apart
    (inject.default_priors)."""
    schema = SCHEMA
    for key in keys:
        schema = schema[key]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(schema) - extra == fields - extra, f"darkhalo/core/params.py SCHEMA{list(keys)} differs from {cls.__name__}"


def test_schema_of_generation_and_simulation_entries():
    assert SCHEMA["generations"][EACH]["train"] is TRAIN
    assert set(SCHEMA["anchors"]["simulation"][EACH]) == set(SIMULATION_KEYS)


# --- the reported cases ---------------------------------------------------------------------

def test_misspelt_key_inside_a_generation(tmp_path):
    params = repo_params()
    params["generations"]["gen5p"]["n_clump"] = 3
    message = refused(tmp_path, params)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: generations.gen5p: unknown key 'n_clump' "
                              "(did you mean 'n_clumps'?)")
    assert f"(known: {GENERATION_KEYS})" in message


def test_misspelt_train_block_of_a_generation(tmp_path):
    params = repo_params()
    params["generations"]["gen5"]["trian"] = {"epochs": 50}
    message = refused(tmp_path, params)
    assert "bad.yaml: generations.gen5: unknown key 'trian' (did you mean 'train'?)" in message
    assert f"(known: {GENERATION_KEYS})" in message


def test_unknown_key_inside_a_generation_train_block(tmp_path):
    params = repo_params()
    params["generations"]["gen5p"]["train"]["epoch"] = 5
    message = refused(tmp_path, params)
    assert "bad.yaml: generations.gen5p.train: unknown key 'epoch' (did you mean 'epochs'?)" in message
    assert "early_stopping_patience" in message.split("known: ")[1]


def test_unknown_top_level_section(tmp_path):
    params = repo_params()
    params["surveyy"] = {"n_parents": 10}
    message = refused(tmp_path, params)
    assert "bad.yaml: top level: unknown key 'surveyy' (did you mean 'survey'?)" in message
    assert "(known: ablation, anchors, benchmark, compare, evaluate, gates, generations, " in message


def test_repeated_key_names_file_key_and_line(tmp_path):
    lines = (REPO / "params.yaml").read_text().splitlines()
    gen5p = lines.index("  gen5p:")
    first = next(i for i in range(gen5p, len(lines)) if lines[i].startswith("    n_clumps:"))
    lines.insert(first + 1, "    n_clumps: 0")
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamError, match=re.escape(f"{path}: line {first + 2}: duplicate key 'n_clumps' "
                                                   f"(first at line {first + 1})")):
        load_params(path)


def test_repeated_top_level_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nsplit: {nside: 32}\nseed: 2\n")
    with pytest.raises(ParamError, match=re.escape(f"{path}: line 3: duplicate key 'seed' (first at line 1)")):
        load_params(path)


@pytest.mark.parametrize("module,argv", [
    ("survey", []), ("survey_gallery", []), ("split", []), ("hard_negatives", []), ("anchors", []),
    ("inject", ["--generation", "gen5"]), ("data_gates", ["--generation", "gen5"]),
    ("train", ["--generation", "gen5"]), ("evaluate", ["--generation", "gen5"]), ("compare", []), ("report", []),
])
def test_every_stage_refuses_the_file_before_any_work(tmp_path, monkeypatch, module, argv):
    params = repo_params()
    params["generations"]["gen5"]["trian"] = {"epochs": 50}
    path = write_params(tmp_path / "bad.yaml", params)
    monkeypatch.chdir(tmp_path)   # default inputs (data/...) do not exist here: only the params check can fail
    stage = importlib.import_module(f"stages.{module}")
    with pytest.raises(ParamError, match=r"bad\.yaml: generations\.gen5: unknown key 'trian'"):
        stage.main([*argv, "--params", str(path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


RUNTIME_FIELDS = {"workers", "engine", "threads", "device", "cutout_workers"}


def test_runtime_fields_reach_every_science_config_and_no_science_section_holds_them():
    params = repo_params()
    params["runtime"] = {"workers": 3, "engine": "spark", "threads": 5, "device": "auto", "cutout_workers": 7}
    path = "params.yaml"
    check_keys(params, SCHEMA, path)
    assert runtime_config(params, path) == Runtime(3, "spark", 5, "auto", 7)
    survey = survey_config(params, path)
    assert (survey.workers, survey.engine, survey.cutout_workers) == (3, "spark", 7)
    engine = engine_settings(params, path)
    assert (engine.workers, engine.engine, engine.device) == (3, "spark", "auto")
    assert (train_config(params, "gen5p", path).threads, train_config(params, "gen5p", path).device) == (5, "auto")
    assert hard_negatives_config(params, path).workers == 3
    assert anchors_config(params, path).cutout_config.workers == 7
    assert galaxy_zoo_config(params["hard_negatives"]["galaxy_zoo"], path, 7).cutout_config.workers == 7
    science = {k: v for k, v in SCHEMA.items() if k != "runtime"}

    def keys(schema):
        for key, sub in schema.items():
            yield key
            if isinstance(sub, dict):
                yield from keys(sub)
    assert not RUNTIME_FIELDS & set(keys(science)), "an execution setting is back in a science section"


def test_runtime_section_is_optional():
    params = repo_params()
    del params["runtime"]
    assert runtime_config(params, "params.yaml") == Runtime()


@pytest.mark.parametrize("where,key,home", [
    (("inject",), "device", "runtime.device"), (("inject",), "workers", "runtime.workers"),
    (("survey",), "engine", "runtime.engine"), (("train",), "threads", "runtime.threads"),
    (("generations", "gen5p", "train"), "device", "runtime.device"),
    (("hard_negatives",), "workers", "runtime.workers"),
    (("anchors", "cutout"), "workers", "runtime.cutout_workers"),
])
def test_an_execution_setting_in_a_science_section_names_its_runtime_key(tmp_path, where, key, home):
    params = repo_params()
    node = params
    for name in where:
        node = node[name]
    node[key] = 1
    message = refused(tmp_path, params)
    assert f"bad.yaml: {'.'.join(where)}: unknown key {key!r} (now {home}: execution settings are not science " \
           "params)" in message


def test_bad_runtime_values_name_file_and_key():
    params = repo_params()
    params["runtime"]["workers"] = 0
    with pytest.raises(ParamError, match=r"^params\.yaml: runtime\.workers = 0: must be > 0$"):
        runtime_config(params, "params.yaml")
    params["runtime"] = {"device": "tpu"}
    with pytest.raises(ParamError, match=r"^params\.yaml: runtime\.device = 'tpu': must be cpu, cuda or auto$"):
        survey_config(params, "params.yaml")


def test_builder_refuses_a_key_supplied_from_elsewhere():
    params = repo_params()
    params["split"]["seed"] = 5   # the global seed is used; a section seed would be silently ignored
    with pytest.raises(ParamError, match=r"params\.yaml: split: unknown key 'seed' \(known: guard_rings, "):
        split_config(params, "params.yaml")


# --- physical ranges ------------------------------------------------------------------------

@pytest.mark.parametrize("name,spec,message", [
    ("theta_e_arcsec", {"grid": [0.0, 0.5]}, r"draws span \[0, 0\.5\]; theta_e_arcsec must be > 0"),
    ("theta_e_arcsec", {"normal": [1.0, 0.3]}, r"draws span \[-inf, inf\]; theta_e_arcsec must be > 0"),
    ("src_q", {"uniform": [0.4, 1.2]}, r"draws span \[0\.4, 1\.2\]; src_q must be within \(0, 1\]"),
    ("src_reff_arcsec", {"value": -0.1}, r"src_reff_arcsec must be > 0"),
    ("src_n_sersic", {"uniform": [0.0, 2.0]}, r"src_n_sersic must be > 0"),
    ("shear", {"normal": [0.0, 0.05], "clip": [-0.1, 0.1]}, r"draws span \[-0\.1, 0\.1\]; shear must be >= 0"),
    ("src_offset_theta_e", {"uniform": [-0.2, 0.8]}, r"src_offset_theta_e must be >= 0"),
    ("src_clump_flux_frac", {"uniform": [0.0, 1.5]}, r"src_clump_flux_frac must be within \[0, 1\]"),
    ("clump_sigma_arcsec", {"grid": [0.0]}, r"clump_sigma_arcsec must be > 0"),
])
def test_prior_outside_its_physical_range(name, spec, message):
    params = repo_params()
    params["generations"]["gen5p"]["priors"][name] = spec
    with pytest.raises(ParamError, match=rf"^params\.yaml: generations\.gen5p\.priors.*\.{name} = .*{message}$"):
        generation_spec(params, "gen5p", "params.yaml")


def test_clipped_normal_inside_the_range_is_accepted():
    params = repo_params()
    params["generations"]["gen5p"]["priors"]["theta_e_arcsec"] = {"normal": [1.0, 0.3], "clip": [0.3, 3.0]}
    assert generation_spec(params, "gen5p", "params.yaml").priors.priors["theta_e_arcsec"].extremes == (0.3, 3.0)


def test_arc_snr_target_must_be_positive():
    params = repo_params()
    params["benchmark"]["injection"]["arc_snr_target"] = {"uniform": [0, 100]}
    with pytest.raises(ParamError, match=r"^params\.yaml: benchmark\.injection\.arc_snr_target = .*"
                                         r"draws span \[0, 100\]; arc_snr_target must be > 0$"):
        benchmark_spec(params, "params.yaml")


@pytest.mark.parametrize("key", ["theta_e_edges", "arc_snr_edges", "src_mag_edges"])
def test_descending_bin_edges_are_refused(key):
    params = repo_params()
    params["evaluate"][key] = params["evaluate"][key][::-1]
    with pytest.raises(ParamError, match=rf"^params\.yaml: evaluate\.{key} = .*: must be at least 2 strictly "
                                         r"increasing values$"):
        evaluate_config(params, "params.yaml")

"""The `survey` and `survey_gallery` stages as DVC runs them: determinism, bad params, outputs."""
from __future__ import annotations

import json

import pytest

from conftest import assert_same_parquet_files, run_on_other_cpu, tiny_params, write_params
from darkhalo.core.outputs import atomic_dir
from darkhalo.core.params import ParamError
from stages import survey, survey_gallery


def run_survey(tmp_path, name, runtime=None, **overrides):
    out = tmp_path / name
    params = write_params(tmp_path / f"{name}.yaml", tiny_params(runtime, **overrides))
    survey.main(["--params", str(params), "--out", str(out), "--metrics", str(tmp_path / f"{name}.json")])
    return out


def test_same_params_give_byte_identical_shards_whatever_the_worker_count(tmp_path):
    a = run_survey(tmp_path, "a", {"workers": 1})
    b = run_survey(tmp_path, "b", {"workers": 2})
    files_a, files_b = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    assert files_a == files_b == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_another_cpu_writes_the_same_bytes(tmp_path):
    """numpy's dispatch limited to the x86-64-v2 baseline (another CPU's exp/sin/log10) gives this machine's
    bytes: catalogue values are rounded to float32 precision where they are computed (units.catalogue_precision;
    before, gal_b_deg, ebv, psfsize, fluxes and magnitudes differed in their last bit)."""
    a = run_survey(tmp_path, "a", {"workers": 1})
    params = write_params(tmp_path / "c.yaml", tiny_params({"workers": 1}))
    run_on_other_cpu("survey", "--params", params, "--out", tmp_path / "c", "--metrics", tmp_path / "c.json")
    assert_same_parquet_files(a, tmp_path / "c")


def test_survey_metrics_report_defects_and_sky_coverage(tiny_survey):
    metrics = json.loads((tiny_survey.parent / "survey.json").read_text())
    assert metrics["n_parents"] == 48
    assert 1 <= metrics["n_healpix_pixels_nside32"] <= 6
    d = metrics["defects"]
    assert d["nan_pixel_stamps"] > 0 and d["missing_band_stamps"] > 0 and d["masked_stamps"] > 0
    assert d["nan_pixel_stamps_cutout_ok"] + d["missing_band_stamps_cutout_ok"] > 0


@pytest.mark.parametrize("key,value,message", [
    ("n_parents", -5, r"survey\.n_parents = -5: must be > 0"),
    ("stamp_size", 8, r"survey\.stamp_size = 8: must be >= 16"),
    ("nan_stamp_frac", 1.5, r"survey\.nan_stamp_frac = 1\.5: must be within \[0, 1\]"),
    ("n_parents", "many", r"survey\.n_parents = 'many': must be of type int"),
    ("n_parnets", 5, r"survey: unknown key 'n_parnets' \(did you mean 'n_parents'\?\)"),
])
def test_bad_params_fail_naming_file_and_key(tmp_path, key, value, message):
    params = tiny_params()
    params["survey"][key] = value
    path = write_params(tmp_path / "bad_params.yaml", params)
    with pytest.raises(ParamError, match=r"bad_params\.yaml: .*" + message):
        survey.main(["--params", str(path), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_failed_stage_leaves_previous_output_untouched(tmp_path):
    out = run_survey(tmp_path, "good")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="worker died"):
        with atomic_dir(out) as tmp:
            (tmp / "part-00000.parquet").write_bytes(b"half written")
            raise RuntimeError("worker died")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob("good.tmp-*"))


def test_gallery_is_a_png_of_the_survey(tiny_survey, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    out = tmp_path / "gallery.png"
    survey_gallery.main(["--params", str(params), "--survey", str(tiny_survey), "--out", str(out)])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000

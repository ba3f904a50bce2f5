"""`survey` on real parents (issue 12 item 2): manifest and targets modes, and `dvc repro` on them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import (DVC, copy_project, cutout_fits_bytes, init_repo, pipeline_params, run_command, tiny_params,
                      write_params)

from darkhalo.io.dataset import content_hash, read_table, write_parquet
from darkhalo.io.stamps import StampBatch, legacy_blobs, stamps_from_native
from stages import survey

# What the users' legacy parent manifests carry (docs/domain.md "The users' data"): depth in r only, no lrg_*.
LEGACY_COLUMNS = ["task_id", "ra", "dec", "brickname", "psfsize_r", "psfdepth_r", "ebv", "cutout_ok", "bad_pixel_frac"]
CUTOUT_PATH = "/cutout.fits"


def embedded_survey(root: Path, **overrides) -> pa.Table:
    """A tiny embedded survey written by the real stage under ``root``; returns it (pixels included)."""
    params = write_params(root / "params_embedded.yaml", tiny_params(**overrides))
    survey.main(["--params", str(params), "--out", str(root / "embedded"), "--metrics", str(root / "embedded.json")])
    return read_table(str(root / "embedded"))


def legacy_manifest(path: Path, table: pa.Table) -> Path:
    """``table`` as the users' legacy layout: LEGACY_COLUMNS and ``stamp_npz`` without invvar planes, rows shuffled."""
    batch = stamps_from_native(table)
    blobs = legacy_blobs(StampBatch(batch.image, batch.invvar, batch.present, np.zeros_like(batch.present)))
    ids = table.column("parent_id").to_numpy()
    out = table.append_column("task_id", pa.array([f"gen5-{i:06d}" for i in ids])).append_column("stamp_npz", blobs)
    out = out.select(LEGACY_COLUMNS + ["stamp_npz"]).take(pa.array(np.random.default_rng(0).permutation(len(ids))))
    write_parquet(out, path, 16)
    return path


def real_params(mode: str, source: str, **survey_overrides) -> dict:
    params = tiny_params(**survey_overrides)
    params["survey"].update(mode=mode, **{mode: source})
    return params


def run_survey(root: Path, params: dict) -> tuple[pa.Table, dict]:
    path = write_params(root / "params.yaml", params)
    survey.main(["--params", str(path), "--out", str(root / "survey"), "--metrics", str(root / "survey.json")])
    return read_table(str(root / "survey")), json.loads((root / "survey.json").read_text())


def test_embedded_mode_is_unchanged_by_the_real_mode_keys(tmp_path):
    """The default (embedded) writes the same bytes whether or not the real-mode keys are spelled out."""
    params = tiny_params(n_parents=12, shard_rows=12)
    bare = {k: v for k, v in params["survey"].items()
            if k not in ("mode", "manifest", "targets", "cutout", "cache_dir", "max_failed_fraction")}
    for name, section in (("full", params["survey"]), ("bare", bare)):
        write_params(tmp_path / f"{name}.yaml", {**params, "survey": section})
        survey.main(["--params", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name),
                     "--metrics", str(tmp_path / f"{name}.json")])
    assert content_hash(tmp_path / "full") == content_hash(tmp_path / "bare")
    assert (tmp_path / "full.json").read_bytes() == (tmp_path / "bare.json").read_bytes()


def test_manifest_mode_writes_the_embedded_schema_with_measured_columns(tmp_path):
    truth = embedded_survey(tmp_path, n_parents=24, shard_rows=24, nan_stamp_frac=0.0, missing_band_frac=0.0)
    manifest = legacy_manifest(tmp_path / "manifest.parquet", truth)
    table, metrics = run_survey(tmp_path, real_params("manifest", str(manifest), shard_rows=10))
    assert table.schema.names == truth.schema.names
    assert [f.type for f in table.schema] == [f.type for f in truth.schema]
    assert len(list((tmp_path / "survey").glob("part-*.parquet"))) == 3   # shard_rows rows each, the last fewer
    table = table.sort_by("parent_id")   # parts follow the manifest's row order, each sorted by parent_id
    # parent_id = rank of (ra, dec); the embedded ids are row numbers, unrelated to position
    order = np.lexsort((truth.column("dec").to_numpy(), truth.column("ra").to_numpy()))
    assert np.array_equal(table.column("ra").to_numpy(), truth.column("ra").to_numpy()[order])
    assert np.array_equal(table.column("parent_id").to_numpy(), np.arange(24))
    true = truth.take(pa.array(order))
    # psfdepth_g measured from the (MAD-estimated) invvar and the PSF NEA: within 25% of the simulated depth
    ratio = table.column("psfdepth_g").to_numpy() / true.column("psfdepth_g").to_numpy()
    assert np.median(ratio) == pytest.approx(1.0, abs=0.25)
    # aperture flux: a lower bound on the model flux, within a factor ~2 of it
    flux = table.column("lrg_flux_nmgy_r").to_numpy() / true.column("lrg_flux_nmgy_r").to_numpy()
    assert 0.4 < np.median(flux) <= 1.05, flux
    offset = np.hypot(table.column("lrg_x_arcsec").to_numpy() - true.column("lrg_x_arcsec").to_numpy(),
                      table.column("lrg_y_arcsec").to_numpy() - true.column("lrg_y_arcsec").to_numpy())
    assert np.median(offset) < 0.3  # arcsec
    for name in ("psfsize_g", "psfsize_z", "lrg_q", "lrg_phi_rad", "lrg_mag_r", "mw_transmission_z"):
        assert np.isfinite(table.column(name).to_numpy()).all(), name
    assert np.array_equal(table.column("psfsize_r").to_numpy(), true.column("psfsize_r").to_numpy())
    source = metrics["source"]
    assert source["mode"] == "manifest" and source["parents_in"] == 24 and source["dropped"] == 0
    assert source["provenance"]["psfdepth_g"] == {"measured: median invvar / PSF NEA": 24}
    assert source["provenance"]["psfdepth_r"] == {"input": 24}
    assert metrics["n_parents"] == 24 and "neighbours_per_stamp_mean" not in metrics


def test_manifest_mode_reads_s3_and_writes_the_bytes_of_the_local_manifest(tmp_path, monkeypatch):
    """A manifest on S3 (moto on 127.0.0.1), as s3:// and s3a://, gives the survey of the same file read locally."""
    from test_s3_remote import BUCKET, CREDENTIALS, s3_server

    from darkhalo.io.dataset import resolve_uri

    truth = embedded_survey(tmp_path, n_parents=12, shard_rows=12, nan_stamp_frac=0.0, missing_band_frac=0.0)
    manifest = legacy_manifest(tmp_path / "manifest.parquet", truth)
    runs = {}
    with s3_server(BUCKET) as endpoint:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(name, value)
        fs, key = resolve_uri(f"s3://{BUCKET}/parents/manifest.parquet")
        with fs.open_output_stream(key) as out:
            out.write(manifest.read_bytes())
        for name, uri in (("local", str(manifest)), ("s3", f"s3://{BUCKET}/parents/manifest.parquet"),
                          ("s3a", f"s3a://{BUCKET}/parents/manifest.parquet")):
            (tmp_path / name).mkdir()
            table, metrics = run_survey(tmp_path / name, real_params("manifest", uri))
            runs[name] = (content_hash(tmp_path / name / "survey"), metrics["n_parents"])
    assert runs["s3"] == runs["s3a"] == runs["local"] and runs["local"][1] == 12


def test_hive_stamp_manifest_contributes_its_controls_only(tmp_path):
    """A Gen5-style stamp manifest (hive-partitioned, ``is_control``): positives are not parents."""
    from conftest import write_manifest

    truth = embedded_survey(tmp_path, n_parents=12, shard_rows=12)
    legacy = read_table(str(legacy_manifest(tmp_path / "flat.parquet", truth)))
    n = legacy.num_rows
    legacy = legacy.append_column("is_control", pa.array(np.arange(n) % 2, pa.int8())).append_column(
        "region_split", pa.array(["train", "val", "test"] * (n // 3)))
    root = write_manifest(legacy, tmp_path / "manifest", row_group_rows=4)
    table, metrics = run_survey(tmp_path, real_params("manifest", str(root)))
    assert table.num_rows == n // 2 and metrics["source"]["not_controls_skipped"] == n // 2
    assert sorted(table.column("ra").to_pylist()) == sorted(
        ra for ra, c in zip(legacy.column("ra").to_pylist(), np.arange(n) % 2) if c == 1)


def test_manifest_missing_a_needed_column_names_file_and_column(tmp_path):
    truth = embedded_survey(tmp_path, n_parents=4, shard_rows=4)
    manifest = legacy_manifest(tmp_path / "manifest.parquet", truth)
    write_parquet(read_table(str(manifest)).drop_columns(["psfsize_r"]), manifest)
    with pytest.raises(ValueError, match=r"manifest\.parquet: missing column\(s\) \['psfsize_r'\]"):
        run_survey(tmp_path, real_params("manifest", str(manifest)))


def test_targets_with_a_nan_ra_names_the_row(tmp_path):
    targets = tmp_path / "targets.csv"
    targets.write_text("ra,dec,psfsize_r,ebv\n150.1,2.2,1.2,0.02\n,2.3,1.1,0.02\n")
    with pytest.raises(ValueError, match=r"targets\.csv: row 1 \(line 3\): ra = nan"):
        run_survey(tmp_path, real_params("targets", str(targets)))


def target_list(path: Path, truth: pa.Table) -> Path:
    """A Tractor-like target list (CSV) at the positions of ``truth``'s parents."""
    cols = {"ra": truth.column("ra"), "dec": truth.column("dec"), "type": truth.column("lrg_type"),
            "shape_r": truth.column("lrg_reff_arcsec"), "ebv": truth.column("ebv")}
    for b in "grz":
        cols.update({f"flux_{b}": truth.column(f"lrg_flux_nmgy_{b}"), f"psfsize_{b}": truth.column(f"psfsize_{b}"),
                     f"psfdepth_{b}": truth.column(f"psfdepth_{b}")})
    pa.table(cols).to_pandas().to_csv(path, index=False)
    return path


def fits_of(table: pa.Table, row: int) -> bytes:
    batch = stamps_from_native(table.slice(row, 1))
    return cutout_fits_bytes(np.nan_to_num(batch.image[0]), batch.invvar[0])


def targets_params(path: Path, base: str, cache: Path, **survey_overrides) -> dict:
    params = real_params("targets", str(path), **survey_overrides)
    params["survey"]["cutout"].update(base_url=base + CUTOUT_PATH, retries=0, backoff_s=0.0, timeout_s=5.0)
    params["runtime"]["cutout_workers"] = 1
    params["survey"]["cache_dir"] = str(cache)
    return params


def test_targets_mode_fetches_counts_and_fails_loudly_above_max_failed_fraction(tmp_path, local_http_server):
    truth = embedded_survey(tmp_path, n_parents=6, shard_rows=6, nan_stamp_frac=0.0, missing_band_frac=0.0)
    targets = target_list(tmp_path / "targets.csv", truth)
    body = fits_of(truth, 0)
    base, routes = local_http_server({CUTOUT_PATH: [(200, body, 0.0)] * 5 + [(404, b"no such cutout", 0.0)]})
    params = targets_params(targets, base, tmp_path / "cache", max_failed_fraction=0.2)
    table, metrics = run_survey(tmp_path, params)
    assert table.schema.names == truth.schema.names and table.num_rows == 5
    cut = metrics["source"]["cutouts"]
    assert cut["requested"] == 6 and cut["failed"] == 1 and "404" in cut["failures"][0]
    assert metrics["source"]["provenance"]["lrg_flux_nmgy_r"] == {"input": 5}
    assert metrics["source"]["provenance"]["psfdepth_z"] == {"input": 5}
    # fetched in parent_id order: the last one (highest (ra, dec)) failed; rows keep the list's Tractor values
    order = np.lexsort((truth.column("dec").to_numpy(), truth.column("ra").to_numpy()))
    assert table.column("parent_id").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("lrg_flux_nmgy_g").to_numpy() == pytest.approx(
        truth.column("lrg_flux_nmgy_g").to_numpy()[order[:5]])
    # a rerun is served from the cache; a stricter limit stops the stage naming the failure
    (tmp_path / "survey.json").unlink()
    shutil.rmtree(tmp_path / "survey")
    with pytest.raises(RuntimeError, match=r"(?s)1 of 6 cutouts failed .*max_failed_fraction 0.1.*parent 5.*404"):
        run_survey(tmp_path, targets_params(targets, base, tmp_path / "cache", max_failed_fraction=0.1))


# --- `dvc repro` on real parents ---------------------------------------------------------------------------

def add_survey_dep(root: Path, dep: str) -> None:
    """Add ``dep`` to the survey stage's deps in ``root``/dvc.yaml (README "Real parents")."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["survey"]["deps"].append(dep)
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def real_project(tmp_path: Path, params: dict, inputs: dict[str, bytes]) -> Path:
    """A git+DVC repository with this project's pipeline, ``params`` and input files (path -> bytes) as survey deps."""
    root = tmp_path / "project"
    base = pipeline_params()
    base["survey"].update(params)
    copy_project(root, base)
    for rel, data in inputs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        add_survey_dep(root, rel)
    return init_repo(root, "real-parents project")


def test_dvc_repro_on_a_legacy_manifest_runs_the_whole_pipeline_then_is_cached(tmp_path):
    survey_params = pipeline_params()["survey"]
    truth = embedded_survey(tmp_path, **{k: survey_params[k] for k in
                                         ("n_parents", "n_sky_patches", "shard_rows", "nan_stamp_frac",
                                          "missing_band_frac", "masked_stamp_frac")})
    manifest = legacy_manifest(tmp_path / "manifest.parquet", truth)
    root = real_project(tmp_path, {"mode": "manifest", "manifest": "data/external/parents.parquet"},
                        {"data/external/parents.parquet": manifest.read_bytes()})
    first = run_command(DVC + ["repro"], root)
    assert "Running stage 'survey'" in first and "Running stage 'report'" in first
    metrics = json.loads((root / "metrics" / "survey.json").read_text())
    assert metrics["source"]["mode"] == "manifest" and metrics["n_parents"] + metrics["source"]["dropped"] == 96
    for gen in ("gen5", "gen5p"):
        assert (root / "data" / "models" / gen / "model.pt").exists()
    second = run_command(DVC + ["repro"], root)
    assert "Running stage" not in second
    # the manifest is a dep: changing it reruns the survey
    path = root / "data/external/parents.parquet"
    write_parquet(read_table(str(path)).slice(0, 90), path)
    status = run_command(DVC + ["status", "survey"], root)
    assert "modified:" in status and "data/external/parents.parquet" in status, status


def test_dvc_repro_on_fetched_targets_passes_the_data_gates_then_is_cached(tmp_path, local_http_server):
    """Fetched cutouts feed the pipeline through injection and the data contracts (the stages after them read
    the survey schema that the legacy-manifest test above runs to the report)."""
    survey_params = pipeline_params()["survey"]
    truth = embedded_survey(tmp_path, **{k: survey_params[k] for k in ("n_parents", "n_sky_patches")},
                            nan_stamp_frac=0.0, missing_band_frac=0.0)
    targets = target_list(tmp_path / "targets.csv", truth)
    base, routes = local_http_server({CUTOUT_PATH: [(200, fits_of(truth, i), 0.0) for i in range(8)]})
    params = targets_params(targets, base, Path("data/cache/cutouts"))["survey"]
    params["targets"] = "data/external/targets.csv"
    root = real_project(tmp_path, {k: params[k] for k in ("mode", "targets", "cutout", "cache_dir")},
                        {"data/external/targets.csv": targets.read_bytes()})
    out = run_command(DVC + ["repro", "data_gates@gen5p"], root)
    for stage in ("survey", "split", "hard_negatives", "inject@gen5p", "data_gates@gen5p"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((root / "metrics" / "survey.json").read_text())
    assert metrics["source"]["cutouts"]["requested"] == 96 and metrics["source"]["cutouts"]["failed"] == 0
    assert routes[CUTOUT_PATH].hits == 96
    gates = json.loads((root / "metrics" / "gen5p" / "data_gates.json").read_text())
    assert gates["n_positive"] > 0 and gates["blocking_failed"] == [], gates["blocking_failed"]
    assert "Running stage" not in run_command(DVC + ["repro", "data_gates@gen5p"], root)
    assert routes[CUTOUT_PATH].hits == 96                       # the second run fetched nothing

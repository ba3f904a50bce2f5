"""Shared fixtures: tiny params files and a tiny survey built by the real stage."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# pytest-xdist workers run under a bare __main__ (no __file__, no __spec__). When
# great_expectations probes pyspark's Spark Connect module, pyspark then concludes it is running
# doctests and calls sys.exit(0). Import great_expectations once here under a named __main__ (the
# probe then fails with the ImportError GX expects and GX caches the result), and restore
# __main__ exactly: multiprocessing's spawn re-runs __main__.__file__ in its children.
_main = sys.modules.get("__main__")
if _main is not None and getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"
    try:
        import great_expectations  # noqa: F401
    finally:
        del _main.__file__

TINY_SURVEY = {
    "n_parents": 48,
    "n_sky_patches": 6,
    "shard_rows": 20,
    "row_group_rows": 8,
    # enough defects that 48 stamps show each kind
    "masked_stamp_frac": 0.3,
    "nan_stamp_frac": 0.1,
    "missing_band_frac": 0.1,
    "defect_cutout_ok_frac": 0.5,
}


TINY_RUNTIME = {"workers": 1, "threads": 1}   # one process, one torch thread (the tests share 2 cores)
# "another machine" for cross-machine determinism tests: numpy's SIMD dispatch limited to the x86-64-v2
# baseline (no AVX2/AVX-512 kernels), MKL limited to SSE4.2 kernels (its FFTs) and one BLAS/OpenMP thread
OTHER_CPU_ENV = {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                 "OMP_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_on_other_cpu(stage: str, *args) -> None:
    """``python -m stages.<stage> <args>`` in a subprocess on "another machine" (OTHER_CPU_ENV)."""
    subprocess.run([sys.executable, "-m", f"stages.{stage}", *map(str, args)], check=True,
                   env={**os.environ, **OTHER_CPU_ENV}, capture_output=True)


def assert_same_parquet_files(a: Path, b: Path) -> None:
    """Both directories hold the same parquet files (relative paths), byte for byte."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def tiny_params(runtime: dict | None = None, **survey_overrides) -> dict:
    """The repository's params.yaml with the survey shrunk to a few dozen stamps; ``runtime``
    entries override ``TINY_RUNTIME``."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["runtime"].update(TINY_RUNTIME, **(runtime or {}))
    params["survey"].update(TINY_SURVEY)
    params["survey"].update(survey_overrides)
    params["survey_gallery"]["n_stamps"] = 12
    params["hard_negatives"].update(n_per_class=4, shard_rows=8, gallery_per_class=2)
    params["anchors"].update(max_per_set=2, gallery_per_tier=2)
    params["inject"].update(batch_size=16)
    params["generations"]["gen5p"]["n_candidates"] = 4
    params["benchmark"]["injection"]["n_candidates"] = 3
    params["train"].update(epochs=1, batch_size=32)
    for gen in params["generations"].values():
        gen.setdefault("train", {})["epochs"] = 1
    # a few dozen stamps cannot resolve the shortcut tolerances: integrity gates block, the rest report
    for gen in params["generations"].values():
        gen["gates_blocking"] = ["contracts", "split"]
    params["evaluate"].update(operating_fpr=0.2, batch_size=64, min_benchmark_negatives=0)
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


PROJECT_FILES = ["dvc.yaml", ".dvcignore", "stages", "darkhalo", "expectations", "metrics/ablation.json"]


def copy_project(root: Path, params: dict) -> None:
    """This project's pipeline (code, dvc.yaml, suites) with ``params`` in a new directory ``root``."""
    import shutil

    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    write_params(root / "params.yaml", params)


DVC = [sys.executable, "-m", "dvc"]   # the venv's DVC, whatever is first on PATH


def run_command(cmd, cwd, timeout: float = 900) -> str:
    """Run ``cmd`` in ``cwd`` with the venv's tools first on PATH and analytics off; stdout + stderr.

    A non-zero exit fails the test with the command's output tail."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "true", "GX_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def init_repo(root: Path, message: str) -> Path:
    """Make ``root`` a git + DVC repository with everything in it committed; returns ``root``."""
    run_command(["git", "init", "-q"], root)
    run_command(["git", "config", "user.email", "ci@example.org"], root)
    run_command(["git", "config", "user.name", "ci"], root)
    run_command(DVC + ["init", "-q"], root)
    run_command(["git", "add", "-A"], root)
    run_command(["git", "commit", "-qm", message], root)
    return root


def pipeline_params() -> dict:
    """Tiny params for the whole pipeline: few parents, defects at the survey's default rates, the
    integrity gates blocking, tolerances suited to ~100 parents (fractions move in steps of one region)."""
    params = tiny_params(n_parents=96, n_sky_patches=24, shard_rows=48, nan_stamp_frac=0.003,
                         missing_band_frac=0.002, masked_stamp_frac=0.1)
    params["gates"].update(split_fraction_tolerance=0.2, max_quarantine_frac=0.05)
    params["hard_negatives"]["n_per_class"] = 10
    return params


def make_project(tmp_path: Path) -> Path:
    """A git + DVC repository holding this project's pipeline with ``pipeline_params``."""
    root = tmp_path / "project"
    copy_project(root, pipeline_params())
    return init_repo(root, "tiny project")


SPLIT_OF_PIXEL_PARITY = ("train", "val", "test", "guard")


@pytest.fixture(scope="session")
def tiny_assignment(tiny_survey, tmp_path_factory) -> Path:
    """A region assignment of the tiny survey by HEALPix pixel (one region in four is guard band)."""
    import healpy as hp
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from darkhalo.io.dataset import read_table

    cat = read_table(str(tiny_survey), columns=["parent_id", "ra", "dec"])
    pix = hp.ang2pix(32, cat.column("ra").to_numpy(), cat.column("dec").to_numpy(), nest=True, lonlat=True)
    rank = np.searchsorted(np.unique(pix), pix)
    path = tmp_path_factory.mktemp("split") / "assignment.parquet"
    pq.write_table(pa.table({"parent_id": cat.column("parent_id"), "healpix_pixel": pix,
                             "region_split": np.array(SPLIT_OF_PIXEL_PARITY)[rank % 4]}), path)
    return path


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> Path:
    """A 48-stamp survey dataset written by the real `survey` stage."""
    from stages import survey

    root = tmp_path_factory.mktemp("survey")
    params = write_params(root / "params.yaml", tiny_params())
    survey.main(["--params", str(params), "--out", str(root / "data"), "--metrics", str(root / "survey.json")])
    return root / "data"


# --- Split and data-gate fixtures (issue 4) -------------------------------------------------
# Test data construction, not mocks: a clean survey built by the real `survey` stage, split by
# the real `split` stage, turned into an injection-like manifest (controls = survey stamps,
# positives = the same stamps plus a synthetic arc) in the layout `inject@<generation>` writes.

GATES_SURVEY = {"n_parents": 160, "n_sky_patches": 40, "shard_rows": 80, "row_group_rows": 32,
                "masked_stamp_frac": 0.2, "nan_stamp_frac": 0.0, "missing_band_frac": 0.0}
# Tolerances suited to 160 parents (the defaults assume thousands): fractions move in steps of
# one HEALPix cluster (~3% of parents here) and a held-out AUC of 640 stamps has sd ~0.02-0.03.
GATES_TEST_PARAMS = {"split_fraction_tolerance": 0.06, "core_auc_tolerance": 0.08}
SOURCE_COLOUR = {"g": 0.69, "r": 1.0, "z": 1.45}   # flux ratios to r of a g-r = r-z = 0.4 source (bluer than LRGs)


def gates_params(**gates_overrides) -> dict:
    """Repository params with the gates survey and test tolerances (gates_overrides on top)."""
    params = tiny_params(**GATES_SURVEY)
    params["split"].update(train_frac=0.7, val_frac=0.15, test_frac=0.15)   # unequal, so an inverted split shows
    params["gates"].update(GATES_TEST_PARAMS)
    params["gates"].update(gates_overrides)
    return params


@pytest.fixture(scope="session")
def gates_project(tmp_path_factory) -> Path:
    """Directory holding params.yaml, a clean 160-parent survey (data/survey) and its split (data/split)."""
    from stages import split, survey

    root = tmp_path_factory.mktemp("gates")
    params = write_params(root / "params.yaml", gates_params())
    survey.main(["--params", str(params), "--out", str(root / "data" / "survey"),
                 "--metrics", str(root / "metrics" / "survey.json")])
    split.main(["--params", str(params), "--survey", str(root / "data" / "survey"),
                "--out", str(root / "data" / "split" / "assignment.parquet"),
                "--metrics", str(root / "metrics" / "split.json")])
    return root


def _ring(size: int, radius_pix: float, width_pix: float, phase_rad: float, asymmetry: float = 0.8) -> "np.ndarray":
    """Unit-sum arc-like ring (Gaussian in radius, brighter on one side by ``asymmetry``) centred on the stamp."""
    import numpy as np

    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    r, theta = np.hypot(yy - c, xx - c), np.arctan2(yy - c, xx - c)
    ring = np.exp(-0.5 * ((r - radius_pix) / width_pix) ** 2) * (1.0 + asymmetry * np.cos(theta - phase_rad))
    return ring / ring.sum()


def injection_table(project: Path, *, replicates: int = 2, ring_radius_pix: float = 10.0,
                    ring_flux_frac: float = 0.3, core_boost: float = 0.0, core_radius_pix: float = 4.0,
                    generation: str = "test", ring_asymmetry: float = 0.8):
    """Injection-like manifest table of a survey: per parent and replicate one control, one positive.

    Positives add an arc-like ring of ``ring_flux_frac`` x the LRG's r flux at ``ring_radius_pix``
    (blue colours); ``core_boost`` > 0 also adds a compact blue ring at 1.5 px carrying
    ``core_boost`` x the control's r-band flux inside r < ``core_radius_pix`` (the planted
    core-brightness shortcut).  Masked pixels (invvar = 0) stay 0; guard-band parents are dropped.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from darkhalo.io.dataset import Chunk, read_table, stamps_of
    from darkhalo.physics.normalize import core_mask
    from darkhalo.io.stamps import PIXEL_COLUMNS, StampBatch, native_columns
    from darkhalo.core.units import BANDS

    survey = read_table(str(project / "data" / "survey")).sort_by("parent_id")
    assignment = pq.read_table(project / "data" / "split" / "assignment.parquet").sort_by("parent_id")
    assert survey.column("parent_id").equals(assignment.column("parent_id"))
    keep = pa.array(np.asarray(assignment.column("region_split").to_pylist()) != "guard")
    survey, assignment = survey.filter(keep), assignment.filter(keep)
    size = int(survey.column("stamp_size")[0].as_py())
    stamps = stamps_of(Chunk(survey, "survey", 0), size)
    n = survey.num_rows
    catalogue = survey.drop_columns(list(PIXEL_COLUMNS))
    core = core_mask(size, core_radius_pix)
    core_blob = _ring(size, 1.5, 1.2, 0.0)
    rows, images, invvars, present, has_iv = [], [], [], [], []
    for i in range(n):
        lrg_r = catalogue.column("lrg_flux_nmgy_r")[i].as_py()
        for rep in range(replicates):
            arc_shape = _ring(size, ring_radius_pix, 1.2, 2.0 * np.pi * rep / max(replicates, 1), ring_asymmetry)
            arcs = np.stack([arc_shape * ring_flux_frac * lrg_r * SOURCE_COLOUR[b] for b in BANDS])
            if core_boost > 0:
                boost_r = core_boost * np.nansum(stamps.image[i, 1][core]) / core_blob[core].sum()
                arcs += np.stack([core_blob * boost_r * SOURCE_COLOUR[b] for b in BANDS])
            positive = stamps.image[i] + np.where(np.nan_to_num(stamps.invvar[i]) > 0, arcs, 0.0).astype(np.float32)
            for is_control, image in ((1, stamps.image[i]), (0, positive)):
                rows.append((i, rep, is_control, arcs))
                images.append(image)
                invvars.append(stamps.invvar[i])
                present.append(stamps.present[i])
                has_iv.append(stamps.has_invvar[i])
    index = np.array([r[0] for r in rows])
    replicate = np.array([r[1] for r in rows], np.int32)
    is_control = np.array([r[2] for r in rows], np.int8)
    table = catalogue.take(pa.array(index))
    table = table.append_column("region_split", assignment.column("region_split").take(pa.array(index)))
    table = table.append_column("healpix_pixel", assignment.column("healpix_pixel").take(pa.array(index)))
    parent = table.column("parent_id").to_numpy()
    table = table.append_column("generation", pa.array([generation] * len(rows), pa.string()))
    table = table.append_column("task_id", pa.array((parent * replicates + replicate) * 2 + (1 - is_control)))
    table = table.append_column("replicate", pa.array(replicate))
    table = table.append_column("is_control", pa.array(is_control))
    ctrl = is_control == 1
    total = np.array([r[3].sum(axis=(1, 2)) for r in rows])
    core_parent = np.array([np.nansum(images[2 * (k // 2)][:, core], axis=1) for k in range(len(rows))])
    physics = {
        "theta_e_arcsec": np.full(len(rows), ring_radius_pix * 0.262), "lens_q": np.full(len(rows), 0.8),
        "lens_phi_rad": np.full(len(rows), 0.3), "shear": np.full(len(rows), 0.05),
        "shear_phi_rad": np.full(len(rows), 1.0), "src_reff_arcsec": np.full(len(rows), 0.15),
        **{f"src_flux_nmgy_{b}": total[:, j] / 5.0 for j, b in enumerate(BANDS)},
        "src_dmag": np.full(len(rows), 1.5), "magnification": np.full(len(rows), 5.0),
        "arc_snr": np.full(len(rows), 12.0), "arc_snr_aperture": np.full(len(rows), 9.0),
        **{f"total_injected_flux_{b}": total[:, j] for j, b in enumerate(BANDS)},
        "core_flux_ratio": np.array([r[3][1][core].sum() for r in rows]) / np.abs(core_parent[:, 1]),
        **{f"psf_fwhm_used_{b}": table.column(f"psfsize_{b}").to_numpy() for b in BANDS},
    }
    for name, values in physics.items():
        table = table.append_column(name, pa.array(np.asarray(values, np.float64), mask=ctrl))
    table = table.append_column("task_seed64", pa.array(parent * 1000 + replicate, pa.int64(), mask=ctrl))
    batch = StampBatch(np.stack(images), np.stack(invvars), np.stack(present), np.stack(has_iv))
    for name, column in native_columns(batch).items():
        table = table.append_column(name, column)
    return table.sort_by("task_id")


def write_manifest(table, root: Path, row_group_rows: int = 32) -> Path:
    """Write ``table`` hive-partitioned by region_split (as inject@<generation> does); returns ``root``."""
    from darkhalo.io.dataset import write_hive

    write_hive(table, root, ["region_split"], row_group_rows)
    return root


# --- issue 5 (hard negatives, anchors, cutouts): a local HTTP server on 127.0.0.1 --------------------------

class _Route:
    """What the local server answers on one path: a list of (status, body, delay_s) used in turn (last repeats);
    extra ``headers`` on every answer; ``drip_s`` > 0 sends the body one byte every ``drip_s`` seconds."""

    def __init__(self, answers, headers=None, drip_s: float = 0.0):
        self.answers = list(answers)
        self.headers = dict(headers or {})
        self.drip_s = drip_s
        self.hits = 0


@pytest.fixture
def local_http_server():
    """Factory: ``start({path: [(status, body, delay_s), ...]})`` -> (base_url, routes); serves on 127.0.0.1.

    Every route counts its GET hits; answers are used in turn (the last one repeats).
    HEAD answers with the headers of the next GET (Content-Length, ETag) for DVC.
    The servers stop at the end of the test.
    """
    import hashlib
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(spec: dict):
        routes = {path: (value if isinstance(value, _Route) else _Route(value)) for path, value in spec.items()}
        lock = threading.Lock()
        client_gone = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, head: bool):
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    status, body, delay = 404, b"not found", 0.0
                else:
                    with lock:
                        k = min(route.hits, len(route.answers) - 1)
                        if not head:
                            route.hits += 1
                    status, body, delay = route.answers[k]
                if delay and not head:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
                    for key, value in (route.headers.items() if route else ()):
                        self.send_header(key, value)
                    self.end_headers()
                    if not head and route is not None and route.drip_s:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(route.drip_s)
                    elif not head:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError) as exc:  # the client timed out first
                    client_gone.append(exc)

            def do_GET(self):
                self._answer(head=False)

            def do_HEAD(self):
                self._answer(head=True)

            def log_message(self, *args):
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", routes

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def cutout_fits_bytes(image, invvar=None, bands="grz") -> bytes:
    """A Legacy-Survey-like cutout FITS: primary (bands, S, S) image with BAND<i> keys, optional INVVAR HDU."""
    import io

    import numpy as np
    from astropy.io import fits

    primary = fits.PrimaryHDU(np.asarray(image, np.float32))
    for i, band in enumerate(bands):
        primary.header[f"BAND{i}"] = band
    hdus = [primary]
    if invvar is not None:
        hdus.append(fits.ImageHDU(np.asarray(invvar, np.float32), name="INVVAR"))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


# --- issue 7 (compare, report, review workflow): the whole pipeline on a tiny config ----------------

REVIEW_SURVEY = {"n_parents": 120, "n_sky_patches": 12, "shard_rows": 120, "row_group_rows": 32,
                 "masked_stamp_frac": 0.1, "nan_stamp_frac": 0.02, "missing_band_frac": 0.02}


def review_params() -> dict:
    """Repository params shrunk so that the whole `dvc repro` (survey ... report) takes well under a minute.

    One survey shard (every shard must hold test parents), one worker everywhere, a handful of anchors and
    hard negatives, one training epoch, few bootstrap replicates. Gates are reported, not blocking: a
    120-parent sample cannot meet tolerances sized for thousands. The operating FPR is resolvable on the
    ~20 val controls.
    """
    params = tiny_params(**REVIEW_SURVEY)
    params["split"].update(train_frac=0.7, val_frac=0.15, test_frac=0.15)   # ~20 val controls (the threshold)
    params["survey_gallery"].update(n_stamps=6)
    params["inject"].update(batch_size=64)
    params["hard_negatives"].update(n_per_class=6, shard_rows=24, gallery_per_class=1)
    params["anchors"].update(max_per_set=2, gallery_per_tier=1)
    params["benchmark"]["injection"].update(n_candidates=2)
    for name, gen in params["generations"].items():
        gen["gates_blocking"] = False
        if gen.get("arc_snr_target") is not None:
            gen["n_candidates"] = 2
    params["gates"].update(GATES_TEST_PARAMS, core_max_stamps=400, core_folds=3)
    params["train"].update(epochs=1, batch_size=32)
    params["evaluate"].update(operating_fpr=0.2, batch_size=64)
    if "compare" in params:
        params["compare"].update(n_bootstrap=60)
    if "report" in params:
        params["report"].update(gallery_n=4)
    return params


def report_numbers_mismatching(report_path: Path, root: Path) -> tuple[int, list[str]]:
    """(numbers in the sidecar, mismatches) of a generated report: every entry of reports/remediation/sources.json
    must name a value that exists at its JSON pointer of its metrics/params file, print as shown (Python's
    ``format`` with the entry's spec; 'text': 4 significant digits) and stand on the report line it names."""
    import json

    import yaml

    from darkhalo.report.render import format_value, resolve_pointer

    lines = Path(report_path).read_text().splitlines()
    sidecar = json.loads((Path(report_path).with_suffix("") / "sources.json").read_text())
    docs, bad = {}, []
    for e in sidecar["numbers"]:
        where = f"{e['file']}#{e['pointer']} (line {e['line']})"
        if e["file"] not in docs:
            text = (root / e["file"]).read_text()
            docs[e["file"]] = yaml.safe_load(text) if e["file"].endswith(".yaml") else json.loads(text)
        try:
            value = resolve_pointer(docs[e["file"]], e["pointer"])
        except (KeyError, IndexError) as exc:
            bad.append(f"{where}: {exc}")
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        expected = format(value, e["format"]) if numeric and e["format"] != "text" else format_value(value)
        if e["shown"] != expected:
            bad.append(f"{where}: sidecar shows {e['shown']!r}, file holds {value!r} ({e['format']})")
        elif e["shown"] not in lines[e["line"] - 1]:
            bad.append(f"{where}: {e['shown']!r} is not on that line of the report")
    return len(sidecar["numbers"]), bad

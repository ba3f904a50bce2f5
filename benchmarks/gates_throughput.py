"""Data-gate throughput and memory, as JSON.

* ``metadata``: the standalone gates (``python -m stages.data_gates --metadata-only``)
  over a metadata-only manifest in the users' layout (hive-partitioned by
  region_split; the users' legacy columns (docs/domain.md) plus the survey quality columns), 10 million
  rows by default: wall time and peak RSS of the audit process (goal: <= 60 s
  and <= 6 GiB on 2 cores);
* ``pixels``: the full gates (streamed pixel pass, 1.5/1.6/1.8, contracts,
  split) over a native-layout manifest of controls and positives built from the
  survey stamps (``data/survey`` if present, else a freshly simulated one):
  stamps per second, and the pixel pass alone.

Run from the repository root: ``python -m benchmarks.gates_throughput [--rows 10000000]``.
Generated manifests are cached under ``--work`` (default /tmp/darkhalo-gates-bench).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
QUALITY = ("bad_pixel_frac", "psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r", "psfdepth_z", "ebv",
           "lrg_mag_g", "lrg_mag_r", "lrg_mag_z")


def metadata_manifest(root: Path, n_rows: int, seed: int = 1, files_per_split: int = 8) -> Path:
    """Users'-layout metadata manifest with ``n_rows`` rows (pairs: control + positive per parent)."""
    from darkhalo.sim.split import SplitConfig, assign
    from darkhalo.io.dataset import write_parquet

    marker = root / f"_complete_{n_rows}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    n_par = n_rows // 2
    import healpy as hp
    from darkhalo.sim.footprint import footprint_patches
    patches = footprint_patches(3000, rng)           # parents clustered in NSIDE=32 pixels, as the survey's
    sub = patches[rng.integers(patches.size, size=n_par)] * 4**10 + rng.integers(4**10, size=n_par)
    ra, dec = hp.pix2ang(32 * 2**10, sub, nest=True, lonlat=True)
    split = assign(ra, dec, SplitConfig(seed=seed, region_nside=4)).region_split   # contiguous: blocks
    par = {"parent_id": np.arange(n_par, dtype=np.int64), "ra": ra, "dec": dec}
    par.update({c: rng.uniform(0, 0.05, n_par) if c == "bad_pixel_frac" else
                rng.lognormal(0, 0.2, n_par) for c in QUALITY})
    par["ebv"] = rng.uniform(0.01, 0.1, n_par)
    for split_name in ("train", "val", "test"):
        idx = np.flatnonzero(split == split_name)
        folder = root / f"region_split={split_name}"
        folder.mkdir(parents=True, exist_ok=True)
        for f, part in enumerate(np.array_split(idx, files_per_split)):
            rows = np.repeat(part, 2)
            n = rows.size
            is_control = np.tile(np.array([1, 0], np.int8), part.size)
            pos = is_control == 0
            cols = {k: v[rows] for k, v in par.items()}
            cols.update({
                "task_id": rows * 2 + (1 - is_control), "experiment_id": np.full(n, 5, np.int32),
                "region_id": (cols["parent_id"] // 100).astype(np.int32), "stamp_size": np.full(n, 64, np.int16),
                "config_id": rng.integers(0, 12, n).astype(np.int32), "replicate": np.zeros(n, np.int32),
                "is_control": is_control, "task_seed64": rng.integers(0, 2**62, n), "cutout_ok": np.ones(n, np.int8),
                "ab_zp_nmgy": np.full(n, 22.5), "physics_valid": np.ones(n, bool),
                "psf_bin": rng.integers(0, 5, n).astype(np.int8), "depth_bin": rng.integers(0, 5, n).astype(np.int8),
                "wise_brightmask_frac": rng.uniform(0, 0.01, n),
            })
            table = pa.table(cols)
            for name, lo, hi in (("theta_e_arcsec", 0.3, 1.0), ("src_dmag", 1, 2), ("src_reff_arcsec", 0.08, 0.15),
                                 ("src_e", 0, 0.5), ("shear", 0, 0.1), ("shear_phi_rad", 0, 3), ("src_x_arcsec", -0.3, 0.3),
                                 ("src_y_arcsec", -0.3, 0.3), ("src_phi_rad", 0, 3), ("src_gr", 0, 1), ("src_rz", 0, 1),
                                 ("arc_snr", 2, 50), ("total_injected_flux_r", 0.1, 10), ("psf_fwhm_used_g", 1, 1.6),
                                 ("psf_fwhm_used_r", 0.9, 1.5), ("psf_fwhm_used_z", 0.8, 1.4), ("lens_e", 0, 0.4),
                                 ("lens_phi_rad", 0, 3), ("magnification", 2, 30)):
                table = table.append_column(name, pa.array(rng.uniform(lo, hi, n), mask=~pos))
            for name, value in (("bandset", "grz"), ("lens_model", "SIE"), ("pipeline_version", "gen5-1.0"),
                                ("brickname", "1234p567")):
                table = table.append_column(name, pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, np.int8)), pa.array([value])).cast(pa.string()))
            write_parquet(table, folder / f"part-{f:05d}.parquet", 1 << 17)
    marker.touch()
    return root


def pixel_manifest(root: Path, n_parents: int) -> Path:
    """Native-layout manifest: per survey parent one control and one positive (control + blue ring)."""
    from darkhalo.io.dataset import Chunk, read_table, stamps_of, write_hive
    from darkhalo.sim.split import SplitConfig, assignment_table
    from darkhalo.io.stamps import PIXEL_COLUMNS, native_columns, StampBatch

    if (root / "_complete").exists():
        return root
    survey_dir = REPO / "data" / "survey"
    if not survey_dir.exists():
        from stages import survey
        import yaml
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["survey"].update(n_parents=n_parents)
        params["runtime"]["workers"] = 2
        (root.parent / "bench-params.yaml").write_text(yaml.safe_dump(params))
        survey_dir = root.parent / "bench-survey"
        survey.main(["--params", str(root.parent / "bench-params.yaml"), "--out", str(survey_dir),
                     "--metrics", str(root.parent / "bench-survey.json")])
    table = read_table(str(survey_dir)).sort_by("parent_id").slice(0, n_parents)
    a, _ = assignment_table(table.column("parent_id").to_numpy(), table.column("ra").to_numpy(),
                            table.column("dec").to_numpy(), SplitConfig(seed=1))
    stamps = stamps_of(Chunk(table, "survey", 0), 64)
    yy, xx = np.mgrid[:64, :64] - 31.5
    ring = np.exp(-0.5 * ((np.hypot(yy, xx) - 10) / 1.2) ** 2)
    ring /= ring.sum()
    flux = 0.3 * table.column("lrg_flux_nmgy_r").to_numpy()
    arcs = flux[:, None, None, None] * np.array([0.69, 1.0, 1.45])[None, :, None, None] * ring
    positive = stamps.image + np.where(np.nan_to_num(stamps.invvar) > 0, arcs, 0).astype(np.float32)
    n = table.num_rows
    order = np.repeat(np.arange(n), 2)
    is_control = np.tile(np.array([1, 0], np.int8), n)
    images = np.where(is_control[:, None, None, None] == 1, stamps.image[order], positive[order])
    out = table.drop_columns(list(PIXEL_COLUMNS)).take(pa.array(order))
    out = out.append_column("region_split", a.column("region_split").take(pa.array(order)))
    out = out.append_column("healpix_pixel", a.column("healpix_pixel").take(pa.array(order)))
    out = out.append_column("task_id", pa.array(order * 2 + (1 - is_control)))
    out = out.append_column("replicate", pa.array(np.zeros(2 * n, np.int32)))
    out = out.append_column("is_control", pa.array(is_control))
    batch = StampBatch(images, stamps.invvar[order], stamps.present[order], stamps.has_invvar[order])
    for name, column in native_columns(batch).items():
        out = out.append_column(name, column)
    keep = pa.array(np.asarray(out.column("region_split").to_pylist()) != "guard")
    write_hive(out.filter(keep), root, ["region_split"], 256)
    (root / "_complete").touch()
    return root


def run_child(args: list[str]) -> tuple[float, float, int]:
    """(wall s, peak RSS GiB of the child, exit code) of a stage run in a fresh process."""
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.data_gates", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"data_gates failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return wall, peak, proc.returncode


def main():
    from darkhalo.io.dataset import read_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--pixel-parents", type=int, default=3000)
    parser.add_argument("--work", default="/tmp/darkhalo-gates-bench")
    parser.add_argument("--skip-metadata", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    out = {"cores": os.cpu_count()}
    if not args.skip_metadata:
        t0 = time.perf_counter()
        manifest = metadata_manifest(work / f"meta-{args.rows}", args.rows)
        out["metadata_manifest_build_s"] = round(time.perf_counter() - t0, 1)
        wall, peak, rc = run_child(["--manifest", str(manifest), "--out", str(work / "meta-audit"), "--metadata-only"])
        out["metadata"] = {"rows": args.rows, "wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2),
                           "rows_per_s": round(args.rows / wall), "exit_code": rc,
                           "goal": "<= 60 s and <= 6 GiB on 2 cores"}
    manifest = pixel_manifest(work / f"pixels-{args.pixel_parents}", args.pixel_parents)
    n = read_table(str(manifest), columns=["task_id"]).num_rows
    wall, _, rc = run_child(["--manifest", str(manifest), "--out", str(work / "pixel-audit")])
    from darkhalo.gates.config import GatesConfig
    from darkhalo.gates.scan import scan_manifest
    config = GatesConfig(seed=1)
    t0 = time.perf_counter()
    scan_manifest(str(manifest), config.normalization, stamp_size_pix=64, core_radius_pix=config.core_radius_pix,
                  core_max_stamps=config.core_max_stamps, seed=1, batch_rows=config.batch_rows)
    scan_s = time.perf_counter() - t0
    out["pixels"] = {"stamps": n, "audit_wall_s": round(wall, 1), "audit_stamps_per_s": round(n / wall),
                     "pixel_pass_stamps_per_s": round(n / scan_s), "exit_code": rc}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""The `split` stage: region-disjoint HEALPix assignment, checked independently with healpy (RING scheme)."""
from __future__ import annotations

import json

import healpy as hp
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import tiny_params, write_params
from darkhalo.sim.footprint import galactic_latitude_deg
from darkhalo.core.params import ParamError
from darkhalo.sim.split import SplitConfig, assignment_table, split_config, summarise_split
from stages import split as split_stage

SPLITS = ("train", "val", "test")


def ring_neighbourhood(nside: int, pixel_ring: int, rings: int) -> set:
    """Pixels (RING) within ``rings`` neighbour steps, computed independently of darkhalo.sim.split."""
    zone = {int(pixel_ring)}
    for _ in range(rings):
        nb = hp.get_all_neighbours(nside, np.array(sorted(zone)))
        zone |= {int(p) for p in nb.ravel() if p >= 0}
    return zone


def check_region_disjoint(table, nside: int, rings: int) -> None:
    """Independent check: RING pixel from (ra, dec) agrees, one split per pixel, guard band honoured."""
    ra, dec = table.column("ra").to_numpy(), table.column("dec").to_numpy()
    split = np.asarray(table.column("region_split").to_pylist())
    ring = hp.ang2pix(nside, np.radians(90.0 - dec), np.radians(ra))          # theta/phi form, RING
    assert np.array_equal(hp.ring2nest(nside, ring), table.column("healpix_pixel").to_numpy())
    kept = split != "guard"
    owner = {}
    for pix, s in zip(ring[kept], split[kept]):
        assert owner.setdefault(int(pix), s) == s, f"RING pixel {pix} straddles splits {owner[int(pix)]} and {s}"
    for pix, s in owner.items():
        for other in ring_neighbourhood(nside, pix, rings):
            if other in owner:
                assert owner[other] == s, f"pixels {pix} ({s}) and {other} ({owner[other]}) within {rings} rings"


@pytest.fixture(scope="module")
def contiguous_positions():
    """8,000 positions uniform over the DR10-like footprint (contiguous, unlike the embedded survey)."""
    rng = np.random.default_rng(7)
    ra = rng.uniform(0, 360, 40000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 40000)))
    ok = (dec < 32.375) & (dec > -68) & (np.abs(galactic_latitude_deg(ra, dec)) > 20)
    return ra[ok][:8000], dec[ok][:8000]


def test_split_stage_writes_assignment_and_metrics(gates_project):
    table = pq.read_table(gates_project / "data" / "split" / "assignment.parquet")
    assert table.schema.field("parent_id").type == "int64" and table.schema.field("healpix_pixel").type == "int64"
    assert table.schema.field("nside").type == "int32" and table.schema.field("region_split").type == "string"
    assert table.num_rows == 160 and table.column("parent_id").to_pylist() == list(range(160))
    metrics = json.loads((gates_project / "metrics" / "split.json").read_text())
    assert metrics["healpix_scheme"] == "NESTED" and metrics["nside"] == 32
    for name, declared in zip(SPLITS, (0.7, 0.15, 0.15)):
        entry = metrics["splits"][name]
        assert abs(entry["fraction_of_kept_parents"] - declared) < 0.03
        assert entry["area_deg2"] == pytest.approx(entry["n_pixels"] * hp.nside2pixarea(32, degrees=True), rel=1e-5)
    assert sum(metrics["splits"][s]["n_parents"] for s in SPLITS) + metrics["guard"]["n_parents"] == 160
    check_region_disjoint(table, 32, 1)


def test_split_stage_is_deterministic(gates_project, tmp_path):
    out = tmp_path / "a.parquet"
    split_stage.main(["--params", str(gates_project / "params.yaml"), "--survey", str(gates_project / "data" / "survey"),
                      "--out", str(out), "--metrics", str(tmp_path / "m.json")])
    assert out.read_bytes() == (gates_project / "data" / "split" / "assignment.parquet").read_bytes()
    assert (tmp_path / "m.json").read_bytes() == (gates_project / "metrics" / "split.json").read_bytes()


@pytest.mark.parametrize("region_nside,rings", [(8, 1), (4, 2)])
def test_contiguous_footprint_guard_band(contiguous_positions, region_nside, rings):
    ra, dec = contiguous_positions
    config = SplitConfig(seed=3, nside=32, region_nside=region_nside, guard_rings=rings)
    table, result = assignment_table(np.arange(ra.size), ra, dec, config)
    check_region_disjoint(table, 32, rings)
    metrics = summarise_split(table, config, result)
    assert 0 < metrics["guard"]["fraction_of_parents_lost"] < 0.5      # contiguous data pays for the guard band
    assert metrics["max_abs_fraction_deviation"] < 0.04
    again, _ = assignment_table(np.arange(ra.size), ra, dec, config)
    assert again.equals(table)


def test_different_seeds_give_different_splits(contiguous_positions):
    ra, dec = contiguous_positions
    a, _ = assignment_table(np.arange(ra.size), ra, dec, SplitConfig(seed=1, region_nside=4))
    b, _ = assignment_table(np.arange(ra.size), ra, dec, SplitConfig(seed=2, region_nside=4))
    assert not a.column("region_split").equals(b.column("region_split"))


def test_split_of_the_tiny_survey(tiny_survey, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    split_stage.main(["--params", str(params), "--survey", str(tiny_survey), "--out", str(tmp_path / "a.parquet"),
                      "--metrics", str(tmp_path / "m.json")])
    table = pq.read_table(tmp_path / "a.parquet")
    assert set(table.column("region_split").to_pylist()) <= {"train", "val", "test", "guard"}
    check_region_disjoint(table, 32, 1)


def test_bad_split_params_fail_naming_the_key(tmp_path):
    params = tiny_params()
    params["split"]["train_frac"] = 0.8
    with pytest.raises(ParamError, match="split.train_frac"):
        split_config(params, "params.yaml")
    params = tiny_params()
    params["split"]["region_nside"] = 64
    with pytest.raises(ParamError, match="split.region_nside"):
        split_config(params, "params.yaml")
    params = tiny_params()
    params["split"]["nside"] = 30
    with pytest.raises(ParamError, match="split.nside = 30"):
        split_config(params, "params.yaml")


def test_too_few_regions_is_an_error():
    ra, dec = np.array([10.0, 10.01, 10.02]), np.array([-5.0, -5.0, -5.01])
    with pytest.raises(ValueError, match="cannot make 3 region-disjoint splits"):
        assignment_table(np.arange(3), ra, dec, SplitConfig(seed=0))
    with pytest.raises(ValueError, match="not valid sky coordinates"):
        assignment_table(np.arange(3), np.array([1.0, np.nan, 3.0]), np.zeros(3), SplitConfig(seed=0))

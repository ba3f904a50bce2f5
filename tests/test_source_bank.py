"""Real-morphology sources from an HDF5 bank laid out like the users' COSMOS bank."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from darkhalo.sim.injection import render_columns
from darkhalo.physics.lensing import RenderSettings
from darkhalo.io.source_bank import SourceBank, SourceBankError

SCALE = 0.03  # arcsec per bank pixel, as the COSMOS bank


def make_bank(path, n=4, size=128, seed=0):
    """A small bank of clumpy HST-like galaxies (sum of Gaussian knots + sky noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2.0) * SCALE
    images = []
    for _ in range(n):
        img = np.zeros((size, size))
        for _ in range(5):
            cx, cy, sig, f = rng.normal(0, 0.15), rng.normal(0, 0.15), rng.uniform(0.03, 0.12), rng.uniform(0.5, 2)
            img += f * np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sig**2)
        images.append(img + rng.normal(0, 1e-3, img.shape))
    with h5py.File(path, "w") as h5:
        h5.attrs["pixel_scale_arcsec"] = SCALE
        h5.create_dataset("images", data=np.array(images, np.float32))
    return path


def row(theta_e, flux=2.0):
    r = dict(theta_e_arcsec=theta_e, lens_q=1.0, lens_phi_rad=0.0, lens_x_arcsec=0.0, lens_y_arcsec=0.0,
             shear=0.0, shear_phi_rad=0.0, src_x_arcsec=0.25, src_y_arcsec=0.1, src_reff_arcsec=0.2,
             src_n_sersic=1.0, src_q=1.0, src_phi_rad=0.7)
    r.update({f"src_flux_nmgy_{b}": flux for b in "grz"}, **{f"psf_fwhm_used_{b}": 1.2 for b in "grz"})
    return {k: np.array([v]) for k, v in r.items()}


def test_unlensed_bank_source_keeps_its_flux(tmp_path):
    bank = SourceBank(str(make_bank(tmp_path / "bank.h5")))
    images = bank.images(np.array([2]))
    _, lensed = render_columns(row(1e-6), RenderSettings(supersample=8, refine_rel=0.0), source_images=images,
                               source_pixel_scale_arcsec=bank.pixel_scale_arcsec)
    assert lensed[0] == pytest.approx([2.0] * 3, rel=0.01)


def test_lensed_bank_source_flux_equals_jacobian_magnification(tmp_path):
    # SIS: point magnification 2 theta_E / beta inside theta_E, 1 + theta_E / beta outside;
    # flux-weighted over the bank image's own pixels (an independent computation).
    bank = SourceBank(str(make_bank(tmp_path / "bank.h5")))
    image = bank.images(np.array([1]))
    theta_e = 1.2
    r = row(theta_e)
    _, lensed = render_columns(r, RenderSettings(supersample=8, refine_rel=0.0), source_images=image,
                               source_pixel_scale_arcsec=SCALE)
    size = image.shape[-1]
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2.0) * SCALE
    phi = 0.7
    bx = r["src_x_arcsec"][0] + np.cos(phi) * xx - np.sin(phi) * yy
    by = r["src_y_arcsec"][0] + np.sin(phi) * xx + np.cos(phi) * yy
    beta = np.hypot(bx, by)
    mu = np.where(beta < theta_e, 2 * theta_e / beta, 1 + theta_e / beta)
    expected = 2.0 * np.sum(image[0] * mu) / np.sum(image[0])
    assert lensed[0, 1] == pytest.approx(expected, rel=0.02)


def test_bad_banks_are_named(tmp_path):
    with pytest.raises(SourceBankError, match="not a readable HDF5"):
        SourceBank(str(tmp_path / "missing.h5"))
    with h5py.File(tmp_path / "noscale.h5", "w") as h5:
        h5.create_dataset("images", data=np.ones((2, 8, 8), np.float32))
    with pytest.raises(SourceBankError, match="pixel_scale_arcsec"):
        SourceBank(str(tmp_path / "noscale.h5"))
    bank = SourceBank(str(make_bank(tmp_path / "bank.h5")))
    with pytest.raises(SourceBankError, match=r"index out of range \[0, 4\)"):
        bank.images(np.array([7]))


def test_a_generation_can_inject_bank_sources(tmp_path, tiny_survey):
    """inject@<gen> with generations.<gen>.source_bank: every positive records its bank index."""
    import healpy as hp
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import tiny_params, write_params
    from darkhalo.io.dataset import read_table
    from stages import inject

    bank = make_bank(tmp_path / "bank.h5")
    cat = read_table(str(tiny_survey), columns=["parent_id", "ra", "dec"])
    pix = hp.ang2pix(32, cat.column("ra").to_numpy(), cat.column("dec").to_numpy(), nest=True, lonlat=True)
    pq.write_table(pa.table({"parent_id": cat.column("parent_id"), "healpix_pixel": pix,
                             "region_split": ["train"] * cat.num_rows}), tmp_path / "assignment.parquet")
    params = tiny_params()
    params["generations"]["gen5"].update(source_bank=str(bank))
    path = write_params(tmp_path / "params.yaml", params)
    inject.main(["--generation", "gen5", "--params", str(path), "--survey", str(tiny_survey), "--split",
                 str(tmp_path / "assignment.parquet"), "--out", str(tmp_path / "out"), "--metrics",
                 str(tmp_path / "m.json")])
    rows = read_table(str(tmp_path / "out"), columns=["is_control", "src_bank_index", "total_injected_flux_r"])
    positives = rows.filter(pa.compute.equal(rows.column("is_control"), 0))
    assert positives.num_rows > 0
    assert set(positives.column("src_bank_index").to_pylist()) <= {0, 1, 2, 3}
    assert min(positives.column("total_injected_flux_r").to_pylist()) > 0

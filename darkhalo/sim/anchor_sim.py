"""Embedded anchors: each known lens simulated at its catalogue position, through the survey and injection code.

Per anchor (``anchors.select_anchors`` row, parent_id = 2*2**40 + lenscat row):

* the site at the catalogue position (``survey.draw_site_at``: brick, depth
  mode, seeing, depth, extinction), a deflector drawn from the survey's LRG
  population (``population.draw_deflector``, sub-pixel offset as the survey's),
  neighbours and stars at the survey's densities -- all from
  ``keyed_rng(seed, "anchors", parent_id)``;
* an arc from the injection engine: the set's priors (``anchors.simulation.<set>``
  over ``inject.default_priors``) drawn by ``injection.draw_candidates`` (task seed
  ``task_seed64(seed, "anchors_<set>", parent_id, 0)``), rendered noiseless and
  PSF-convolved by ``injection.render_columns`` with the stamp's Moffat PSF
  (``psfsize_<band>``, the survey's beta).  Where the anchor list gives an
  Einstein radius, the drawn one is replaced by it (the source offset scaled
  with it, so ``src_offset_theta_e`` keeps its drawn value);
* the arc is added to the noiseless lens + neighbours image **before** the
  survey's noise, invvar and defects (``survey.observe``): the arc is one more
  source in the stamp, treated like the lens itself (background-limited noise,
  invvar = 1/sigma^2 of the background, unchanged by the arc), so the noise
  model and invvar stay exactly the survey's.

Rows carry the survey catalogue columns, the anchor identity columns and the
injection columns (``anchors_schema.INJECTION_FIELDS``: lens, shear, source, clumps,
fluxes per band, ``psf_fwhm_used_<band>``, ``moffat_beta``, ``supersample``,
``task_seed64``, ``arc_snr`` ...), from which ``injection.render_columns``
redraws the arc exactly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from darkhalo.sim import population, survey
from darkhalo.sim.anchors import THETA_E_FROM_LIST
from darkhalo.sim.anchors_config import AnchorsConfig
from darkhalo.sim.anchors_schema import (BASE_FIELDS, INJECTION_FLOAT_COLUMNS, INJECTION_INT32_COLUMNS,
                                         INJECTION_LIST_COLUMNS, SOURCE_EMBEDDED, identity_columns)
from darkhalo.sim.injection import (EngineSettings, GenerationSpec, InjectConfig, arc_snr, arc_snr_aperture, candidate_columns,
                        draw_candidates, good_pixels, injection_spec, render_columns)
from darkhalo.physics.lensing import RenderSettings
from darkhalo.core.params import section
from darkhalo.core.rng import keyed_rng
from darkhalo.io.stamps import PIXEL_COLUMNS, stamps_from_native
from darkhalo.core.units import BANDS, PIXEL_SCALE_ARCSEC, mag_from_flux_nmgy

RNG_STREAM = "anchors"


def simulation_specs(params: dict, config: AnchorsConfig, path: str) -> dict[str, GenerationSpec]:
    """Arc population per anchor set: ``anchors.simulation.<set>`` (priors, n_clumps) over ``inject.default_priors``."""
    defaults = section(params, "inject", path).get("default_priors") or {}
    sims = config.simulation
    return {name: injection_spec(f"anchors_{name}", sims[name], defaults, f"anchors.simulation.{name}", path)
            for name in config.sets}


def render_settings(config: survey.SurveyConfig, engine: EngineSettings) -> RenderSettings:
    """The injection engine's rendering with the survey's stamp size and Moffat beta (one PSF per stamp)."""
    return RenderSettings(config.stamp_size, engine.supersample, config.moffat_beta, PIXEL_SCALE_ARCSEC,
                          engine.tile_pix, engine.refine_rel)


def draw_anchor_site(config: survey.SurveyConfig, parent_id: int, ra_deg: float, dec_deg: float
                     ) -> tuple[dict, np.random.Generator]:
    """Catalogue values (site, deflector, neighbours) of one anchor and its random stream (noise follows)."""
    rng = keyed_rng(config.seed, RNG_STREAM, parent_id)
    row = survey.draw_site_at(float(ra_deg), float(dec_deg), parent_id, rng)
    row.update(population.draw_deflector(rng, row["ebv"]))
    half_pix = 0.5 * PIXEL_SCALE_ARCSEC
    row["lrg_x_arcsec"] = float(rng.uniform(-half_pix, half_pix))
    row["lrg_y_arcsec"] = float(rng.uniform(-half_pix, half_pix))
    row["_neighbours"] = survey.draw_neighbours(config, rng, row["gal_b_deg"])
    return row, rng


def _use_listed_theta_e(cands: dict, parents: dict, theta_e: np.ndarray, listed: np.ndarray) -> None:
    """Replace drawn Einstein radii by measured ones where ``listed``; source offsets scale with them."""
    if not listed.any():
        return
    rows = cands["row"]
    scale = np.where(listed, theta_e / cands["theta_e_arcsec"], 1.0)
    for axis in ("x", "y"):
        lens = parents[f"lrg_{axis}_arcsec"][rows]
        cands[f"src_{axis}_arcsec"] = lens + (cands[f"src_{axis}_arcsec"] - lens) * scale
    cands["theta_e_arcsec"] = np.where(listed, theta_e, cands["theta_e_arcsec"])


def simulate_anchors(config: survey.SurveyConfig, engine: EngineSettings, specs: dict[str, GenerationSpec],
                     anchors: pd.DataFrame) -> pa.Table:
    """``anchors_schema.BASE_FIELDS`` + native pixel columns of the anchors (rows in the order given).

    ``specs``: the arc population per set (``simulation_specs``); ``engine``: the
    injection engine's settings (supersampling, device, batch size).
    """
    n, size = len(anchors), config.stamp_size
    drawn = [draw_anchor_site(config, int(pid), ra, dec)
             for pid, ra, dec in zip(anchors["parent_id"], anchors["ra"], anchors["dec"])]
    rows, rngs = [d[0] for d in drawn], [d[1] for d in drawn]
    parents = {k: np.array([r[k] for r in rows]) for k in
               ("parent_id", "lrg_q", "lrg_phi_rad", "lrg_x_arcsec", "lrg_y_arcsec", "psfsize_g", "psfsize_r",
                "psfsize_z")}
    parents["lrg_mag_r"] = np.asarray(mag_from_flux_nmgy(np.array([r["lrg_flux_nmgy_r"] for r in rows])), float)
    render = render_settings(config, engine)
    arcs = np.zeros((n, 3, size, size), np.float32)
    lensed = np.zeros((n, 3))
    inj = {name: np.full(n, np.nan) for name in INJECTION_FLOAT_COLUMNS}
    ints = {name: np.zeros(n, np.int64) for name in (*INJECTION_INT32_COLUMNS, "task_seed64")}
    lists = {name: [[] for _ in range(n)] for name in INJECTION_LIST_COLUMNS}
    theta_e = anchors["anchor_theta_e_arcsec"].to_numpy(float)
    listed = (anchors["anchor_theta_e_source"] == THETA_E_FROM_LIST).to_numpy()
    sets = anchors["anchor_set"].to_numpy()
    for set_name, spec in specs.items():
        idx = np.flatnonzero(sets == set_name)
        if not len(idx):
            continue
        cands = draw_candidates(InjectConfig(config.seed, size, engine, spec), parents, idx)
        _use_listed_theta_e(cands, parents, theta_e[cands["row"]], listed[cands["row"]])
        cols = candidate_columns(cands, np.arange(len(idx)), parents)
        arcs[idx], lensed[idx] = render_columns(cols, render, engine.device, engine.batch_size)
        for key, values in cols.items():
            if key in lists:
                for k, i in enumerate(idx):
                    lists[key][i] = [float(v) for v in np.asarray(values[k]).reshape(-1)]
            elif key in inj:  # (src_bank_index: anchors draw Sersic sources)
                inj[key][idx] = values
        for key in ("src_dmag", "src_mag_r", "src_gr", "src_rz"):
            inj[key][idx] = cands[key]
        inj["src_clump_flux_frac"][idx] = cands["src_clump_flux_frac"] if spec.n_clumps else 0.0
        ints["config_id"][idx] = cands["config_id"]
        ints["task_seed64"][idx] = cands["task_seed64"]
        ints["src_n_clumps"][idx] = spec.n_clumps
    ints["supersample"][:] = engine.supersample
    inj["moffat_beta"][:] = config.moffat_beta
    noiseless = survey.render_noiseless(config, rows) + arcs
    table = survey.observe(config, rows, rngs, noiseless, list(survey.CATALOGUE_FIELDS))
    stamps = stamps_from_native(table)
    good = good_pixels(stamps)
    inj["arc_snr"] = arc_snr(arcs, stamps.invvar, good)
    inj["arc_snr_aperture"] = arc_snr_aperture(arcs, stamps.invvar, good)
    for j, band in enumerate(BANDS):
        inj[f"total_injected_flux_{band}"] = arcs[:, j].sum(axis=(1, 2), dtype=np.float64)
    src_total = np.stack([inj[f"src_flux_nmgy_{b}"] for b in BANDS], axis=1)
    inj["magnification"] = lensed.sum(axis=1) / src_total.sum(axis=1)
    out = table.drop_columns(list(PIXEL_COLUMNS))
    for name, column in identity_columns(anchors, SOURCE_EMBEDDED).items():
        out = out.append_column(name, column)
    for f in BASE_FIELDS[len(out.schema):]:
        if f.name in inj:
            values = pa.array(inj[f.name], f.type)
        elif f.name in ints:
            values = pa.array(ints[f.name], f.type)
        else:
            values = pa.array(lists[f.name], f.type)
        out = out.append_column(f, values)
    for name in PIXEL_COLUMNS:
        out = out.append_column(table.schema.field(name), table.column(name))
    return out

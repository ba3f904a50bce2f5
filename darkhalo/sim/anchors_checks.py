"""Measured checks on every anchor stamp: a galaxy at the centre, the arc-visibility S/N and the tier.

* ``measure_anchor``: on an anchor's stamp, the measured galaxy at the stamp
  centre (``centre_check``: aperture S/N of all bands and a significant light
  peak of the reddest band near the centre -- robust to arcs brighter than the
  lens) and the arc-visibility S/N and tier (darkhalo.physics.visibility.arc_visibility;
  Tier A when S/N >= threshold).
* ``measure_anchors`` / ``apply_check_policy``: the measured checks on every
  stamp (galaxy at the centre, visibility S/N, tier); a failing anchor is an
  error naming it (``centre_policy: fail``) or a counted, listed drop
  (``drop``, the default; more than ``max_dropped_fraction`` of them is an
  error all the same).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.ndimage import gaussian_filter, maximum_filter
from tqdm import tqdm

from darkhalo.core.units import BANDS
from darkhalo.io.stamps import StampBatch
from darkhalo.physics.profiles import pixel_coords_arcsec
from darkhalo.physics.visibility import CentreGalaxy, arc_visibility, centre_galaxy, tier
from darkhalo.sim.anchors_config import AnchorsConfig
from darkhalo.sim.anchors_schema import MEASUREMENT_FIELDS, anchor_group

CENTRE_PEAK_MIN_SIGMA = 5.0        # a local maximum of the smoothed S/N map counts above this (MAD) sigma
CENTRE_PEAK_SMOOTH_PIX = 1.0       # Gaussian sigma (pixels) of that smoothing
CENTRE_SEARCH_RADIUS_ARCSEC = 3.0


def nearest_peak_offset_arcsec(image: np.ndarray, invvar: np.ndarray,
                               min_peak_sigma: float = CENTRE_PEAK_MIN_SIGMA,
                               smooth_pix: float = CENTRE_PEAK_SMOOTH_PIX,
                               search_radius_arcsec: float = CENTRE_SEARCH_RADIUS_ARCSEC) -> float:
    """Distance (arcsec) from the stamp centre to the nearest significant local maximum of one band's
    S/N map (image sqrt(invvar), (S, S)) smoothed by a Gaussian of ``smooth_pix`` pixels; significant:
    above ``min_peak_sigma`` x its robust (MAD) scatter.  inf when none lies within
    ``search_radius_arcsec``.  Bad pixels (NaN, invvar <= 0) count as zero."""
    image = np.asarray(image, np.float64)
    invvar = np.asarray(invvar, np.float64)
    good = np.isfinite(image) & np.isfinite(invvar) & (invvar > 0)
    snr = np.where(good, image * np.sqrt(np.where(good, invvar, 0.0)), 0.0)
    smooth = gaussian_filter(snr, smooth_pix)
    scatter = max(1.4826 * float(np.median(np.abs(smooth - np.median(smooth)))), 1e-12)
    x, y = pixel_coords_arcsec(image.shape[-1])
    r = np.hypot(x, y)
    peaks = (smooth == maximum_filter(smooth, size=3)) & (smooth > min_peak_sigma * scatter) & \
        (r <= search_radius_arcsec)
    return float(r[peaks].min()) if peaks.any() else float("inf")


def centre_check(image: np.ndarray, invvar: np.ndarray, psf_fwhm_arcsec, *, min_snr: float,
                 max_offset_arcsec: float) -> CentreGalaxy:
    """Is there a galaxy at the stamp centre?  ``image``/``invvar`` (B, S, S) with bands in g, r, z order.

    Both: the aperture S/N within one FWHM of the centre, all bands
    (``visibility.centre_galaxy``), is >= ``min_snr``; and the nearest
    significant light peak of the **reddest band given** (the last one;
    ``nearest_peak_offset_arcsec``) is within ``max_offset_arcsec`` of the centre.

    Why not ``centre_galaxy``'s brightest peak within 3" of all bands: a blue
    arc or a neighbour brighter than the lens pulls it away (it failed 21 of
    the 164 embedded default anchors with DESI-like src_dmag 0.5-2.5; the
    nearest peak of all bands still failed 10-11 of 164 with src_dmag 1-3).
    Lens galaxies are red and arcs blue, so the lens stays a local maximum in
    z (1 of 164 failed: a compact source magnified 13x outshining the lens in z
    too).  Blank sky fails both tests (0 of 100 noise stamps passed the peak test).
    """
    aperture = centre_galaxy(image, invvar, psf_fwhm_arcsec, min_snr=min_snr, max_offset_arcsec=max_offset_arcsec)
    image = np.asarray(image)
    offset = nearest_peak_offset_arcsec(image[-1] if image.ndim == 3 else image,
                                        np.asarray(invvar)[-1] if image.ndim == 3 else invvar)
    return CentreGalaxy(aperture.snr, offset, bool(aperture.snr >= min_snr and offset <= max_offset_arcsec))


def measure_anchor(image: np.ndarray, invvar: np.ndarray, psf_fwhm_arcsec, theta_e_arcsec: float,
                   config: AnchorsConfig) -> dict:
    """Centre-galaxy check (``centre_check``) and arc visibility of one anchor stamp ((B, S, S) nmgy and nmgy^-2).

    Returns centre_snr, centre_offset_arcsec (to the nearest significant light
    peak of the reddest band given; inf if none within 3"), centre_ok, visibility_snr,
    visibility_snr_per_band, annulus_inner_arcsec, annulus_outer_arcsec, tier ('A' / 'B').
    """
    centre = centre_check(image, invvar, psf_fwhm_arcsec, min_snr=config.centre_min_snr,
                          max_offset_arcsec=config.centre_max_offset_arcsec)
    vis = arc_visibility(image, invvar, psf_fwhm_arcsec, theta_e_arcsec,
                         annulus_half_width_psf_fwhm=config.annulus_half_width_psf_fwhm,
                         core_radius_psf_fwhm=config.core_radius_psf_fwhm)
    return {"centre_snr": centre.snr, "centre_offset_arcsec": centre.peak_offset_arcsec, "centre_ok": centre.ok,
            "visibility_snr": vis.snr, "visibility_snr_per_band": list(vis.snr_per_band),
            "annulus_inner_arcsec": vis.annulus_inner_arcsec, "annulus_outer_arcsec": vis.annulus_outer_arcsec,
            "tier": tier(vis.snr, config.tier_snr_threshold)}


class CentreGalaxyError(ValueError):
    """Anchor stamps without a measured galaxy at their centre (the message names them)."""


def require_centre_galaxies(names: list[str], measurements: list[dict], n_list: int = 20) -> None:
    """Raise CentreGalaxyError naming every anchor whose stamp has no galaxy at the centre."""
    bad = [(n, m) for n, m in zip(names, measurements) if not m["centre_ok"]]
    if bad:
        lines = "\n".join(f"  {n}: central S/N {m['centre_snr']:.1f}, light peak {m['centre_offset_arcsec']:.1f}\" "
                          "from the centre" for n, m in bad[:n_list])
        raise CentreGalaxyError(f"{len(bad)} of {len(names)} anchor stamps have no galaxy at the centre:\n{lines}")


class AnchorCheckError(ValueError):
    """Anchor stamps that failed the measured checks (centre galaxy, visibility); the message names them."""


CHECK_NO_BAND, CHECK_NO_CENTRE, CHECK_UNMEASURABLE = "no_band", "no_centre_galaxy", "visibility_unmeasurable"


def measure_anchors(table: pa.Table, stamps: StampBatch, config: AnchorsConfig) -> tuple[dict, list[dict]]:
    """MEASUREMENT_FIELDS values of every row (catalogue + anchor columns, pixels in ``stamps``) and the failures.

    Measured on the bands present (pixels with NaN or invvar 0 are ignored by the
    measurements); PSF FWHM per band = ``psfsize_<band>`` where known (embedded),
    else ``cutout_psf_fwhm_arcsec`` (real mode); annulus at ``anchor_theta_e_arcsec``.
    A failure is {index, name, anchor_set, reason, detail, centre_snr, centre_offset_arcsec};
    reasons: no_band, no_centre_galaxy, visibility_unmeasurable.  Failing rows get tier None.
    """
    meta = table.select(["name", "anchor_set", "anchor_theta_e_arcsec"] +
                        [f"psfsize_{b}" for b in BANDS]).to_pylist()
    names = [f.name for f in MEASUREMENT_FIELDS]
    cols = {n: [] for n in names}
    failures = []
    assumed = config.cutout_psf_fwhm_arcsec
    for i, row in enumerate(tqdm(meta, desc="anchor checks", unit="anchor")):
        fwhm = np.array([row[f"psfsize_{b}"] if row[f"psfsize_{b}"] is not None and np.isfinite(row[f"psfsize_{b}"])
                         and row[f"psfsize_{b}"] > 0 else float(assumed[b]) for b in BANDS])
        rec = {n: float("nan") for n in names}
        rec.update(anchor_centre_ok=False, anchor_tier=None, anchor_group=None,
                   **{f"anchor_psf_fwhm_arcsec_{b}": float(fwhm[j]) for j, b in enumerate(BANDS)})
        bands = [j for j in range(3) if stamps.present[i, j] and np.isfinite(stamps.image[i, j]).any()]
        failure = None
        if not bands:
            failure = (CHECK_NO_BAND, "no band with data")
        else:
            image = stamps.image[i, bands].astype(np.float64)
            invvar = np.nan_to_num(stamps.invvar[i, bands].astype(np.float64), nan=0.0)
            theta = float(row["anchor_theta_e_arcsec"])
            try:
                m = measure_anchor(image, invvar, fwhm[bands], theta, config)
            except ValueError as exc:
                c = centre_check(image, invvar, fwhm[bands], min_snr=config.centre_min_snr,
                                 max_offset_arcsec=config.centre_max_offset_arcsec)
                m = {"centre_snr": c.snr, "centre_offset_arcsec": c.peak_offset_arcsec, "centre_ok": c.ok}
                failure = (CHECK_UNMEASURABLE, str(exc))
            rec.update(anchor_centre_snr=float(m["centre_snr"]),
                       anchor_centre_offset_arcsec=float(m["centre_offset_arcsec"]),
                       anchor_centre_ok=bool(m["centre_ok"]))
            if "visibility_snr" in m:
                rec.update(anchor_visibility_snr=float(m["visibility_snr"]),
                           anchor_annulus_inner_arcsec=float(m["annulus_inner_arcsec"]),
                           anchor_annulus_outer_arcsec=float(m["annulus_outer_arcsec"]))
                for j, snr in zip(bands, m["visibility_snr_per_band"]):
                    rec[f"anchor_visibility_snr_{BANDS[j]}"] = float(snr)
                rec["anchor_tier"] = m["tier"]
                rec["anchor_group"] = anchor_group(row["anchor_set"], m["tier"])
            if not m["centre_ok"]:
                peak = (f"nearest light peak {m['centre_offset_arcsec']:.1f}\" from the centre"
                        if np.isfinite(m["centre_offset_arcsec"]) else
                        f"no significant light peak within {CENTRE_SEARCH_RADIUS_ARCSEC:g}\"")
                failure = (CHECK_NO_CENTRE, f"central S/N {m['centre_snr']:.1f} (need >= {config.centre_min_snr:g}), "
                                            f"{peak} (allowed {config.centre_max_offset_arcsec:g}\")")
        if failure is not None:
            rec.update(anchor_tier=None, anchor_group=None)
            failures.append({"index": i, "name": row["name"], "anchor_set": row["anchor_set"], "reason": failure[0],
                             "detail": failure[1], "centre_snr": rec["anchor_centre_snr"],
                             "centre_offset_arcsec": rec["anchor_centre_offset_arcsec"]})
        for n in names:
            cols[n].append(rec[n])
    return cols, failures


def apply_check_policy(table: pa.Table, failures: list[dict], policy: str, max_dropped_fraction: float = 0.0,
                       n_list: int = 20) -> pa.Table:
    """``table`` without the failing rows (policy 'drop', at most ``max_dropped_fraction`` of the rows), else
    AnchorCheckError naming them (policy 'fail': any failure; 'drop': too many)."""
    if not failures:
        return table
    fraction = len(failures) / max(table.num_rows, 1)
    if policy == "fail" or fraction > max_dropped_fraction:
        why = ("anchors.centre_policy = fail; 'drop' counts and skips them" if policy == "fail" else
               f"{fraction:.1%} > anchors.max_dropped_fraction {max_dropped_fraction:.1%}: positions or cutouts wrong?")
        lines = "\n".join(f"  {f['name']} [{f['anchor_set']}]: {f['reason']}: {f['detail']}" for f in failures[:n_list])
        raise AnchorCheckError(f"{len(failures)} of {table.num_rows} anchor stamps failed the anchor checks "
                               f"({why}):\n{lines}")
    keep = np.ones(table.num_rows, bool)
    keep[[f["index"] for f in failures]] = False
    return table.filter(pa.array(keep))

"""The hard negatives' light by class: the red central component and pre-PSF feature light.

``CLASS_MODELS[hn_class]`` gives the class's feature builder (``ring``, ``spiral``,
``merger``, ``edge_on``: components and a shape record from the class's geometry) and the
ranges its core and features are drawn from; ``draw_core`` draws the central component
(the survey's ``lrg_*`` columns); ``render_features`` renders the components in nmgy per
pixel (observed, Milky-Way extincted fluxes), integrated over pixels, before the PSF.
Angles in radians, sizes in arcsec.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from darkhalo.core.units import BANDS, PIXEL_SCALE_ARCSEC
from darkhalo.physics.profiles import pixel_coords_arcsec, render_sersic
from darkhalo.sim import population


def render_blobs(x_arcsec, y_arcsec, sigma_arcsec, weight, size: int) -> np.ndarray:
    """Sum of circular Gaussians (total flux ``weight`` each), integrated exactly over pixels: (size, size)."""
    x, y = np.asarray(x_arcsec, float), np.asarray(y_arcsec, float)
    sig, w = np.asarray(sigma_arcsec, float), np.asarray(weight, float)
    edges = (np.arange(size + 1) - size / 2.0) * PIXEL_SCALE_ARCSEC
    px = np.diff(ndtr((edges[None, :] - x[:, None]) / sig[:, None]), axis=1)
    py = np.diff(ndtr((edges[None, :] - y[:, None]) / sig[:, None]), axis=1)
    return np.einsum("k,ki,kj->ij", w, py, px)


def _project(u, v, q_incl, phi_rad, x0, y0):
    """Disk-plane (u, v) arcsec -> sky (x, y): v squashed by the inclination axis ratio, rotated by phi."""
    v = v * q_incl
    c, s = np.cos(phi_rad), np.sin(phi_rad)
    return x0 + c * u - s * v, y0 + s * u + c * v


def _curve_blobs(u, v, sigma, weight_density, q_incl, phi, x0, y0):
    """Blobs along a densely sampled disk-plane curve; weights = density x arc length."""
    ds = np.hypot(np.gradient(u), np.gradient(v))
    x, y = _project(u, v, q_incl, phi, x0, y0)
    return x, y, np.broadcast_to(sigma, u.shape), weight_density * ds


def _samples(length_arcsec, sigma_arcsec):
    return int(np.clip(np.ceil(length_arcsec / (0.4 * sigma_arcsec)), 16, 4000))


def draw_core(rng, core_mag_r, n_range, reff_range, q_range, gr_range, rz_range, ebv):
    """The red-ish central component, in the survey's lrg_* columns."""
    n_sersic = float(rng.uniform(*n_range))
    gr, rz = float(rng.uniform(*gr_range)), float(rng.uniform(*rz_range))
    flux = population.band_fluxes_nmgy(core_mag_r, gr, rz, ebv)
    half_pix = 0.5 * PIXEL_SCALE_ARCSEC
    row = {"lrg_type": "DEV" if n_sersic >= 3.5 else "SER" if n_sersic > 1.2 else "EXP",
           "lrg_reff_arcsec": float(rng.uniform(*reff_range)), "lrg_n_sersic": n_sersic,
           "lrg_q": float(rng.uniform(*q_range)), "lrg_phi_rad": float(rng.uniform(0.0, np.pi)),
           "lrg_x_arcsec": float(rng.uniform(-half_pix, half_pix)),
           "lrg_y_arcsec": float(rng.uniform(-half_pix, half_pix))}
    for band in BANDS:
        row[f"lrg_flux_nmgy_{band}"] = float(flux[band])
    return row


def _ring(rng, radius, core):
    """A (possibly lopsided, knotty, inclined) ring of light at ``radius`` arcsec."""
    q_incl = float(rng.uniform(0.45, 1.0))
    phi = float(rng.uniform(0.0, np.pi))
    width = float(rng.uniform(0.08, 0.25))
    lopsided, t0 = float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.0, 2 * np.pi))
    n = _samples(2 * np.pi * radius, width)
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    density = 1.0 + lopsided * np.cos(t - t0)
    x, y, sig, w = _curve_blobs(radius * np.cos(t), radius * np.sin(t), width, density, q_incl, phi,
                                core["lrg_x_arcsec"], core["lrg_y_arcsec"])
    n_knots = int(rng.integers(0, 7))
    knot_frac = float(rng.uniform(0.1, 0.4)) if n_knots else 0.0
    tk = rng.uniform(0.0, 2 * np.pi, n_knots)
    kx, ky = _project(radius * np.cos(tk), radius * np.sin(tk), q_incl, phi, core["lrg_x_arcsec"], core["lrg_y_arcsec"])
    ksig = rng.uniform(0.08, 0.18, n_knots)
    w = w / w.sum() * (1.0 - knot_frac)
    kw = np.full(n_knots, knot_frac / max(n_knots, 1))
    blobs = (np.concatenate([x, kx]), np.concatenate([y, ky]), np.concatenate([sig, ksig]), np.concatenate([w, kw]))
    shape = {"ring_radius_arcsec": radius, "ring_q": q_incl, "ring_phi_rad": phi, "ring_width_arcsec": width,
             "lopsidedness": lopsided, "n_knots": n_knots, "knot_flux_frac": knot_frac}
    return [("blobs", 1.0, blobs, None)], shape


def _spiral(rng, radius, core):
    """Two logarithmic arms from ~0.4 R to ~1.5 R plus a faint exponential disk."""
    q_incl = float(rng.uniform(0.5, 1.0))
    phi = float(rng.uniform(0.0, np.pi))
    pitch = float(np.radians(rng.uniform(12.0, 30.0)))
    r_in, r_out = radius * float(rng.uniform(0.3, 0.5)), radius * float(rng.uniform(1.3, 1.6))
    width = float(rng.uniform(0.1, 0.25))
    hand = 1.0 if rng.uniform() < 0.5 else -1.0
    theta0 = float(rng.uniform(0.0, 2 * np.pi))
    disk_frac = float(rng.uniform(0.2, 0.5))
    theta_max = np.log(r_out / r_in) / np.tan(pitch)
    xs, ys, ss, ws = [], [], [], []
    for arm in range(2):
        n = _samples(r_out * theta_max, width)
        th = np.linspace(0.0, theta_max, n)
        r = r_in * np.exp(th * np.tan(pitch))
        ang = hand * th + theta0 + arm * np.pi
        density = np.exp(-1.2 * (r - r_in) / (r_out - r_in)) * (1.0 + 0.3 * np.sin(5.0 * th + arm))
        x, y, s, w = _curve_blobs(r * np.cos(ang), r * np.sin(ang), width, density, q_incl, phi,
                                  core["lrg_x_arcsec"], core["lrg_y_arcsec"])
        xs.append(x), ys.append(y), ss.append(s), ws.append(w)
    w = np.concatenate(ws)
    arms = (np.concatenate(xs), np.concatenate(ys), np.concatenate(ss), w / w.sum())
    disk = {"reff_arcsec": 0.5 * r_out, "n_sersic": 1.0, "q": q_incl, "phi_rad": phi}
    shape = {"arm_inner_radius_arcsec": r_in, "arm_outer_radius_arcsec": r_out, "pitch_deg": float(np.degrees(pitch)),
             "arm_width_arcsec": width, "disk_q": q_incl, "disk_phi_rad": phi, "disk_flux_frac": disk_frac,
             "handedness": hand}
    return [("blobs", 1.0 - disk_frac, arms, None), ("sersic", disk_frac, disk, None)], shape


def _merger(rng, radius, core):
    """A companion at ``radius`` and one or two curved tidal tails."""
    psi = float(rng.uniform(0.0, 2 * np.pi))
    comp_frac = float(rng.uniform(0.25, 0.5))
    comp = {"reff_arcsec": float(rng.uniform(0.2, 0.6)), "n_sersic": float(rng.uniform(1.0, 2.5)),
            "q": float(rng.uniform(0.4, 1.0)), "phi_rad": float(rng.uniform(0.0, np.pi)),
            "dx_arcsec": radius * np.cos(psi), "dy_arcsec": radius * np.sin(psi)}
    n_tails = int(rng.integers(1, 3))
    xs, ys, ss, ws, tails = [], [], [], [], []
    for k in range(n_tails):
        start_angle = psi + np.pi + float(rng.normal(0.0, 0.5)) if k == 0 else psi + float(rng.normal(0.0, 0.5))
        sweep = float(rng.uniform(1.2, 2.8)) * (1.0 if rng.uniform() < 0.5 else -1.0)
        r_start, r_end = float(rng.uniform(0.4, 0.8)), radius * float(rng.uniform(1.0, 1.6))
        n = _samples((r_start + r_end) * abs(sweep), 0.1)
        t = np.linspace(0.0, 1.0, n)
        r = r_start + (r_end - r_start) * t
        ang = start_angle + sweep * t
        x, y, s, w = _curve_blobs(r * np.cos(ang), r * np.sin(ang), 0.1 + 0.2 * t, np.exp(-1.5 * t), 1.0, 0.0,
                                  core["lrg_x_arcsec"], core["lrg_y_arcsec"])
        xs.append(x), ys.append(y), ss.append(s), ws.append(w)
        tails.append({"start_angle_rad": start_angle, "sweep_rad": sweep, "r_start_arcsec": r_start,
                      "r_end_arcsec": r_end})
    w = np.concatenate(ws)
    blobs = (np.concatenate(xs), np.concatenate(ys), np.concatenate(ss), w / w.sum())
    comp_gr, comp_rz = float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.4, 0.9))
    shape = {"companion_separation_arcsec": radius, "companion_angle_rad": psi, "companion_flux_frac": comp_frac,
             "companion_reff_arcsec": comp["reff_arcsec"], "companion_n_sersic": comp["n_sersic"],
             "companion_gr": comp_gr, "companion_rz": comp_rz, "tails": tails}
    return [("blobs", 1.0 - comp_frac, blobs, None), ("sersic", comp_frac, comp, (comp_gr, comp_rz))], shape


def _edge_on(rng, radius, core):
    """A thin exponential disk (q 0.08-0.2) through the bulge, with a dust lane."""
    disk = {"reff_arcsec": radius * float(rng.uniform(0.5, 0.8)), "n_sersic": 1.0,
            "q": float(rng.uniform(0.08, 0.2)), "phi_rad": core["lrg_phi_rad"]}
    tau_r = float(rng.uniform(0.2, 0.8))
    lane_width = float(rng.uniform(0.06, 0.15))
    shape = {"disk_reff_arcsec": disk["reff_arcsec"], "disk_q": disk["q"], "disk_phi_rad": disk["phi_rad"],
             "dust_tau_r": tau_r, "dust_lane_width_arcsec": lane_width}
    dust = {"tau": {"g": 1.45 * tau_r, "r": tau_r, "z": 0.55 * tau_r}, "width_arcsec": lane_width}
    return [("sersic", 1.0, disk, None, dust)], shape


# per class: (shape builder, core n, core R_e, core q, core g-r, core r-z, feature g-r, feature r-z)
CLASS_MODELS = {
    "ring": (_ring, (2.0, 4.0), (0.3, 0.9), (0.7, 1.0), (1.2, 1.8), (0.8, 1.3), (0.2, 0.8), (0.0, 0.5)),
    "spiral": (_spiral, (1.5, 3.0), (0.25, 0.7), (0.7, 1.0), (0.9, 1.5), (0.6, 1.1), (0.2, 0.7), (0.0, 0.5)),
    "merger": (_merger, (2.0, 4.0), (0.3, 1.0), (0.6, 1.0), (1.1, 1.8), (0.8, 1.3), (0.3, 0.9), (0.1, 0.6)),
    "edge_on": (_edge_on, (1.5, 3.0), (0.25, 0.6), (0.6, 0.95), (0.9, 1.5), (0.6, 1.1), (0.5, 1.0), (0.3, 0.7)),
}


def render_features(components, core, feature_mag_r, feature_gr, feature_rz, ebv, size, supersample):
    """Pre-PSF feature light (3, size, size) in nmgy/pixel, observed (MW-extincted) fluxes."""
    out = np.zeros((3, size, size))
    x, y = pixel_coords_arcsec(size)
    for comp in components:
        kind, frac, spec, colours = comp[:4]
        dust = comp[4] if len(comp) > 4 else None
        gr, rz = colours if colours is not None else (feature_gr, feature_rz)
        fluxes = population.band_fluxes_nmgy(feature_mag_r - 2.5 * np.log10(frac), gr, rz, ebv)
        if kind == "blobs":
            unit = render_blobs(*spec[:3], spec[3], size)
        else:
            x0 = core["lrg_x_arcsec"] + spec.get("dx_arcsec", 0.0)
            y0 = core["lrg_y_arcsec"] + spec.get("dy_arcsec", 0.0)
            unit = render_sersic(np.ones(1), spec["reff_arcsec"], spec["n_sersic"], spec["q"], spec["phi_rad"],
                                 x0, y0, size, supersample=supersample)[0]
        unit = unit / unit.sum()
        for j, band in enumerate(BANDS):
            band_image = unit * float(fluxes[band])
            if dust is not None:
                c, s = np.cos(spec["phi_rad"]), np.sin(spec["phi_rad"])
                minor = -s * (x - core["lrg_x_arcsec"]) + c * (y - core["lrg_y_arcsec"])
                lane = np.exp(-0.5 * (minor / dust["width_arcsec"]) ** 2)
                band_image = band_image * (1.0 - (1.0 - np.exp(-dust["tau"][band])) * lane)
            out[j] += band_image
    return out

"""Procedural visual-cortex geometry: the mask and the retinotopic atlas of nsd-flat-sim.

The canvas is NSD-Flat's: 215 x 200 pixels of 1 mm, x in [-100, 100] mm (left to right)
and y in [-120, 95] mm (bottom to top; row 0 is the top). Each hemisphere gets a local
frame ``(u, t)``:

* ``u`` (mm) runs along the calcarine axis, from the foveal confluence (``u = 0``,
  lateral) to the far periphery (``u ~ 56``, near the midline). Eccentricity follows the
  log-polar cortical magnification law ``E = a (exp(u / k) - 1)`` (Schwartz 1977;
  Horton & Hoyt 1991), so the fovea takes most of the cortex.
* ``t`` (unitless) runs across it, dorsal positive, in units of a local width ``w(u)``
  that grows toward the periphery, which gives the early visual areas their fan shape.
  Bands of ``t`` are the areas: V1 straddles the horizontal meridian (``|t| < 2``),
  V2 and V3 mirror it dorsally (lower visual field) and ventrally (upper field), then
  V3A/B and IPS dorsally, hV4, VO and ventral temporal cortex (VTC) ventrally, and LO /
  TO laterally beyond the foveal confluence. Polar angle reverses at every area border
  (vertical meridian at V1/V2, horizontal at V2/V3, vertical at V3/V3A and V3/hV4), as
  in human retinotopic maps (Wandell et al. 2007).

The left hemisphere (x < 0) represents the right visual field; the right hemisphere is
its mirror image. Atlas quantities are defined at every point of the canvas, so any
mask (the procedural one, the real ``nsdgeneral`` mask, a user file) can be used, and a
subject's idiosyncratic anatomy is a smooth warp of the points where the atlas is read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from boldgpt.data import schema

# Visual areas, in the order of their integer labels.
AREAS = ("V1", "V2", "V3", "hV4", "VO", "VTC", "V3AB", "IPS", "LO", "TO")
AREA_INDEX = {name: i for i, name in enumerate(AREAS)}

STIMULUS_DEG = 8.4
"""Side of the (square) stimulus in degrees of visual angle, as in NSD."""

# Left-hemisphere frame: foveal confluence position (mm) and calcarine direction.
_FOVEA_MM = (-70.0, -16.0)
_AXIS_DEG = 6.0
# w(u) = _W0 + _W1 * max(u, 0): local width of one t unit (mm).
_W0, _W1 = 4.2, 0.105
# Eccentricity law E(u) = _ECC_A * (exp(u / _ECC_K) - 1) (degrees).
_ECC_A, _ECC_K = 0.8, 24.0
_U_LATERAL = -4.0  # LO / TO begin lateral of this u
_SOFT_T, _SOFT_U = 0.25, 2.0  # widths of the soft area borders (t units, mm)

# Per area: (t range or None, u range or None, RF size intercept deg, RF size slope,
# eccentricity gain of RF centres, compressive exponent, "higher-levelness" h,
# contrast-channel weights (fine, coarse, colour)).
# RF sizes follow population-RF estimates (Dumoulin & Wandell 2008; Kay et al. 2013):
# small in V1, growing along the hierarchy; exponents follow the CSS model (Kay et al.
# 2013): closer to linear in V1, more compressive in higher areas.
_AREA_PARAMS: dict[str, tuple] = {
    # t range, u range, sigma0, sigma slope, ecc gain, exponent n, level h, channel mix
    "V1": ((-2.0, 2.0), (_U_LATERAL, np.inf), 0.20, 0.10, 1.0, 0.60, 0.00, (0.60, 0.30, 0.10)),
    "V2": (None, (_U_LATERAL, np.inf), 0.30, 0.15, 1.0, 0.50, 0.05, (0.45, 0.40, 0.15)),
    "V3": (None, (_U_LATERAL, np.inf), 0.40, 0.22, 1.0, 0.45, 0.10, (0.35, 0.45, 0.20)),
    "hV4": ((-6.5, -4.7), (_U_LATERAL, np.inf), 0.70, 0.30, 0.8, 0.40, 0.30, (0.25, 0.35, 0.40)),
    "VO": ((-8.0, -6.5), (_U_LATERAL, np.inf), 1.00, 0.40, 0.6, 0.35, 0.50, (0.20, 0.40, 0.40)),
    "VTC": ((-np.inf, -8.0), (-np.inf, np.inf), 2.00, 0.50, 0.4, 0.30, 0.70, (0.20, 0.40, 0.40)),
    "V3AB": ((4.7, 6.5), (_U_LATERAL, np.inf), 0.80, 0.35, 0.8, 0.40, 0.25, (0.30, 0.60, 0.10)),
    "IPS": ((6.5, np.inf), (-np.inf, np.inf), 1.50, 0.50, 0.6, 0.30, 0.40, (0.20, 0.70, 0.10)),
    "LO": ((-8.0, 1.5), (-np.inf, _U_LATERAL), 1.20, 0.45, 0.5, 0.30, 0.55, (0.30, 0.50, 0.20)),
    "TO": ((1.5, 6.5), (-np.inf, _U_LATERAL), 1.50, 0.50, 0.6, 0.30, 0.40, (0.25, 0.65, 0.10)),
}
AREA_CHANNEL_MIX = np.array([_AREA_PARAMS[a][7] for a in AREAS], dtype=np.float32)
"""(len(AREAS), 3): each area's weights on the fine / coarse / colour contrast channels."""
# V2 and V3 are two bands each (dorsal and ventral).
_BANDS_V2 = ((2.0, 3.5), (-3.5, -2.0))
_BANDS_V3 = ((3.5, 4.7), (-4.7, -3.5))

# Category-selective regions (Kanwisher 2010; Downing et al. 2001; Epstein & Kanwisher
# 1998; Konkle & Oliva 2012; Jain et al. 2023 / Khosla et al. 2022 for food): Gaussian
# blobs in the (u [mm], t) frame: (u0, t0, sd_u mm, sd_t, amplitude).
DOMAINS = ("faces", "bodies", "animals", "food", "places", "vehicles", "objects")
_REGIONS: dict[str, tuple[tuple[float, float, float, float, float], ...]] = {
    "faces": ((16.0, -9.8, 6.0, 0.8, 1.0), (-11.0, -2.8, 5.0, 1.0, 0.8)),  # FFA, OFA
    "bodies": ((-14.0, 0.6, 6.0, 1.2, 1.0), (23.0, -9.0, 5.0, 0.7, 0.6)),  # EBA, FBA
    "animals": ((3.0, -9.4, 7.0, 1.0, 1.2), (-6.0, -1.4, 6.0, 1.3, 0.9)),
    "food": ((28.0, -10.5, 4.0, 0.6, 1.2), (9.0, -8.2, 4.0, 0.6, 0.8)),  # flanking FFA
    "places": ((40.0, -9.2, 6.0, 0.8, 1.0), (10.0, 7.4, 6.0, 0.8, 0.8)),  # PPA, OPA
    "vehicles": ((47.0, -8.5, 6.0, 0.8, 1.2), (30.0, 7.2, 8.0, 0.8, 0.5)),
    "objects": ((-5.0, -4.0, 6.0, 1.2, 1.5), (16.0, -7.4, 6.0, 0.7, 1.0)),  # LO, pFs
}

MASK_PIXELS = 18_600
"""Pixels of the procedural mask (the real nsdgeneral mask has 18,577)."""


def canvas_mm() -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in mm of every canvas pixel centre, each (215, 200)."""
    rows, cols = np.mgrid[0 : schema.HEIGHT, 0 : schema.WIDTH].astype(np.float64)
    return pixel_to_mm(rows, cols)


def pixel_to_mm(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canvas (row, col) -> flat-map (x, y) in mm (1 mm pixels; row 0 is the top)."""
    left, _, _, top = schema.MAP_RECT_MM
    return left + 0.5 + np.asarray(cols), top - 0.5 - np.asarray(rows)


def mm_to_pixel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat-map (x, y) in mm -> fractional canvas (row, col); inverse of pixel_to_mm."""
    left, _, _, top = schema.MAP_RECT_MM
    return top - 0.5 - np.asarray(y), np.asarray(x) - left - 0.5


def hemisphere_frame(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map points (mm) to ``(hemi, u, t)``: hemisphere (0 left, 1 right), calcarine
    coordinate u (mm) and cross coordinate t (units of the local width)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    hemi = (x >= 0).astype(np.int8)
    xm = np.where(hemi == 1, -x, x)  # mirror the right hemisphere onto the left frame
    dx, dy = xm - _FOVEA_MM[0], y - _FOVEA_MM[1]
    c, s = np.cos(np.radians(_AXIS_DEG)), np.sin(np.radians(_AXIS_DEG))
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return hemi, u, v / local_width(u)


def local_width(u: np.ndarray) -> np.ndarray:
    """Width (mm) of one t unit at calcarine position u."""
    return _W0 + _W1 * np.maximum(u, 0.0)


def eccentricity(u: np.ndarray) -> np.ndarray:
    """Eccentricity (deg) represented at calcarine position u (mm): the log-polar law for
    u >= 0, a small foveal value that decays lateral of the confluence."""
    up = np.maximum(u, 0.0)
    return _ECC_A * (np.exp(up / _ECC_K) - 1.0) + 0.15 * np.exp(np.minimum(u, 0.0) / 8.0)


def early_polar_angle(t: np.ndarray) -> np.ndarray:
    """Polar angle (deg; +90 upper vertical meridian, 0 horizontal, -90 lower) along the
    dorsal/ventral band sequence, continuous with a reversal at every area border."""
    t = np.asarray(t, dtype=np.float64)
    s = np.abs(t)
    # Dorsal sequence (lower field): V1 0->-90, V2 -90->0, V3 0->-90, V3AB -90->+90,
    # IPS +90->-90. The ventral side is its mirror (upper field) with hV4 / VO / VTC.
    xp = np.array([0.0, 2.0, 3.5, 4.7, 6.5, 8.5, 100.0])
    dorsal = np.interp(s, xp, [0.0, -90.0, 0.0, -90.0, 90.0, -90.0, -90.0])
    xv = np.array([0.0, 2.0, 3.5, 4.7, 6.5, 8.0, 11.0, 100.0])
    ventral = np.interp(s, xv, [0.0, 90.0, 0.0, 90.0, -90.0, 90.0, 0.0, 0.0])
    return np.where(t >= 0, dorsal, ventral)


def _soft_interval(x: np.ndarray, lo: float, hi: float, width: float) -> np.ndarray:
    out = np.ones_like(x)
    if np.isfinite(lo):
        out = out / (1.0 + np.exp(-(x - lo) / width))
    if np.isfinite(hi):
        out = out / (1.0 + np.exp(-(hi - x) / width))
    return out


def area_memberships(
    u: np.ndarray, t: np.ndarray, soft_t: float = _SOFT_T, soft_u: float = _SOFT_U
) -> np.ndarray:
    """Soft membership of each point in each area, (..., len(AREAS)), rows sum to 1.

    Soft borders (widths ``soft_t`` in t units, ``soft_u`` in mm) make every per-area
    parameter vary smoothly across the cortex, as population receptive fields do in
    real data."""
    out = np.empty(np.shape(u) + (len(AREAS),))
    for i, name in enumerate(AREAS):
        t_range, u_range = _AREA_PARAMS[name][:2]
        mu = _soft_interval(u, *u_range, soft_u)
        if name == "V2":
            mt = sum(_soft_interval(t, lo, hi, soft_t) for lo, hi in _BANDS_V2)
        elif name == "V3":
            mt = sum(_soft_interval(t, lo, hi, soft_t) for lo, hi in _BANDS_V3)
        else:
            mt = _soft_interval(t, *t_range, soft_t)
        out[..., i] = mu * mt
    return out / np.maximum(out.sum(-1, keepdims=True), 1e-12)


@dataclass
class Atlas:
    """Retinotopic and functional properties of a set of cortical points, all (P,)
    unless noted. Visual-field coordinates are in degrees, x to the right, y up, with
    the stimulus spanning [-4.2, 4.2] in both."""

    hemi: np.ndarray
    u: np.ndarray
    t: np.ndarray
    area: np.ndarray  # int8 index into AREAS (the dominant membership)
    ecc: np.ndarray
    angle: np.ndarray  # polar angle in the contralateral hemifield, deg
    rf_x: np.ndarray
    rf_y: np.ndarray
    rf_sigma: np.ndarray
    exponent: np.ndarray
    level: np.ndarray  # "higher-levelness" h in [0, 1]: share of category-driven signal
    channel_mix: np.ndarray  # (P, 3): weights of the fine / coarse / colour channels
    regions: np.ndarray  # (P, len(DOMAINS)): category-region profiles


def atlas_at(x: np.ndarray, y: np.ndarray) -> Atlas:
    """Evaluate the atlas at points (x, y) in mm, any matching shapes flattened to (P,)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    hemi, u, t = hemisphere_frame(x, y)
    m = area_memberships(u, t)
    params = [_AREA_PARAMS[name] for name in AREAS]
    sig0 = m @ np.array([p[2] for p in params])
    sig1 = m @ np.array([p[3] for p in params])
    ecc_gain = m @ np.array([p[4] for p in params])
    exponent = m @ np.array([p[5] for p in params])
    level = m @ np.array([p[6] for p in params])
    mix = m @ np.array([p[7] for p in params])

    e_base = eccentricity(u)
    # Early bands use the reversing angle sequence; LO / TO have a coarse, monotonic map.
    theta_early = np.radians(early_polar_angle(t))
    theta_lat = np.radians(-90.0 * np.tanh((t + 3.0) / 4.0))
    w_lat = m[:, AREA_INDEX["LO"]] + m[:, AREA_INDEX["TO"]]
    ecc = e_base * ecc_gain
    vx = (1 - w_lat) * np.cos(theta_early) + w_lat * np.cos(theta_lat)
    vy = (1 - w_lat) * np.sin(theta_early) + w_lat * np.sin(theta_lat)
    rf_x = ecc * vx * np.where(hemi == 1, -1.0, 1.0)  # left hemisphere sees the right field
    rf_y = ecc * vy
    angle = np.degrees(np.arctan2(vy, vx))
    rf_sigma = sig0 + sig1 * e_base
    return Atlas(
        hemi=hemi,
        u=u,
        t=t,
        area=m.argmax(-1).astype(np.int8),
        ecc=ecc,
        angle=angle,
        rf_x=rf_x,
        rf_y=rf_y,
        rf_sigma=rf_sigma,
        exponent=exponent,
        level=level,
        channel_mix=mix,
        regions=region_profiles(u, t),
    )


def region_profiles(u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(P, len(DOMAINS)) category-region weights (peak ~1) at frame points (u, t)."""
    out = np.zeros(np.shape(u) + (len(DOMAINS),))
    for j, name in enumerate(DOMAINS):
        for u0, t0, su, st, amp in _REGIONS[name]:
            out[..., j] += amp * np.exp(-0.5 * (((u - u0) / su) ** 2 + ((t - t0) / st) ** 2))
    return out


def smooth_field(rng: np.random.Generator, sigma_mm: float, shape=schema.MAP_SHAPE) -> np.ndarray:
    """A Gaussian random field of unit variance and smoothness ``sigma_mm`` on the canvas.

    Broad fields are drawn on a coarser lattice (3 lattice cells per sigma) and
    interpolated, which is much cheaper and indistinguishable at that smoothness."""
    step = max(1, int(sigma_mm // 3))
    sigma = sigma_mm / step
    pad = int(3 * sigma) + 2
    small = (-(-shape[0] // step) + 2 * pad, -(-shape[1] // step) + 2 * pad)
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma, mode="wrap")
    if step > 1:
        field = ndimage.zoom(field, step, order=1, grid_mode=True, mode="grid-constant")
    off = pad * step
    field = field[off : off + shape[0], off : off + shape[1]]
    return field / field.std()


@functools.lru_cache(maxsize=1)
def _default_mask() -> np.ndarray:
    x, y = canvas_mm()
    hemi, u, t = hemisphere_frame(x, y)
    w = local_width(u)
    # Signed distance (mm, approximately) into the envelope of the modelled areas; the
    # lateral part (LO / TO) is narrower than the early-visual fan.
    lateral = u < _U_LATERAL
    t_top = np.where(lateral, 5.0, 8.2)
    t_bottom = np.where(lateral, -8.5, -10.8)
    d_u = np.minimum(u + 24.0, 58.0 - u)
    d_t = np.minimum(t - t_bottom, t_top - t) * w
    score = np.minimum(d_u, d_t)
    # Irregular borders, independent in the two hemispheres, as in real ROIs.
    rng = np.random.default_rng(20_220_101)
    score = score + 4.0 * smooth_field(rng, 6.0) + 2.0 * smooth_field(rng, 2.5)
    score[np.abs(x) < 3.0] = -np.inf  # the medial wall: the hemispheres never touch
    mask = np.zeros(schema.MAP_SHAPE, dtype=bool)
    for h in (0, 1):
        sel = hemi == h
        k = MASK_PIXELS // 2
        threshold = np.sort(score[sel])[-k]
        mask |= sel & (score >= threshold)
    # Keep the main pieces only: specks left by the random border are not cortex.
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 150))
    keep = ndimage.binary_fill_holes(keep)
    keep.setflags(write=False)
    return keep


def default_mask() -> np.ndarray:
    """The embedded dataset's procedural visual-cortex mask: bool (215, 200).

    Two mirrored hemispheres covering V1-V3, hV4, VO, ventral temporal cortex, V3A/B,
    IPS, LO and TO, about 18,600 pixels (the real ``nsdgeneral`` mask has 18,577) with
    irregular borders, touching about 250 10x10 patches. Deterministic (no seed, no
    files) and cached, so it is cheap to call; a fresh writable copy is returned.
    """
    return _default_mask().copy()

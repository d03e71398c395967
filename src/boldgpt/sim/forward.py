"""The ground-truth forward model: from stimulus features to a subject's noiseless map.

For mask pixel ``p`` of subject ``s`` and stimulus ``i``::

    early[p, i] = (sum_a m[p, a] * RF_p . (sum_c mix[a, c] * F_c[i])) ** n[p]
    categ[p, i] = regions[p] . drives_domains[i] + patterns[p] . drives_categories[i]
    signal[p, i] = k * gain[p] * ((1 - h[p]) * early[p, i] / sE + h[p] * categ[p, i] / sC)

* ``F_c[i]`` are the stimulus' contrast features (``features.py``), ``RF_p`` the pixel's
  Gaussian population receptive field integrated over the 32 x 32 grid cells (centre
  and size from the atlas, ``geometry.py``), ``m[p, a]`` its soft membership in visual
  area ``a`` and ``mix[a]`` that area's channel preferences (colour in hV4 / VO, coarse
  scale in dorsal areas), ``n[p]`` the compressive exponent of the CSS model.
* ``h[p]`` is how "high-level" the pixel is (0 in V1, ~0.7 in ventral temporal cortex):
  the share of its signal driven by categories rather than contrast.
* ``regions`` are the category-selective regions, ``patterns`` finer category-specific
  patterns in high-level cortex (a canonical pattern shared by all subjects plus an
  idiosyncratic one).
* Subjects differ by a smooth warp of where the atlas is read (a few mm), a smooth
  multiplicative gain field, region amplitudes and the idiosyncratic patterns.
* ``sE``, ``sC`` and ``k`` are scalars fixed on a calibration set of stimuli (the same
  for every dataset with this seed): ``k`` makes the mean over mask pixels of the
  signal variance equal ``snr`` (noise has unit variance per pixel, see ``noise.py``).

Every map is a function of stored arrays only (``SubjectModel.save`` / ``load``), so
the ground truth can be recomputed exactly without re-running the generator.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.special import ndtr

from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.sim import categories as cats
from boldgpt.sim import geometry as geo
from boldgpt.sim.features import GRID, NUM_DRIVES
from boldgpt.utils.io import atomic_write

_BRAIN = 0xB4A1  # random stream id of subjects' brains
_MEMBERSHIP_MIN = 0.02  # memberships below this are dropped (saves matmuls)
PATTERN_WEIGHT = 0.5
"""Amplitude of category-specific patterns relative to the category regions."""
EARLY_NORM_POWER = 0.5
"""Exponent of the per-pixel normalization of contrast responses (0 none, 1 full)."""
WARP_MM = 3.0
"""RMS of the smooth per-subject warp of the atlas, per axis (mm)."""
GAIN_SD = 0.25
"""Standard deviation of the log of the smooth per-subject gain field."""


@dataclass
class SubjectModel:
    """Everything that defines one subject's noiseless maps, over the P mask pixels.

    Arrays are (P,) unless noted; ``pixels`` are flat indices into the 215 x 200
    canvas. ``mean`` and ``std`` convert the signal to the z units of the data:
    ``z = (signal - mean) / std`` with ``std**2 = signal variance + 1`` (unit noise),
    both measured on the calibration stimuli.
    """

    subject_id: int
    pixels: np.ndarray
    area: np.ndarray
    ecc: np.ndarray
    angle: np.ndarray
    rf_x: np.ndarray
    rf_y: np.ndarray
    rf_sigma: np.ndarray
    exponent: np.ndarray
    level: np.ndarray
    membership: np.ndarray  # (P, len(AREAS))
    loadings: np.ndarray  # (P, NUM_DRIVES): regions, then category patterns
    gain: np.ndarray
    early_norm: np.ndarray | None = None  # (P,) partial normalization of early responses
    early_scale: float = 1.0
    category_scale: float = 1.0
    signal_scale: float = 1.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    snr: np.ndarray | None = None  # per-pixel signal variance / noise variance

    @property
    def num_pixels(self) -> int:
        return len(self.pixels)

    # -- the model ------------------------------------------------------------------

    @torch.no_grad()
    def raw_response(
        self, features: np.ndarray, drives: np.ndarray, chunk: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled early and category responses, each (n, P) float32.

        Args:
            features: (n, 3, 32, 32) contrast features.
            drives: (n, NUM_DRIVES) category drives.
        """
        features = np.asarray(features, dtype=np.float32)
        n = len(features)
        feats = torch.from_numpy(features.reshape(n, 3, GRID * GRID))
        mix = torch.from_numpy(geo.AREA_CHANNEL_MIX)
        # Area-mixed features (A, GRID*GRID, n): one matmul per area instead of one per
        # channel, since each pixel belongs (softly) to one or two areas.
        mixed = torch.einsum("ac,ncg->agn", mix, feats).contiguous()
        order, inverse, groups, weights, memb = self._plan()
        pooled = torch.empty(self.num_pixels, n)
        # Pixels sorted by the set of areas they belong to: each group needs the
        # features of its areas only, and writes a contiguous block of rows.
        for g0, g1, areas in groups:
            for c0 in range(g0, g1, chunk):
                c1 = min(c0 + chunk, g1)
                w = weights[c0:c1]
                acc = (w @ mixed[areas[0]]) * memb[c0:c1, areas[0], None]
                for a in areas[1:]:
                    acc += (w @ mixed[a]) * memb[c0:c1, a, None]
                pooled[c0:c1] = acc
        pooled = pooled[inverse].T
        early = pooled.clamp_min(0).pow(torch.from_numpy(self.exponent.astype(np.float32)))
        categ = (
            torch.from_numpy(np.asarray(drives, np.float32))
            @ torch.from_numpy(self.loadings.astype(np.float32)).T
        )
        return early.numpy(), categ.numpy()

    @torch.no_grad()
    def pooled_contrast(self, features: np.ndarray) -> torch.Tensor:
        """(n, P, 3): each contrast channel of (n, 3, 32, 32) ``features`` pooled by each
        pixel's receptive field (before the area's channel mix and the exponent)."""
        n = len(features)
        feats = torch.from_numpy(np.asarray(features, np.float32).reshape(n, 3, GRID * GRID))
        _, inverse, _, weights, _ = self._plan()
        return torch.einsum("pg,ncg->npc", weights, feats)[:, inverse]

    def signal(self, features: np.ndarray, drives: np.ndarray) -> np.ndarray:
        """Noiseless response in signal units (noise has unit variance), (n, P) float32."""
        return self._combine(*self.raw_response(features, drives))

    def _combine(self, early: np.ndarray, categ: np.ndarray) -> np.ndarray:
        h = self.level.astype(np.float32)
        norm = self.early_norm if self.early_norm is not None else np.float32(1.0)
        out = (1 - h) * early / (norm * np.float32(self.early_scale))
        out += h * categ / np.float32(self.category_scale)
        out *= (self.gain * self.signal_scale).astype(np.float32)
        return out

    def truth_z(self, features: np.ndarray, drives: np.ndarray) -> np.ndarray:
        """Noiseless maps in the z units of the data, (n, P) float32."""
        if self.mean is None or self.std is None:
            raise ValueError("the model is not calibrated: call calibrate() first")
        return (self.signal(features, drives) - self.mean) / self.std

    def _plan(self) -> tuple:
        """Pixels grouped by their set of areas (cached, not stored): the order, its
        inverse, groups ``(start, end, areas)``, receptive fields and memberships in
        that order."""
        cached = getattr(self, "_plan_cache", None)
        if cached is None:
            support = self.membership > 0
            code = support.astype(np.int64) @ (1 << np.arange(support.shape[1]))
            order = np.argsort(code, kind="stable")
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(code[order])) + 1, [len(order)]])
            groups = [
                (int(g0), int(g1), np.flatnonzero(support[order[g0]]).tolist())
                for g0, g1 in zip(bounds[:-1], bounds[1:])
            ]
            weights = torch.from_numpy(self.rf_weights(order))
            memb = torch.from_numpy(self.membership[order].astype(np.float32))
            inverse = torch.from_numpy(np.argsort(order))
            cached = (order, inverse, groups, weights, memb)
            self._plan_cache = cached
        return cached

    def rf_weights(self, sl: slice | np.ndarray = slice(None)) -> np.ndarray:
        """(p, GRID*GRID) float32 weights of the pixels' receptive fields on the grid:
        the Gaussian integrated over each cell; weight outside the picture is lost."""
        half = geo.STIMULUS_DEG / 2
        cell = geo.STIMULUS_DEG / GRID
        edges = -half + cell * np.arange(GRID + 1)
        x, y, s = self.rf_x[sl, None], self.rf_y[sl, None], self.rf_sigma[sl, None]
        wx = np.diff(ndtr((edges[None] - x) / s), axis=1).astype(np.float32)
        # Grid rows run from the top of the picture (y = +half) down.
        wy = -np.diff(ndtr((edges[None][:, ::-1] - y) / s), axis=1).astype(np.float32)
        w = torch.from_numpy(wy)[:, :, None] * torch.from_numpy(wx)[:, None, :]
        return w.reshape(len(x), -1).numpy()

    def calibrate(self, features: np.ndarray, drives: np.ndarray, snr: float) -> None:
        """Fix the scales so that the mean signal variance over pixels is ``snr`` on
        these (calibration) stimuli, and store the z-unit mean / std and SNR map."""
        if not np.isfinite(snr) or snr <= 0:
            raise ValueError(f"snr must be a positive number; got {snr}")
        early, categ = self.raw_response(features, drives)
        # Partial divisive normalization of each pixel's contrast response: without it
        # small foveal V1 receptive fields would carry most of the signal and large
        # receptive fields almost none (the floor keeps pixels that see no stimulus at
        # a low SNR instead of amplifying their tiny responses).
        sd = early.std(0)
        self.early_norm = ((sd + 0.1 * np.median(sd)) ** EARLY_NORM_POWER).astype(np.float32)
        self.early_scale = float(np.sqrt(np.mean((early / self.early_norm).var(0))))
        self.category_scale = float(np.sqrt(np.mean(categ.var(0)[self.level > 0.2])))
        self.signal_scale = 1.0
        sig = self._combine(early, categ)
        self.signal_scale = float(np.sqrt(snr / np.mean(sig.var(0))))
        sig *= self.signal_scale
        var = sig.var(0)
        self.mean = sig.mean(0).astype(np.float32)
        self.std = np.sqrt(var + 1.0).astype(np.float32)
        self.snr = var.astype(np.float32)

    # -- storage ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write all arrays and scalars to one ``.npz`` file, atomically."""
        data = {k: np.asarray(v) for k, v in asdict(self).items() if v is not None}
        with atomic_write(path) as f:
            np.savez_compressed(f, **data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SubjectModel:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read subject ground truth {path}: {exc}") from exc
        kwargs = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is not None or f.name in ("mean", "std", "snr", "early_norm"):
                    continue
                raise DataError(f"{path} lacks the array {f.name!r} of a subject model")
            v = data[f.name]
            kwargs[f.name] = v.item() if v.ndim == 0 else v
        kwargs["subject_id"] = int(kwargs["subject_id"])
        return cls(**kwargs)

    def to_canvas(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put (n, P) values on (n, 215, 200) canvases, ``fill`` outside the mask."""
        values = np.asarray(values)
        out = np.full((len(values), schema.HEIGHT * schema.WIDTH), fill, dtype=values.dtype)
        out[:, self.pixels] = values
        return out.reshape(len(values), schema.HEIGHT, schema.WIDTH)


def build_subject(seed: int, subject_id: int, mask: np.ndarray) -> SubjectModel:
    """Draw subject ``subject_id``'s brain for dataset seed ``seed`` over ``mask``.

    The canonical parts (atlas, region layout, canonical category patterns) depend on
    the seed only; the warp, gains and idiosyncratic patterns also on the subject."""
    rng = np.random.default_rng([seed, _BRAIN, subject_id])
    x, y = geo.canvas_mm()
    pixels = np.flatnonzero(mask.ravel())
    # A smooth warp plus a small global shift: where this subject's areas lie.
    dx = WARP_MM * geo.smooth_field(rng, 20.0).ravel()[pixels] + rng.normal(0, 1.5)
    dy = WARP_MM * geo.smooth_field(rng, 20.0).ravel()[pixels] + rng.normal(0, 1.5)
    wx, wy = x.ravel()[pixels] + dx, y.ravel()[pixels] + dy
    atlas = geo.atlas_at(wx, wy)
    hemi, u, t = geo.hemisphere_frame(wx, wy)
    # Channel preferences change over ~0.5 mm at area borders (sharper than the other
    # parameters), so that most pixels need the features of one area only.
    membership = geo.area_memberships(u, t, soft_t=0.08, soft_u=0.7)
    membership[membership < _MEMBERSHIP_MIN] = 0.0
    membership /= membership.sum(1, keepdims=True)

    regions = atlas.regions * np.exp(rng.normal(0, 0.2, len(geo.DOMAINS)))
    patterns = _category_patterns(seed, rng, wx, wy, pixels) * atlas.level[:, None]
    loadings = np.concatenate([regions, PATTERN_WEIGHT * patterns], axis=1)
    assert loadings.shape[1] == NUM_DRIVES
    gain = np.exp(GAIN_SD * geo.smooth_field(rng, 15.0).ravel()[pixels])
    f32 = np.float32
    return SubjectModel(
        subject_id=subject_id,
        pixels=pixels.astype(np.int64),
        area=atlas.area,
        ecc=atlas.ecc.astype(f32),
        angle=atlas.angle.astype(f32),
        rf_x=atlas.rf_x.astype(f32),
        rf_y=atlas.rf_y.astype(f32),
        rf_sigma=atlas.rf_sigma.astype(f32),
        exponent=atlas.exponent.astype(f32),
        level=atlas.level.astype(f32),
        membership=membership.astype(f32),
        loadings=loadings.astype(f32),
        gain=gain.astype(f32),
    )


def _category_patterns(seed, rng, wx, wy, pixels) -> np.ndarray:
    """(P, Ncat) category-specific patterns: canonical (same for all subjects, read at
    the warped positions) plus half as much idiosyncratic pattern."""
    canon_rng = np.random.default_rng([seed, _BRAIN, 1_000_003])
    # Canvas coordinates (row, col) of the warped points, for bilinear reads.
    rows, cols = geo.mm_to_pixel(wx, wy)
    out = np.empty((len(pixels), len(cats.CATEGORIES)))
    for k in range(len(cats.CATEGORIES)):
        canon = geo.smooth_field(canon_rng, 5.0)
        canon_at = ndimage.map_coordinates(canon, [rows, cols], order=1, mode="nearest")
        idio = geo.smooth_field(rng, 5.0).ravel()[pixels]
        out[:, k] = canon_at + 0.5 * idio
    return out

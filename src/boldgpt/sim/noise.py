"""Trial noise, session effects, per-session z-scoring and uint8 quantization.

Noise has unit variance at every mask pixel (so the SNR of a pixel is simply its signal
variance) and three spatial scales, like fMRI noise on a flat map:

* ``smooth`` (55% of the variance): Gaussian-smoothed white noise, sigma 2 mm
  (the point-spread of BOLD and of the surface resampling);
* ``broad`` (25%): a fixed set of 32 large-scale spatial modes (sigma 12 mm, plus a
  global mode) with random weights every trial: physiological and global signals;
* ``white`` (20%): independent per pixel (thermal noise).

Each session also gets a smooth offset map and a gain (scanner drift between days),
which the per-session z-scoring removes, as it does in NSD.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from boldgpt.data import schema
from boldgpt.sim import geometry as geo

_NOISE = 0x0153  # random stream id of noise
NOISE_SHARES = {"smooth": 0.55, "broad": 0.25, "white": 0.20}
"""Share of the (unit) noise variance of each component."""
SMOOTH_SIGMA_MM = 2.0
BROAD_SIGMA_MM = 12.0
NUM_MODES = 32
SESSION_OFFSET_SD = 2.0
SESSION_GAIN_SD = 0.05
_SUB_BATCH = 64
MIN_BLOCK_TRIALS = 100
"""Sessions with fewer trials are z-scored together with their neighbours (a
subsampled schedule can have sessions of a few trials, whose own mean and standard
deviation would be meaningless)."""

_HALF_SIGMA = SMOOTH_SIGMA_MM / 2  # the smooth field is drawn at half resolution
_R = int(np.ceil(3 * _HALF_SIGMA))
_K = np.exp(-0.5 * (np.arange(-_R, _R + 1) / _HALF_SIGMA) ** 2)
_K /= _K.sum()
# Variance of the smoothed lattice field, and of a bilinear 2x upsampling of it (every
# output pixel sits a quarter cell from its lattice neighbours: weights 3/4 and 1/4).
_RHO1 = float(np.sum(_K[:-1] * _K[1:]) / np.sum(_K**2))
_SMOOTH_STD = float(np.sum(_K**2) * (0.625 + 0.375 * _RHO1))


def _band(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of the 1-D smoothing kernel: row i holds _K at i..i+2R."""
    out = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        out[i, i : i + len(_K)] = _K
    return out


class NoiseModel:
    """Noise generator of one subject over the P mask pixels of ``mask``."""

    def __init__(self, seed: int, subject_id: int, mask: np.ndarray):
        self.seed = seed
        self.subject_id = subject_id
        self.pixels = np.flatnonzero(np.asarray(mask, bool).ravel())
        rng = np.random.default_rng([seed, _NOISE, subject_id])
        modes = [np.ones(schema.HEIGHT * schema.WIDTH)]
        for _ in range(NUM_MODES - 1):
            modes.append(geo.smooth_field(rng, BROAD_SIGMA_MM).ravel())
        modes = np.stack(modes, axis=1)[self.pixels]  # (P, M)
        # Normalized per pixel, so that random unit weights give unit variance.
        modes /= np.sqrt((modes**2).sum(1, keepdims=True))
        self.modes = torch.from_numpy(modes.astype(np.float32))
        # The separable smoothing as two small matrices (valid convolution): batched
        # matmuls are much faster than single-channel conv2d on a CPU.
        h2, w2 = (schema.HEIGHT + 1) // 2, (schema.WIDTH + 1) // 2
        self._kh = torch.from_numpy(_band(h2, h2 + 2 * _R))  # (h2, h2 + 2R)
        self._kw = torch.from_numpy(_band(w2, w2 + 2 * _R)).T.contiguous()  # (w2 + 2R, w2)

    def _generator(self, *key: int) -> torch.Generator:
        seq = np.random.SeedSequence([self.seed, _NOISE, self.subject_id, *key])
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))

    @torch.no_grad()
    def sample(self, n: int, *key: int) -> np.ndarray:
        """(n, P) float32 noise with unit variance per pixel; ``key`` (e.g. the session)
        selects an independent, reproducible draw."""
        g = self._generator(*key)
        h2, w2 = (schema.HEIGHT + 1) // 2, (schema.WIDTH + 1) // 2
        a = {k: float(np.sqrt(v)) for k, v in NOISE_SHARES.items()}
        pixels = torch.from_numpy(self.pixels)
        out = torch.empty(n, len(self.pixels))
        # Sub-batches keep the temporaries small (fewer page faults, warmer caches).
        for start in range(0, n, _SUB_BATCH):
            b = min(_SUB_BATCH, n - start)
            lattice = torch.randn(b, h2 + 2 * _R, w2 + 2 * _R, generator=g)
            lattice = self._kh @ (lattice @ self._kw)  # (b, h2, w2)
            smooth = F.interpolate(
                lattice[:, None], scale_factor=2, mode="bilinear", align_corners=False
            )
            smooth = smooth[:, 0, : schema.HEIGHT, : schema.WIDTH].reshape(b, -1)[:, pixels]
            o = out[start : start + b]
            torch.mul(smooth, a["smooth"] / _SMOOTH_STD, out=o)
            weights = torch.randn(b, self.modes.shape[1], generator=g)
            o.addmm_(weights, self.modes.T, alpha=a["broad"])
            o.add_(torch.randn(b, len(self.pixels), generator=g), alpha=a["white"])
        return out.numpy()

    def session_effects(self, session: int) -> tuple[np.ndarray, float]:
        """A session's smooth offset map (P,) and its gain."""
        rng = np.random.default_rng([self.seed, _NOISE, self.subject_id, 7, session])
        offset = SESSION_OFFSET_SD * geo.smooth_field(rng, 10.0).ravel()[self.pixels]
        return offset.astype(np.float32), float(1.0 + rng.normal(0, SESSION_GAIN_SD))


def zscore(x: np.ndarray) -> np.ndarray:
    """Z-score (n, P) across trials (axis 0) per pixel; constant pixels become 0."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(0)
    std = x.std(0)
    return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1), 0).astype(np.float32)


def zscore_blocks(session_ids: np.ndarray) -> np.ndarray:
    """Block index of each trial for z-scoring: sessions in order, consecutive sessions
    merged until a block has at least MIN_BLOCK_TRIALS trials (the last block absorbs a
    short tail)."""
    session_ids = np.asarray(session_ids)
    sessions, counts = np.unique(session_ids, return_counts=True)
    block_of = {}
    block, size = 0, 0
    for s, c in zip(sessions, counts):
        block_of[s] = block
        size += c
        if size >= MIN_BLOCK_TRIALS:
            block, size = block + 1, 0
    if size and block > 0:  # a short tail joins the previous block
        for s in sessions[::-1]:
            if block_of[s] != block:
                break
            block_of[s] = block - 1
    return np.array([block_of[s] for s in session_ids], dtype=np.int64)


def encode_maps(z: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(n, P) z-values -> (n, 215, 200) uint8 NSD-Flat maps (127 outside the mask)."""
    out = np.full((len(z), schema.HEIGHT * schema.WIDTH), schema.quantize(np.zeros(1))[0])
    out[:, pixels] = schema.quantize(z)
    return out.reshape(len(z), schema.HEIGHT, schema.WIDTH)

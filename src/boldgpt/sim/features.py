"""What the simulated brain sees of a stimulus: contrast energy on a grid, and category drives.

These are the *true* stimulus features of the ground-truth model: every noiseless map
is a fixed function of them (see ``forward.py``), so they are stored with the dataset
and an encoding model built on them is the ceiling of what can be learned.

* ``contrast_features``: local contrast of the picture in three channels (fine and
  coarse luminance band-pass energy, and colour-opponent contrast), the classic input
  of population receptive-field models of early visual cortex (Kay et al. 2013),
  pooled on a 32 x 32 grid over the 8.4 degree stimulus.
* ``category_drives``: how strongly the picture drives each category-selective domain
  (faces, bodies, animals, food, places, vehicles, small objects) and each category,
  saturating in the visible size of the objects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from boldgpt.sim import categories as cats
from boldgpt.sim.geometry import DOMAINS
from boldgpt.sim.stimuli import Stimulus

GRID = 32
"""Cells per side of the feature grid over the stimulus (0.26 degrees each)."""
CHANNELS = ("fine", "coarse", "color")
FEATURE_SIZE = 128
"""Pictures are box-averaged to this side (0.066 degrees a pixel) before the front-end."""
NUM_DRIVES = len(DOMAINS) + len(cats.CATEGORIES)
"""Length of a drive vector: the domains, then one presence value per category."""

# Typical values of the raw channels on natural-ish pictures, so that each channel of
# the stored features is about 1 on average.
_CHANNEL_SCALE = torch.tensor([0.026, 0.046, 0.065])


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Local mean over k x k pixels of (B, C, H, W), reflected borders (same size).

    Summed-area differences: O(1) per pixel whatever ``k`` (``avg_pool2d`` with
    stride 1 is several times slower)."""
    r = k // 2
    x = F.pad(x, (r + 1, r, r + 1, r), mode="reflect")
    x[..., 0, :] = 0
    x[..., :, 0] = 0
    s = x.cumsum(-1).cumsum(-2)
    return (s[..., k:, k:] - s[..., :-k, k:] - s[..., k:, :-k] + s[..., :-k, :-k]) / (k * k)


def _front_end_input(images: np.ndarray) -> torch.Tensor:
    """(B, 3, 128, 128) float in [0, 1]: pictures box-averaged to FEATURE_SIZE px."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (B, S, S, 3); got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1:3] != (FEATURE_SIZE, FEATURE_SIZE):
        size = (FEATURE_SIZE, FEATURE_SIZE)
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize(size, Image.BOX)) for im in images]
        )
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def contrast_features(images: np.ndarray) -> np.ndarray:
    """Contrast energy of pictures on the feature grid.

    Args:
        images: (B, S, S, 3) uint8 RGB pictures (any S; box-resampled to 128 px, which
            is what :func:`reduce_image` does, so pass its output to skip that step).

    Returns:
        (B, 3, 32, 32) float32: local contrast (square root of the band energy pooled
        over each cell) of a fine luminance band (about 4 cycles/degree), a coarse one
        (about 1.5 cycles/degree) and red-green + blue-yellow colour contrast, rows from
        the top of the picture; each channel is about 1 on average over stimuli.
    """
    x = _front_end_input(images)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    # A two-level pyramid keeps the front-end cheap: each band is computed at the
    # coarsest resolution that holds it.
    fine = (lum - _box(lum, 3)) ** 2
    x64 = F.avg_pool2d(torch.cat([lum, r - g, b - 0.5 * (r + g)], dim=1), 2)
    coarse = (x64[:, :1] - _box(x64[:, :1], 5)) ** 2
    opp = x64[:, 1:]
    color = ((opp - _box(opp, 9)) ** 2).sum(1, keepdim=True)
    pooled = torch.cat(
        [
            F.avg_pool2d(fine, FEATURE_SIZE // GRID),
            F.avg_pool2d(coarse, FEATURE_SIZE // 2 // GRID),
            F.avg_pool2d(color, FEATURE_SIZE // 2 // GRID),
        ],
        dim=1,
    )
    out = pooled.sqrt() / _CHANNEL_SCALE.view(1, 3, 1, 1)
    return out.numpy().astype(np.float32)


def reduce_image(image: np.ndarray) -> np.ndarray:
    """The (128, 128, 3) uint8 box-averaged picture the contrast front-end works on."""
    if image.shape[:2] == (FEATURE_SIZE, FEATURE_SIZE):
        return image
    return np.asarray(Image.fromarray(image).resize((FEATURE_SIZE, FEATURE_SIZE), Image.BOX))


def category_drives(stimuli: list[Stimulus]) -> np.ndarray:
    """Drive of each category-selective domain and each category, (B, NUM_DRIVES).

    Each visible object contributes ``s = min(1, 2 sqrt(area / S^2))`` (an object
    covering a quarter of the picture counts fully), weighted by its category's domain
    weights; the scene adds its ``place`` drive to the places domain. Drives saturate:
    ``1 - exp(-total)`` for domains, ``1 - exp(-2 total)`` for category presence.
    """
    out = np.zeros((len(stimuli), NUM_DRIVES), dtype=np.float32)
    for b, stim in enumerate(stimuli):
        out[b] = drive_vector(stim.objects, stim.place, stim.image.shape[0])
    return out


_INDEX = {c.name: i for i, c in enumerate(cats.CATEGORIES)}
_DOMAIN_W = np.array([cats.domain_vector(c) for c in cats.CATEGORIES])  # (Ncat, D)


def drive_vector(objects: dict, place: float, size: int) -> np.ndarray:
    """The (NUM_DRIVES,) drive vector of one picture of side ``size`` from its
    annotations (``objects``) and scene ``place`` drive; see :func:`category_drives`."""
    presence = np.zeros(len(cats.CATEGORIES))
    for name, area in zip(objects["category"], objects["area"]):
        presence[_INDEX[name]] += min(1.0, 2.0 * np.sqrt(area / float(size * size)))
    domains = (presence[:, None] * _DOMAIN_W).sum(0)
    domains[DOMAINS.index("places")] += place
    return np.concatenate([1.0 - np.exp(-domains), 1.0 - np.exp(-2.0 * presence)]).astype(
        np.float32
    )

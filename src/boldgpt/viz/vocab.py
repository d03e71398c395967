"""The picture of a k-means patch vocabulary."""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np

from boldgpt.viz.maps import ACTIVITY_CMAP, ACTIVITY_VMAX, save_figure


def grid_layout(vectors: np.ndarray) -> np.ndarray:
    """Place V vectors on a near-square grid so that similar ones sit close together.

    Rows are bands of the first principal component, and each row is sorted by the
    second, a cheap stand-in for a 2-D embedding snapped to a grid. Returns the vector
    index of every grid cell, (rows, cols), -1 for empty cells.
    """
    v = len(vectors)
    cols = math.ceil(math.sqrt(v))
    rows = math.ceil(v / cols)
    centered = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    pcs = centered @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centered @ vt[:1].T, np.zeros(v)]
    by_pc1 = np.argsort(pcs[:, 0], kind="stable")
    grid = -np.ones((rows, cols), dtype=np.int64)
    for r in range(rows):
        band = by_pc1[r * cols : (r + 1) * cols]
        grid[r, : len(band)] = band[np.argsort(pcs[band, 1], kind="stable")]
    return grid


def plot_vocab(
    vocab: np.ndarray, patch_size: int, path: str | os.PathLike, title: str = ""
) -> None:
    """Draw every vocabulary entry (V, p*p) as a p x p tile on a 2-D grid, similar
    entries near each other, in the activity colour scale; write it to ``path``."""
    vocab = np.asarray(vocab, dtype=np.float32)
    grid = grid_layout(vocab)
    rows, cols = grid.shape
    p = patch_size
    gap = 1
    canvas = np.full((rows * (p + gap) - gap, cols * (p + gap) - gap), np.nan, dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            if grid[r, c] >= 0:
                tile = vocab[grid[r, c]].reshape(p, p)
                canvas[r * (p + gap) : r * (p + gap) + p, c * (p + gap) : c * (p + gap) + p] = tile
    size = min(12.0, max(4.0, cols * 0.35))
    fig, ax = plt.subplots(figsize=(size, size * rows / cols + 0.4))
    cmap = plt.get_cmap(ACTIVITY_CMAP).with_extremes(bad="white")
    im = ax.imshow(
        canvas, cmap=cmap, vmin=-ACTIVITY_VMAX, vmax=ACTIVITY_VMAX, interpolation="nearest"
    )
    ax.set_axis_off()
    ax.set_title(
        title or f"{len(vocab)} patch tokens ({p}x{p}), similar tokens nearby", fontsize=10
    )
    fig.colorbar(im, ax=ax, fraction=0.03, label="activity (z)")
    save_figure(fig, path)

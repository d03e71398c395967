"""Figures of the data: example flat maps beside the stimuli that evoked them."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from boldgpt.viz.maps import map_grid, save_figure, show_image, show_map


def plot_examples(
    maps: np.ndarray,
    path: str | os.PathLike,
    *,
    images: Sequence[np.ndarray | None] | None = None,
    mask: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    per_row: int = 3,
    suptitle: str = "",
) -> None:
    """Draw example maps, each beside its stimulus, and write the figure to ``path``.

    Args:
        maps: (K, 215, 200) z-values (float) of K trials.
        images: K RGB stimuli (H, W, 3) uint8, or None where a trial has none (or None
            for no stimulus column at all).
        mask: bool (215, 200); pixels outside are drawn grey.
        titles: K labels (e.g. ``"subj01 nsd 2950"``).
        per_row: examples per row of the figure.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, H, W); got shape {maps.shape}")
    k = len(maps)
    if k == 0:
        raise ValueError("no maps to draw")
    if images is not None and len(images) != k:
        raise ValueError(f"{len(images)} images for {k} maps")
    if titles is not None and len(titles) != k:
        raise ValueError(f"{len(titles)} titles for {k} maps")
    per_row = max(1, min(per_row, k))
    rows = math.ceil(k / per_row)
    panels = 2 if images is not None else 1
    fig, axes = map_grid(rows, per_row * panels, size=2.0)
    im = None
    for i in range(rows * per_row):
        r, c = divmod(i, per_row)
        cell = axes[r, c * panels : (c + 1) * panels]
        if i >= k:
            for ax in cell:
                ax.set_axis_off()
            continue
        title = titles[i] if titles is not None else None
        if images is not None:
            if images[i] is not None:
                show_image(cell[0], images[i], title="stimulus")
            else:
                cell[0].set_axis_off()
        im = show_map(cell[-1], maps[i], mask, title=title)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="activity (z)")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    save_figure(fig, path)

"""Figures of ``boldgpt eval``: encoding accuracy on the flat map, a retrieval grid and
reconstructions beside their stimuli."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from boldgpt.viz.maps import map_grid, save_figure, show_image, show_map


def encoding_accuracy_figure(
    pixel_values: Mapping[str, np.ndarray], mask: np.ndarray, title: str | None = None
) -> Figure:
    """One flat map per entry of ``pixel_values`` (name -> (P_in,) values of the in-mask
    pixels, e.g. Pearson r per pixel): r in [-1, 1] on a diverging scale; an entry whose
    name mentions ``%`` (a noise ceiling in percent) on 0..100."""
    names = list(pixel_values)
    fig, axes = map_grid(1, len(names), size=2.6)
    mask = np.asarray(mask, bool)
    for ax, name in zip(axes[0], names):
        values = np.full(mask.shape, np.nan, np.float32)
        values[mask] = pixel_values[name]
        percent = "%" in name
        im = show_map(
            ax,
            values,
            mask,
            cmap="viridis" if percent else "RdBu_r",
            vmin=0 if percent else -1,
            vmax=100 if percent else 1,
            title=name,
            label=f"median {np.nanmedian(values[mask]):.3g}",
        )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or "Encoding accuracy: Pearson r per pixel across held-out stimuli")
    return fig


def retrieval_grid_figure(
    sim: np.ndarray, images: np.ndarray, num_queries: int = 6, top: int = 5
) -> Figure:
    """Map -> image retrieval: for the first ``num_queries`` stimuli, the true stimulus
    (left) and the ``top`` images whose embeddings are most similar to the map's
    (green frame: the true one). ``sim`` (S, S) map x image similarities, ``images`` (S,
    H, W, 3) in the same order."""
    n = min(num_queries, len(sim))
    k = min(top, sim.shape[1])
    fig, axes = plt.subplots(n, k + 1, figsize=(1.4 * (k + 1), 1.5 * n), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], images[i], "stimulus" if i == 0 else None)
        ranked = np.argsort(-sim[i], kind="stable")[:k]
        for j, c in enumerate(ranked):
            ax = axes[i, j + 1]
            show_image(ax, images[c], f"#{j + 1}" if i == 0 else None)
            if c == i:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green")
                    spine.set_linewidth(3)
    fig.suptitle(f"Retrieval from maps among {sim.shape[1]} stimuli (green: the true one)")
    fig.tight_layout()
    return fig


def reconstructions_figure(true: np.ndarray, recon: np.ndarray, num: int = 8) -> Figure:
    """Stimuli (top) and their reconstructions from maps (bottom); (n, H, W, 3) in [0, 1]."""
    n = min(num, len(true))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], np.clip(true[i], 0, 1), "stimulus" if i == 0 else None)
        show_image(axes[1, i], np.clip(recon[i], 0, 1), "reconstruction" if i == 0 else None)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a figure atomically (format from the suffix), creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return Path(path)

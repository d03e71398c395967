"""Drawing flat maps: one colour convention for every figure in boldgpt."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from boldgpt.utils.io import atomic_write  # noqa: E402

ACTIVITY_CMAP = "RdBu_r"
"""Diverging map for z-scored activity: red positive, blue negative, white zero."""
ACTIVITY_VMAX = 2.5
BACKGROUND = "#d9d9d9"


def show_map(
    ax: Axes,
    values: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    cmap: str = ACTIVITY_CMAP,
    vmin: float | None = None,
    vmax: float | None = ACTIVITY_VMAX,
    title: str | None = None,
    label: str | None = None,
):
    """Draw one (H, W) flat map on ``ax``; pixels outside ``mask`` are grey.

    ``vmin`` defaults to ``-vmax`` (symmetric, for z-values). ``label`` is written in
    the lower-left corner (e.g. an R^2). Returns the image artist (for colorbars).
    """
    values = np.asarray(values, dtype=np.float32)
    if mask is not None:
        values = np.where(mask, values, np.nan)
    if vmin is None and vmax is not None:
        vmin = -vmax
    cm = matplotlib.colormaps[cmap].with_extremes(bad=BACKGROUND)
    im = ax.imshow(values, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    if label:
        ax.text(
            0.02,
            0.02,
            label,
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
            ha="left",
            bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1},
        )
    return im


def show_image(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    """Draw an RGB stimulus, (H, W, 3) uint8 or float in [0, 1], or (3, H, W)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def map_grid(
    rows: int, cols: int, size: float = 2.0, titles: Sequence[str] | None = None
) -> tuple[Figure, np.ndarray]:
    """A figure with a (rows, cols) array of axes sized for 215x200 maps."""
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * size, rows * size * 215 / 200 + 0.3), squeeze=False
    )
    if titles:
        for ax, title in zip(axes[0], titles):
            ax.set_title(title, fontsize=9)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save ``fig`` to ``path`` (format from the suffix) atomically and close it."""
    fmt = os.fspath(path).rsplit(".", 1)[-1]
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)

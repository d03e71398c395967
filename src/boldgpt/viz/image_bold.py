"""Example figures of the image↔BOLD families during training (one row per example):

- image2bold: the stimulus, the measured map, the map predicted from the picture in one
  pass (:func:`boldgpt.generate.complete`, ``method="query"``, nothing observed),
  labelled with its per-pixel correlation r with the measured map;
- bold2image: the map, the true picture, the one-pass reconstruction from the map,
  labelled with its pixel correlation r with the true picture (both as drawn: RGB in
  [0, 1]);
- CBIP: the map, the true picture, and the pictures of the example batch whose image
  embeddings are closest to the map's BOLD embedding (cosine similarity; one per
  stimulus; the true one is marked).

The ``*_examples_figure(model, batch)`` functions take a prepared batch (images
normalised as the model expects) and return a matplotlib ``Figure``; the training
engine reaches them through :func:`boldgpt.viz.train.example_figure_drawer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from boldgpt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boldgpt.viz.maps import map_grid, show_image, show_map


@dataclass
class Panel:
    """One cell of an example table: a flat map (H, W) or a picture (S, S, 3) in [0, 1]."""

    kind: str  # "map" or "image"
    values: np.ndarray
    label: str | None = None


def display_images(
    images: torch.Tensor, normalization: tuple[Sequence[float], Sequence[float]] | None = None
) -> np.ndarray:
    """Normalised images (B, 3, S, S) -> (B, S, S, 3) in [0, 1] for drawing, undoing
    ``normalization`` = (mean, std) per channel (default ImageNet's)."""
    mean, std = normalization or (IMAGENET_MEAN, IMAGENET_STD)
    x = images.detach().float().cpu()
    x = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the places where both arrays (same shape) are finite;
    NaN when fewer than two or one of them is constant there."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def panels_figure(
    rows: Sequence[Sequence[Panel]],
    titles: Sequence[str],
    mask: np.ndarray,
    title: str | None = None,
    size: float = 1.8,
) -> Figure:
    """A table of map and picture panels: one row per example, ``titles`` over the
    columns; a missing cell (a short row) is left blank."""
    cols = max([len(titles), *map(len, rows)])
    fig, axes = map_grid(len(rows), cols, size=size, titles=titles)
    for i, row in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(row):
                ax.axis("off")
                continue
            panel = row[j]
            if panel.kind == "map":
                show_map(ax, panel.values, mask, label=panel.label)
            else:
                show_image(ax, panel.values)
                if panel.label:
                    ax.set_xlabel(panel.label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _normalization(model: Any) -> tuple[Sequence[float], Sequence[float]] | None:
    return getattr(model, "image_normalization", None)


@torch.no_grad()
def image2bold_examples_figure(model: Any, batch: Mapping[str, torch.Tensor]) -> Figure:
    """Stimulus / measured map / map predicted from the picture and subject alone
    (one pass, every slot queried), for an :class:`~boldgpt.models.image2bold.Image2BOLD`
    model and a prepared batch (``activity`` (B, H, W), ``subject_id`` (B,),
    ``image`` (B, 3, S, S), optional ``nsd_id``)."""
    from boldgpt.generate import complete

    p = model.patchify
    maps, images = batch["activity"], batch["image"].to(model.device)
    B = maps.shape[0]
    context = model.image_context(images, batch.get("nsd_id"))
    empty = torch.zeros(B, p.num_patches, dtype=torch.bool, device=model.device)
    zeros = torch.zeros(B, p.num_patches, p.dim, device=model.device)
    patches = complete(
        model, zeros, empty, subject_id=batch.get("subject_id"), context=context, method="query"
    )
    mask = _np(p.mask).astype(bool)
    measured, predicted = _np(maps), _np(p.inverse(patches))
    pictures = display_images(images, _normalization(model))
    rows = [
        [
            Panel("image", pictures[i]),
            Panel("map", measured[i]),
            Panel(
                "map", predicted[i], f"r={correlation(predicted[i][mask], measured[i][mask]):.2f}"
            ),
        ]
        for i in range(B)
    ]
    return panels_figure(
        rows,
        ["stimulus", "measured map", "predicted map"],
        mask,
        title=f"{type(model).__name__}: maps predicted from the pictures (one pass)",
    )


@torch.no_grad()
def bold2image_examples_figure(model: Any, batch: Mapping[str, torch.Tensor]) -> Figure:
    """Map / true picture / one-pass reconstruction from the map, for a
    :class:`~boldgpt.models.bold2image.Bold2Image` model and a prepared batch
    (``activity`` (B, H, W), ``subject_id`` (B,), ``image`` (B, 3, S, S))."""
    from boldgpt.generate import complete

    d = model.decoder
    maps = batch["activity"].to(model.device)
    B, M = maps.shape[0], d.num_patches
    context = model.bold_context(maps, batch.get("subject_id"))
    empty = torch.zeros(B, M, dtype=torch.bool, device=model.device)
    zeros = torch.zeros(B, M, d.patchify.dim, device=model.device)
    recon = d.patchify.inverse(complete(d, zeros, empty, context=context, method="query"))
    norm = _normalization(model)
    true, shown = display_images(batch["image"], norm), display_images(recon, norm)
    rows = [
        [
            Panel("map", _np(maps[i])),
            Panel("image", true[i]),
            Panel("image", shown[i], f"r={correlation(shown[i], true[i]):.2f}"),
        ]
        for i in range(B)
    ]
    return panels_figure(
        rows,
        ["map", "true image", "reconstruction"],
        _np(model.patchify.mask).astype(bool),
        title=f"{type(model).__name__}: pictures reconstructed from the maps (one pass)",
    )


def retrieval_ranking(
    bold: torch.Tensor, image: torch.Tensor, stimulus: torch.Tensor | None = None
) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
    """Rank a batch's pictures for each of its maps by cosine similarity.

    Args:
        bold: (B, C) BOLD embeddings; image: (B, C) image embeddings of the same trials.
        stimulus: (B,) stimulus ids; trials of the same stimulus count as one candidate
            (its first trial), so a picture appears once per ranking. None: every trial
            is its own stimulus.

    Returns:
        ``candidates``: the trial index of each of the U distinct stimuli;
        ``truth``: for each map, the position in ``candidates`` of its own stimulus;
        ``similarity`` (B, U) cosine similarities; ``ranking`` (B, U) candidate
        positions, best first.
    """
    B = bold.shape[0]
    ids = list(range(B)) if stimulus is None else stimulus.detach().cpu().tolist()
    first = [ids.index(s) for s in ids]
    candidates = sorted(set(first))
    truth = [candidates.index(f) for f in first]
    b = torch.nn.functional.normalize(bold.float(), dim=-1)
    v = torch.nn.functional.normalize(image.float()[candidates], dim=-1)
    similarity = (b @ v.T).cpu()
    return candidates, truth, similarity, similarity.argsort(dim=1, descending=True)


@torch.no_grad()
def cbip_examples_figure(model: Any, batch: Mapping[str, torch.Tensor], top: int = 3) -> Figure:
    """Map / true picture / the ``top`` pictures of the batch retrieved for the map
    (cosine similarity of the BOLD and image embeddings, each labelled; the true one
    marked ✓), for a :class:`~boldgpt.models.cbip.CBIP` model and a prepared batch
    (``activity`` (B, H, W), ``subject_id`` (B,), ``image`` (B, 3, S, S), optional
    ``nsd_id`` (B,): trials of one stimulus are one candidate)."""
    maps, images = batch["activity"].to(model.device), batch["image"].to(model.device)
    nsd_id = batch.get("nsd_id")
    bold = model.encode_bold(maps, batch.get("subject_id"))
    image = model.embed_images(images, nsd_id)
    candidates, truth, similarity, ranking = retrieval_ranking(bold, image, nsd_id)
    pictures = display_images(images, _normalization(model))
    k = min(top, len(candidates))
    rows = []
    for i in range(len(maps)):
        row = [Panel("map", _np(maps[i])), Panel("image", pictures[i])]
        for u in ranking[i, :k].tolist():
            mark = " ✓" if u == truth[i] else ""
            label = f"cos={float(similarity[i, u]):.2f}{mark}"
            row.append(Panel("image", pictures[candidates[u]], label))
        rows.append(row)
    return panels_figure(
        rows,
        ["map", "true image", *[f"retrieved #{j + 1}" for j in range(k)]],
        _np(model.patchify.mask).astype(bool),
        title=(
            f"{type(model).__name__}: pictures retrieved for each map among the "
            f"{len(candidates)} of this batch"
        ),
    )

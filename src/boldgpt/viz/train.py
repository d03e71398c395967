"""Figures of training and generation: example predictions during training, samples and
completions beside real maps, and loss curves with their baselines.

The ``*_figure`` functions take numpy arrays and return a matplotlib ``Figure``;
:func:`training_examples_figure` draws a model's view of a batch, through the one
table of which family draws which figure (:data:`EXAMPLE_FIGURES`, looked up by
:func:`example_figure_drawer`; the image↔BOLD families' figures are in
:mod:`boldgpt.viz.image_bold`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from boldgpt.viz.maps import map_grid, save_figure, show_map

ORDER_CMAP = "viridis"


def _np(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def maps_table_figure(
    columns: Mapping[str, np.ndarray],
    mask: np.ndarray,
    *,
    cmaps: Mapping[str, str] | None = None,
    vmax: Mapping[str, float | None] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    size: float = 1.8,
) -> Figure:
    """One row per example, one column per named stack of maps (B, H, W).

    ``cmaps`` / ``vmax`` override the activity colour scale per column (e.g. an order
    map); ``labels[col][b]`` is written in the corner of a panel (e.g. its R^2). NaN
    pixels are drawn grey (not shown)."""
    names = list(columns)
    arrays = [_np(columns[n]) for n in names]
    rows = min(len(a) for a in arrays)
    fig, axes = map_grid(rows, len(names), size=size, titles=names)
    cmaps, vmax, labels = dict(cmaps or {}), dict(vmax or {}), dict(labels or {})
    for j, name in enumerate(names):
        for i in range(rows):
            kwargs: dict[str, Any] = {}
            if name in cmaps:
                kwargs["cmap"] = cmaps[name]
                kwargs["vmin"] = 0.0
            if name in vmax:
                kwargs["vmax"] = vmax[name]
            label = labels.get(name, [None] * rows)[i]
            show_map(axes[i, j], arrays[j][i], mask, label=label, **kwargs)
    if row_titles:
        for i, text in enumerate(row_titles[:rows]):
            axes[i, 0].set_ylabel(text, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def gpt_examples_figure(
    activity: np.ndarray,
    target: np.ndarray,
    prediction: np.ndarray,
    sample: np.ndarray,
    order_map: np.ndarray,
    mask: np.ndarray,
    title: str | None = None,
) -> Figure:
    """boldGPT examples (all (B, H, W)): the input map; the target the model predicts
    (its patches, or their tokens' centroids); the next-patch prediction of each patch
    from the patches before it; a map sampled by the model; the order in which the
    patches were fed (0 = first)."""
    n = float(np.nanmax(order_map)) if np.isfinite(order_map).any() else 1.0
    return maps_table_figure(
        {
            "activity": activity,
            "target": target,
            "prediction": prediction,
            "sample": sample,
            "order": order_map,
        },
        mask,
        cmaps={"order": ORDER_CMAP},
        vmax={"order": n},
        labels={"prediction": [_r2_label(p, t, mask) for p, t in zip(prediction, target)]},
        title=title,
    )


def beit_examples_figure(
    activity: np.ndarray,
    visible: np.ndarray,
    prediction: np.ndarray,
    mask: np.ndarray,
    title: str | None = None,
) -> Figure:
    """BEiT examples (all (B, H, W)): the input; what the model saw (masked patches
    grey, i.e. NaN in ``visible``); the visible patches with the masked ones filled in
    by the model, labelled with the R^2 of the masked pixels."""
    hidden = np.isnan(_np(visible))
    labels = [
        _r2_label(np.where(h, p, np.nan), np.where(h, t, np.nan), mask)
        for p, t, h in zip(_np(prediction), _np(activity), hidden)
    ]
    return maps_table_figure(
        {"activity": activity, "visible": visible, "prediction": prediction},
        mask,
        labels={"prediction": labels},
        title=title,
    )


def _r2_label(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> str:
    p, t = np.asarray(pred)[mask], np.asarray(target)[mask]
    ok = np.isfinite(p) & np.isfinite(t)
    if ok.sum() < 2:
        return ""
    ss = np.square(t[ok] - t[ok].mean()).sum()
    return f"R²={1 - np.square(p[ok] - t[ok]).sum() / max(ss, 1e-12):.2f}"


ExampleDrawer = Callable[[Any, Mapping[str, torch.Tensor]], Figure]


def _image_bold(name: str) -> ExampleDrawer:
    """A drawer of :mod:`boldgpt.viz.image_bold`, imported when first used."""

    def draw(model: Any, batch: Mapping[str, torch.Tensor]) -> Figure:
        from boldgpt.viz import image_bold

        return getattr(image_bold, name)(model, batch)

    return draw


def map_model_examples_figure(model: Any, batch: Mapping[str, torch.Tensor]) -> Figure:
    """A boldGPT (IGPT) or BEiT model's view of a prepared batch of maps: next-patch
    predictions, a sample and the order (:func:`gpt_examples_figure`), or the masked
    patches filled in (:func:`beit_examples_figure`).

    Shuffled models are shown in a random order (as trained), so the order column
    shows what the model handles; random draws use torch's global RNG (the caller
    forks it to keep training reproducible).
    """
    from boldgpt import generate

    p = model.patchify
    key = getattr(model, "input_key", "activity")
    maps = batch[key]
    subject_id = batch.get("subject_id")
    mask = _np(p.mask).astype(bool)
    if model.causal:
        order = "random" if getattr(model, "shuffle", False) else "fixed"
        out = model(batch, order=order)
        target = p.inverse(_target_patches(model, out.patches))
        samples = generate.sample(model, len(maps), subject_id=subject_id, order=order)
        ranking = out.order.argsort(dim=1).float()
        fig = gpt_examples_figure(
            _np(maps),
            _np(target),
            _np(model.prediction_maps(out)),
            _np(samples),
            _np(p.inverse_values(ranking)),
            mask,
            title=f"{type(model).__name__}: next-patch predictions ({order} order)",
        )
    else:
        out = model(batch)
        hidden = _np(p.inverse_values(out.mask.float())) > 0.5
        visible = np.where(hidden, np.nan, _np(p.inverse(out.patches)))
        pred = _np(model.prediction_maps(out))
        filled = np.where(hidden, pred, _np(p.inverse(out.patches)))
        ratio = out.mask.float().mean().item()
        fig = beit_examples_figure(
            _np(maps),
            visible,
            filled,
            mask,
            title=f"{type(model).__name__}: masked patches filled in ({ratio:.0%} masked)",
        )
    return fig


EXAMPLE_FIGURES: dict[str, ExampleDrawer] = {
    "IGPT": map_model_examples_figure,
    "BEiT": map_model_examples_figure,
    "Image2BOLD": _image_bold("image2bold_examples_figure"),
    "Bold2Image": _image_bold("bold2image_examples_figure"),
    "CBIP": _image_bold("cbip_examples_figure"),
}
"""Which function draws the training examples of each model family (the
``model_class`` of its registry config)."""


def example_figure_drawer(model: Any) -> ExampleDrawer | None:
    """The function ``draw(model, batch) -> Figure`` of ``model``'s family in
    :data:`EXAMPLE_FIGURES`; None for a family without one (a module without a
    registry config, or a model of images alone, whose examples are not flat maps)."""
    config = getattr(model, "config", None)
    if getattr(config, "input_key", "activity") != "activity":
        return None
    return EXAMPLE_FIGURES.get(getattr(config, "model_class", ""))


@torch.no_grad()
def training_examples_figure(
    model: Any, batch: Mapping[str, torch.Tensor], path: str | os.PathLike | None = None
) -> Figure | None:
    """Draw ``model``'s view of a prepared batch with its family's drawer
    (:func:`example_figure_drawer`); save to ``path`` (then close the figure and
    return None) or return the figure.

    Raises:
        ValueError: no figure is defined for the model's family.
    """
    draw = example_figure_drawer(model)
    if draw is None:
        family = getattr(getattr(model, "config", None), "model_class", type(model).__name__)
        raise ValueError(
            f"no training example figure for {family or type(model).__name__} models; "
            f"known families: {sorted(EXAMPLE_FIGURES)} (over BOLD maps)"
        )
    fig = draw(model, batch)
    if path is None:
        return fig
    save_figure(fig, path)
    return None


def _target_patches(model: Any, patches: torch.Tensor) -> torch.Tensor:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and tokenizer.is_fitted:
        return tokenizer.decode(tokenizer.encode(patches))
    return patches


def samples_figure(
    real: np.ndarray | None,
    samples: np.ndarray | Mapping[str, np.ndarray],
    mask: np.ndarray,
    cols: int = 6,
    title: str | None = None,
) -> Figure:
    """Real maps (top row) above model samples (one row per named stack, e.g. per
    generation order), for a side-by-side look at whether samples look like brain
    maps; only the samples when ``real`` is None."""
    stacks = [] if real is None else [("real", _np(real)[:cols])]
    if isinstance(samples, Mapping):
        stacks += [(name, _np(s)[:cols]) for name, s in samples.items()]
    else:
        stacks.append(("sample", _np(samples)[:cols]))
    n = max(len(stack) for _, stack in stacks)
    fig, axes = map_grid(len(stacks), n, size=1.8)
    for i, (name, stack) in enumerate(stacks):
        for j in range(n):
            ax = axes[i, j]
            if j < len(stack):
                show_map(ax, stack[j], mask)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pca_figure(pca: Any, num_components: int = 7, title: str | None = None) -> Figure:
    """A fitted MaskedPCA: the mean map, the leading components (scaled to unit max)
    and the cumulative fraction of variance they explain (of the fitted total)."""
    mask = _np(pca.mask).astype(bool)
    k = min(num_components, pca.n_components)
    comps = pca.components[:k]
    comps = comps / comps.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    panels = torch.zeros(k + 1, *mask.shape)
    panels[0][torch.from_numpy(mask)] = pca.mean.cpu()
    panels[1:, torch.from_numpy(mask)] = comps.cpu()
    fig, axes = plt.subplots(1, k + 2, figsize=(1.9 * (k + 2), 2.4))
    show_map(axes[0], _np(panels[0]), mask, title="mean map")
    for j in range(k):
        ev = float(pca.explained_variance[j])
        show_map(axes[j + 1], _np(panels[j + 1]), mask, vmax=1.0, title=f"PC{j + 1} ({ev:.2f})")
    var = _np(pca.explained_variance)
    total = var.sum() + float(pca.noise_variance) * (pca.num_pixels - len(var))
    axes[-1].plot(np.arange(1, len(var) + 1), np.cumsum(var) / max(total, 1e-12))
    axes[-1].set_xlabel("components", fontsize=8)
    axes[-1].set_ylabel("variance explained", fontsize=8)
    axes[-1].set_ylim(0, 1)
    axes[-1].tick_params(labelsize=7)
    axes[-1].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def completions_figure(
    real: np.ndarray,
    observed: np.ndarray,
    completions: np.ndarray,
    mask: np.ndarray,
    title: str | None = None,
    pca: np.ndarray | None = None,
) -> Figure:
    """Completion of partially observed maps: the real map; the prompt (unobserved
    pixels grey); the model's completion (and optionally the PCA completion). Each
    completion is labelled with its R^2 on the unobserved pixels."""
    real, observed, completions = _np(real), _np(observed).astype(bool), _np(completions)
    prompt = np.where(observed, real, np.nan)
    cols: dict[str, np.ndarray] = {"real": real, "prompt": prompt, "completion": completions}
    labels = {"completion": _hidden_r2(completions, real, observed, mask)}
    if pca is not None:
        cols["PCA completion"] = _np(pca)
        labels["PCA completion"] = _hidden_r2(_np(pca), real, observed, mask)
    return maps_table_figure(cols, mask, labels=labels, title=title)


def _hidden_r2(pred: np.ndarray, real: np.ndarray, observed: np.ndarray, mask: np.ndarray):
    return [
        _r2_label(np.where(o, np.nan, p), np.where(o, np.nan, r), mask)
        for p, r, o in zip(pred, real, observed)
    ]


def loss_curves_figure(
    records: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, float] | None = None,
    title: str = "training",
    ylabel: str = "loss",
) -> Figure:
    """Train and validation loss against step (from ``log.jsonl`` records), with
    horizontal lines for baselines (name -> loss). A train record's ``next_patch_loss``,
    where the model logs one (its loss then adds other terms, e.g. a completion head's),
    is drawn instead of its loss, so that it compares with the validation loss."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [
            (r["step"], r.get("next_patch_loss", r["loss"]))
            for r in records
            if r.get("split") == split and "loss" in r
        ]
        if pts:
            steps, losses = zip(*pts)
            ax.plot(steps, losses, style, label=split, lw=1.2, ms=3)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"][2:]
    for (name, value), color in zip((baselines or {}).items(), colors * 3):
        ax.axhline(value, ls="--", lw=1, color=color, label=f"{name} ({value:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a figure atomically (format from the suffix) and close it."""
    save_figure(fig, path)
    return Path(path)

"""Completion tasks: which patches a prompt shows, and how well a model, the MaskedPCA
baseline and the mean map fill in the rest.

A *prompt* keeps some patches of a real map (``observed``) and hides the others; a
completion is scored by the in-mask R² of the hidden pixels, pooled over maps
(``1 - SSE / SST``, SST around the mean of the hidden values: predicting that constant
scores 0). The prompts (``OBSERVE``):

- ``prefix``: the first ``fraction`` of the model's fixed order; for the radial order of
  boldGPT models, the central patches of the map;
- ``random``: a seeded random ``fraction`` of the patches of each map;
- ``left`` / ``right``: one side of the flat map (one hemisphere); the other is hidden.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from boldgpt import generate
from boldgpt.evaluate.metrics import Sums
from boldgpt.patching import MaskedPatchify

OBSERVE = ("prefix", "random", "left", "right")
"""The prompts :func:`observed_patches` builds."""
METHODS = generate.METHODS
"""Completion methods of :func:`boldgpt.generate.complete` (autoregressive models):
``query`` asks each hidden slot directly from the observed patches (one pass);
``autoregressive`` predicts the hidden patches one after another, feeding its
predictions back."""


def observed_patches(
    patchify: MaskedPatchify, batch_size: int, how: str, fraction: float = 0.3, seed: int = 0
) -> torch.Tensor:
    """(B, N) bool on the CPU, True for the patches a prompt shows (see the module
    docstring; ``fraction`` is used by ``prefix`` and ``random``)."""
    p = patchify
    n = p.num_patches
    if how not in OBSERVE:
        raise ValueError(f"unknown prompt {how!r}; expected one of {OBSERVE}")
    if how in ("prefix", "random") and not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    k = max(1, math.ceil(fraction * n))
    if how == "prefix":
        obs = torch.arange(n) < k
    elif how == "random":
        keys = torch.rand(batch_size, n, generator=torch.Generator().manual_seed(seed))
        return keys.argsort(1).argsort(1) < k
    else:
        # patch centres against the mask's midline (the mean column of its pixels)
        cols = p.patch_indices.cpu() % p.grid[1]
        centre_x = cols.double() * p.patch_size + (p.patch_size - 1) / 2 - p.padding[0]
        midline = float(p.mask.nonzero()[:, 1].double().mean())
        obs = centre_x < midline if how == "left" else centre_x >= midline
    return obs.expand(batch_size, n).clone()


def hidden_r2(
    pred: torch.Tensor, real: torch.Tensor, observed_px: torch.Tensor, mask: Any
) -> float:
    """R² over the in-mask pixels a prompt hid, pooled over maps: pred, real (M, H, W),
    observed_px (M, H, W) bool (True where shown), mask (H, W)."""
    hidden = (~observed_px.cpu()) & torch.as_tensor(np.asarray(mask))
    s = Sums()
    s.add(pred.float().cpu(), real.float().cpu(), hidden.expand_as(real))
    return s.r2


def observed_pixels(patchify: MaskedPatchify, observed: torch.Tensor) -> torch.Tensor:
    """(B, N) observed patches -> (B, H, W) bool observed pixels (on the CPU)."""
    dev = patchify.mask.device
    return (patchify.inverse_values(observed.float().to(dev)) > 0.5).cpu()


@torch.no_grad()
def model_completions(
    model: Any,
    maps: torch.Tensor,
    subject_id: torch.Tensor | None,
    observed: torch.Tensor,
    method: str | None,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """Complete maps (M, H, W) from their ``observed`` (M, N) patches with
    :func:`boldgpt.generate.complete` (``method`` from :data:`METHODS`, or None for the
    model's default; ``kwargs`` go to it, e.g. ``generator``), in batches. Returns
    (M, H, W) float32 on the CPU, equal to the (patched) real maps on the observed
    patches."""
    p = model.patchify
    dev = model.device
    out = []
    for start in range(0, len(maps), batch_size):
        x = maps[start : start + batch_size].to(dev)
        sid = None if subject_id is None else subject_id[start : start + batch_size].to(dev)
        obs = observed[start : start + batch_size].to(dev)
        done = generate.complete(model, p(x), obs, subject_id=sid, method=method, **kwargs)
        out.append(p.inverse(done).float().cpu())
    return torch.cat(out)


def pca_completions(pca: Any, maps: torch.Tensor, observed_px: torch.Tensor) -> torch.Tensor:
    """MaskedPCA completions (M, H, W): the maps' PCA reconstruction from the observed
    pixels (ridge on the components), the real values where observed."""
    maps = maps.float().cpu()
    recon = pca.decode(pca.encode_partial(maps, observed_px))
    return torch.where(observed_px, maps, recon.float())


def mean_map_completions(
    mean_map: torch.Tensor, maps: torch.Tensor, observed_px: torch.Tensor
) -> torch.Tensor:
    """The mean-map baseline: hidden pixels filled with the training mean map."""
    return torch.where(observed_px, maps.float().cpu(), mean_map.float().cpu().expand_as(maps))


def completion_scores(
    model: Any,
    maps: torch.Tensor,
    subject_id: torch.Tensor | None,
    observed: torch.Tensor,
    *,
    pca: Any = None,
    mean_map: torch.Tensor | None = None,
    methods: tuple[str, ...] = METHODS,
    batch_size: int = 64,
    query_orders: int = 1,
    **kwargs: Any,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Complete maps (M, H, W) from the same prompt (``observed`` (M, N)) with each model
    method and the baselines given; score each by :func:`hidden_r2`. With
    ``query_orders`` > 1 the one-pass method averages its predictions over that many
    random prompt orders (``generate.complete(num_orders=...)``).

    Returns ``(r2, completions)``, both keyed ``"model (<method>)"``, ``"MaskedPCA"``,
    ``"mean map"``; completions are (M, H, W) float32 on the CPU.
    """
    observed_px = observed_pixels(model.patchify, observed)
    mask = model.patchify.mask.cpu()
    ensemble = {"prompt_order": "random", "num_orders": query_orders} if query_orders > 1 else {}
    done = {
        f"model ({m})": model_completions(
            model,
            maps,
            subject_id,
            observed,
            m,
            batch_size=batch_size,
            **(ensemble if m == "query" else {}),
            **kwargs,
        )
        for m in methods
    }
    if pca is not None:
        done["MaskedPCA"] = pca_completions(pca, maps, observed_px)
    if mean_map is not None:
        done["mean map"] = mean_map_completions(mean_map, maps, observed_px)
    r2 = {name: hidden_r2(c, maps, observed_px, mask) for name, c in done.items()}
    return r2, done

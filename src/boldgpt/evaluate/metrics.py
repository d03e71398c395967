"""Scores for masked / next-patch prediction, and the baselines they are read against.

Definitions (SPEC section 11):

- **masked MSE**: ``sum(m * (pred - target)^2) / sum(m)`` over in-mask pixels ``m`` of
  the predicted patches, pooled over every patch of every map: exactly the training
  loss of a continuous boldGPT model.
- **in-mask R^2** of predicted patches: ``1 - SSE / SST`` with both sums over the same
  in-mask pixels and SST taken around the mean of those target values (so predicting
  a constant equal to that mean scores 0).
- **token NLL** (nats per patch) and **accuracy** of token models.

Baselines, measured on the same maps:

- **mean map**: every patch predicted by the training-set mean map (order-free);
- **MaskedPCA next-patch**: each patch predicted from the patches before it in the
  same order by ridge regression on PCA components
  (:meth:`boldgpt.models.pca.MaskedPCA.next_patch_predictions`);
- **unigram tokens**: the training frequency of each token (token models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from boldgpt.patching import MaskedPatchify, permute, random_order


@dataclass
class Sums:
    """Running sums for pooled MSE and R^2 over in-mask values."""

    sse: float = 0.0
    count: float = 0.0
    sum_y: float = 0.0
    sum_y2: float = 0.0

    def add(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> None:
        """Accumulate predictions and targets (same shape) where ``weight`` (0/1,
        broadcastable) is 1."""
        w = weight.to(torch.float64)
        p, t = pred.to(torch.float64), target.to(torch.float64)
        w = w.expand_as(t)
        self.sse += float(((p - t).square() * w).sum())
        self.count += float(w.sum())
        self.sum_y += float((t * w).sum())
        self.sum_y2 += float((t.square() * w).sum())

    @property
    def mse(self) -> float:
        return self.sse / max(self.count, 1.0)

    @property
    def r2(self) -> float:
        sst = self.sum_y2 - self.sum_y**2 / max(self.count, 1.0)
        return 1.0 - self.sse / max(sst, 1e-12)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> float:
    """Pooled in-mask MSE of patches: pred/target (B, N, P), pixel_mask (N, P) or
    (B, N, P) bool."""
    s = Sums()
    s.add(pred, target, pixel_mask)
    return s.mse


def masked_r2(pred: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> float:
    """In-mask R^2 of predicted patches (see the module docstring); shapes as in
    :func:`masked_mse`."""
    s = Sums()
    s.add(pred, target, pixel_mask)
    return s.r2


def token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Mean NLL (nats per token) and top-1 accuracy of logits (..., V) for ids (...)."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    tokens = tokens.reshape(-1)
    nll = F.cross_entropy(logits, tokens, reduction="mean")
    acc = (logits.argmax(-1) == tokens).float().mean()
    return {"nll": float(nll), "accuracy": float(acc)}


def unigram_nll(train_tokens: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> float:
    """NLL (nats per token) of ``tokens`` under the token frequencies of
    ``train_tokens`` (add-one smoothed): the order-free baseline of token models."""
    counts = torch.bincount(train_tokens.reshape(-1).cpu(), minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[tokens.reshape(-1).cpu()].mean())


def make_orders(
    kind: str, num_maps: int, num_patches: int, seed: int = 0, batch_size: int = 64
) -> list[torch.Tensor]:
    """The orders of an evaluation, one (b, N) tensor per batch of ``batch_size`` maps:
    the fixed order, or a seeded random permutation per batch, shared by its maps (so a
    model and a baseline see the same orders, and the PCA baseline solves its ridge
    systems once per batch instead of once per map)."""
    if kind not in ("fixed", "random"):
        raise ValueError(f"order kind must be 'fixed' or 'random'; got {kind!r}")
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, num_maps, batch_size):
        b = min(batch_size, num_maps - start)
        if kind == "fixed":
            order = torch.arange(num_patches)
        else:
            order = random_order(1, num_patches, generator=gen)[0][0]
        out.append(order.expand(b, -1).clone())
    return out


@torch.no_grad()
def model_next_patch_scores(
    model: Any,
    maps: torch.Tensor,
    subject_id: torch.Tensor | None,
    orders: list[torch.Tensor],
    batch_size: int = 64,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Next-patch scores of an IGPT model over maps (M, H, W) in the given orders
    (from :func:`make_orders` with the same batch size).

    Returns ``loss`` (the model's own loss: masked MSE, or token NLL), ``mse`` and
    ``r2`` of its point predictions (in-mask), and ``accuracy`` for token models.
    """
    was_training = model.training
    model.eval()
    dev = model.device
    sums, nll, acc, n_tok = Sums(), 0.0, 0.0, 0
    try:
        for i, start in enumerate(range(0, len(maps), batch_size)):
            x = maps[start : start + batch_size].to(dev)
            batch = {"activity": x}
            if subject_id is not None:
                batch["subject_id"] = subject_id[start : start + batch_size].to(dev)
            order = orders[i].to(dev)
            if autocast is not None:
                with autocast():
                    out = model(batch, order=order)
            else:
                out = model(batch, order=order)
            seq = permute(out.patches, out.order)
            pred = model.output_to_patches(out.output.float())
            sums.add(pred, seq, model.patchify.patch_mask[out.order])
            if getattr(model, "tokenizer", None) is not None:
                m = token_metrics(out.output, out.target)
                k = out.target.numel()
                nll, acc, n_tok = nll + m["nll"] * k, acc + m["accuracy"] * k, n_tok + k
    finally:
        model.train(was_training)
    scores = {"mse": sums.mse, "r2": sums.r2}
    if n_tok:
        scores.update(loss=nll / n_tok, nll=nll / n_tok, accuracy=acc / n_tok)
    else:
        scores["loss"] = sums.mse
    return scores


def mean_map_scores(
    mean_map: torch.Tensor, maps: torch.Tensor, patchify: MaskedPatchify
) -> dict[str, float]:
    """Masked MSE and R^2 of predicting every patch of maps (M, H, W) by the same
    patch of ``mean_map`` (H, W): the order-free baseline."""
    sums = Sums()
    mean_patches = patchify(mean_map[None].to(patchify.mask.device).float())
    for chunk in maps.split(256):
        patches = patchify(chunk.to(patchify.mask.device).float())
        sums.add(mean_patches.expand_as(patches), patches, patchify.patch_mask)
    return {"loss": sums.mse, "mse": sums.mse, "r2": sums.r2}


@torch.no_grad()
def pca_next_patch_scores(
    pca: Any,
    maps: torch.Tensor,
    patchify: MaskedPatchify,
    orders: list[torch.Tensor],
    batch_size: int = 64,
    alpha: float | None = None,
) -> dict[str, float]:
    """Masked MSE and R^2 of the MaskedPCA next-patch baseline: each patch predicted
    from the patches before it, in the same orders a model was scored with."""
    sums = Sums()
    for i, start in enumerate(range(0, len(maps), batch_size)):
        x = maps[start : start + batch_size].float()
        order = orders[i]
        if bool((order == order[:1]).all()):
            order = order[0]  # one shared order: a single batched solve
        pred = pca.next_patch_predictions(x, patchify, order=order, alpha=alpha)
        seq = permute(patchify(x), order)
        sums.add(pred, seq, permute(patchify.patch_mask.expand(len(x), -1, -1), order))
    return {"loss": sums.mse, "mse": sums.mse, "r2": sums.r2}


def mean_map(maps: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean (H, W) of batches of maps (B, H, W), accumulated in float64."""
    total, count = None, 0
    for chunk in maps:
        s = chunk.double().sum(0)
        total = s if total is None else total + s
        count += len(chunk)
    if total is None:
        raise ValueError("mean_map needs at least one map")
    return (total / count).float()


def format_comparison(rows: Mapping[str, Mapping[str, float]], key: str = "loss") -> str:
    """One line comparing the first entry with the others, e.g.
    ``model 0.512 | mean map 0.980 (1.91x) | PCA 0.700 (1.37x)``; each ratio is that
    entry's value over the first's (above 1: the first has the lower loss)."""
    names = list(rows)
    first = rows[names[0]][key]
    parts = [f"{names[0]} {first:.4f}"]
    for name in names[1:]:
        v = rows[name][key]
        parts.append(f"{name} {v:.4f} ({v / first:.2f}x)" if first else f"{name} {v:.4f}")
    return " | ".join(parts)


def summarize(values: Mapping[str, Any]) -> dict[str, float]:
    """Round floats for reports and JSON (6 significant digits)."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in values.items()}


__all__ = [
    "Sums",
    "format_comparison",
    "make_orders",
    "masked_mse",
    "masked_r2",
    "mean_map",
    "mean_map_scores",
    "model_next_patch_scores",
    "pca_next_patch_scores",
    "summarize",
    "token_metrics",
    "unigram_nll",
]

"""Model FLOPs of a training step, as the MFU rows count them.

The issue's estimate for a plain boldGPT / BEiT: per sample, 6 x non-embedding
parameters x tokens + 12 x layers x tokens^2 x width (forward + backward; tokens =
prefix + patches). Models that also read pictures multiply some parameters by other
token counts: cross-attention's key / value maps multiply the M context tokens, CBIP's
projection head one pooled vector per sample, and the frozen image encoder does not run
in a training step at all (its outputs are cached per stimulus). So the parameters are
counted by the tokens they actually multiplied in one training forward, recorded by
forward hooks (:func:`census`): for a plain model every map multiplies all T tokens and
the count is exactly the issue's formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Census:
    """The products of one training forward of a model, as it ran them.

    ``linears``: (out, in, rows, has bias) per call of a trainable linear map, rows =
    the batch's tokens it multiplied (self-attention's q and k|v as the ONE fused map the
    model runs); ``attention``: (batch x heads, query tokens, key tokens, head width) per
    attention call; ``norm_params_rows``: parameters x rows of the LayerNorms (the
    formula counts every non-embedding parameter, elementwise ones included).
    """

    batch: int
    linears: list[tuple[int, int, int, bool]] = field(default_factory=list)
    attention: list[tuple[int, int, int, int]] = field(default_factory=list)
    norm_params_rows: int = 0

    def product_flops(self) -> int:
        """FLOPs of the step's matrix products alone (forward, input and weight
        gradients; scores and outputs of attention and their four backward products)."""
        linear = sum(rows * o * i for o, i, rows, _ in self.linears)
        attention = sum(bh * tq * tk * d for bh, tq, tk, d in self.attention)
        return 6 * linear + 12 * attention

    def flops_per_sample(self) -> float:
        """Model FLOPs of one sample: 6 x parameters x the tokens each multiplied +
        12 x query tokens x key tokens x width per attention layer."""
        biases = sum(rows * o for o, _, rows, bias in self.linears if bias)
        return (self.product_flops() + 6 * (biases + self.norm_params_rows)) / self.batch


def census(model: nn.Module, batch: Mapping[str, Any]) -> Census:
    """Record the products of one training forward of ``model`` on ``batch`` (train
    mode, without autograd; modules whose parameters are all frozen are not counted)."""
    from boldgpt.models.layers import Attention, CrossAttention

    first = next(iter(v for v in batch.values() if torch.is_tensor(v)))
    result = Census(batch=int(first.shape[0]))

    def trainable(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    def on_linear(m: nn.Linear, args: tuple, _out: Any) -> None:
        rows = args[0].numel() // m.in_features
        result.linears.append((m.out_features, m.in_features, rows, m.bias is not None))

    def on_norm(m: nn.LayerNorm, args: tuple, _out: Any) -> None:
        params = sum(p.numel() for p in m.parameters())
        result.norm_params_rows += params * (args[0].numel() // args[0].shape[-1])

    def on_attention(m: Attention, args: tuple, kwargs: dict) -> None:
        if kwargs.get("cache") is not None:
            raise ValueError("census() records a training forward: no KV cache")
        x = args[0]
        B, T, D = x.shape
        if isinstance(m, CrossAttention):  # q, kv and proj run as modules: hooked
            context = args[1] if len(args) > 1 else kwargs["context"]
            keys = context.shape[1]
        else:  # q | kv fused into one product (proj runs as a module)
            fused = m.q.out_features + m.kv.out_features
            result.linears.append((fused, D, B * T, m.q.bias is not None))
            keys = T
        result.attention.append((B * m.num_heads, T, keys, m.head_dim))

    handles = []
    fused_maps = set()
    for module in model.modules():
        if isinstance(module, Attention) and trainable(module):
            handles.append(module.register_forward_pre_hook(on_attention, with_kwargs=True))
            if not isinstance(module, CrossAttention):
                fused_maps |= {id(module.q), id(module.kv)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and trainable(module):
            if id(module) not in fused_maps:  # (never called as modules)
                handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, nn.LayerNorm) and trainable(module):
            handles.append(module.register_forward_hook(on_norm))
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return result


def non_embedding_params(model: nn.Module) -> int:
    """Trainable parameters that multiply every token: all but the backbone's own tables
    (position embeddings, next-position queries, subject / group / register / mask
    tokens), which are looked up rather than multiplied, and a frozen image encoder."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not (name.startswith("backbone.") and "." not in name[9:])
    )


def sequence_tokens(model: Any) -> int:
    """Tokens of a full training sequence: prefix (subject token, registers) + patches."""
    return model.backbone.num_prefix + model.num_patches

"""Transformer building blocks: attention with a KV cache, MLP, LayerScale, DropPath and
the pre-norm block (self-attention, optional cross-attention, MLP).

Shapes: B batch, T new tokens, L cached + new tokens, M context tokens, D width,
H heads, d = D / H head width.

Parameter names (``attn.q``, ``attn.kv``, ``attn.proj``, ``norm1/norm2/norm3``,
``mlp.fc1/fc2``, ``cross``) follow the seed project's layout so that its checkpoints
map onto these modules one to one (see :mod:`boldgpt.models.original`). Self-attention
still runs ONE fused q|k|v product: the two weights are concatenated on the fly (a copy
of a few hundred kB, against a product over every token), so model files, training
checkpoints and optimizer states keep their keys and shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions and
    filled in place during incremental decoding.

    Buffers are (B, H, max_len, d) per layer, created on first use with the dtype and
    device of the first keys written (so autocast works). ``length`` is the number of
    positions already stored; :meth:`advance` moves it after every layer has written
    the same new positions. Cross-attention keys/values of a fixed context are
    computed once and kept in ``cross``.
    """

    def __init__(self, max_len: int):
        if max_len < 1:
            raise ValueError(f"max_len must be positive; got {max_len}")
        self.max_len = max_len
        self.length = 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, H, T, d) of ``layer`` after the cached ones and
        return views of all of them (B, H, length + T, d)."""
        B, H, T, d = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(
                f"KV cache overflow: {end} positions needed, cache holds {self.max_len}"
            )
        if layer not in self.keys:
            self.keys[layer] = k.new_empty(B, H, self.max_len, d)
            self.values[layer] = v.new_empty(B, H, self.max_len, d)
        keys, values = self.keys[layer], self.values[layer]
        if keys.shape[0] != B:
            raise ValueError(f"KV cache was built for batch {keys.shape[0]}; got batch {B}")
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``
    (flash / memory-efficient kernels where available).

    ``q`` and ``kv`` are separate parameters (keys first, then values in ``kv``) so
    that :class:`CrossAttention` can reuse the module with keys from a context; self-
    attention multiplies by their concatenation in one product.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, M, _ = src.shape
        kv = self.kv(src).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        return self.k_norm(k), v

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight (3D, D) and bias (3D,) of the fused projection: [q | keys | values].

        Concatenated at every call (with autograd it is part of the graph, so the
        gradients flow back to ``q`` and ``kv``). Not cached: a cache keyed on the
        weights' version counters went stale under fused AdamW, whose in-place update
        leaves those counters unchanged (the demo's validation then scored weights of
        step 200 at step 1,200)."""
        q, kv = self.q, self.kv
        bias = None if q.bias is None else torch.cat([q.bias, kv.bias])
        return torch.cat([q.weight, kv.weight]), bias

    def _queries_keys_values(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, T, d) of x (B, T, D) from one fused product."""
        B, T, _ = x.shape
        weight, bias = self._fused_qkv()
        qkv = F.linear(x, weight, bias).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        B, _, T, _ = q.shape
        drop = self.attn_drop if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal
        )
        y = self.proj(y.transpose(1, 2).reshape(B, T, -1))
        return self.proj_drop(y) if self.training and self.proj_drop.p > 0 else y

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return self.q_norm(self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2))

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Self-attention: x (B, T, D) -> (B, T, D).

        Args:
            causal: position i attends to positions <= i.
            attn_mask: (T, L) or (B, 1, T, L) bool, True = may attend; overrides
                ``causal``.
            cache: incremental decoding: the new tokens' keys/values are appended
                after the cached ones and the new tokens attend to all of them.
            layer: index of this layer in ``cache``.
        """
        T = x.shape[1]
        q, k, v = self._queries_keys_values(x)
        if cache is None:
            return self._attend(q, k, v, attn_mask, causal and attn_mask is None)
        start = cache.length
        k, v = cache.update(layer, k, v)
        if causal and attn_mask is None and start > 0 and T > 1:
            # new tokens see every cached token and the new ones up to themselves
            attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device)
            attn_mask = attn_mask.tril_(diagonal=start)
        # (a single new token may attend to everything cached: no mask at all)
        return self._attend(q, k, v, attn_mask, causal and attn_mask is None and start == 0)


class CrossAttention(Attention):
    """Attention from ``x`` (queries) to a context sequence (keys/values). With a
    cache, the context's keys/values are computed on the first call and reused."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        *,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D), context (B, M, D) -> (B, T, D)."""
        if cache is not None and layer in cache.cross:
            k, v = cache.cross[layer]
        elif context is None:
            raise ValueError("cross-attention needs a context (B, M, D); got None")
        else:
            k, v = self._keys_values(context)
            if cache is not None:
                cache.cross[layer] = (k, v)
        return self._attend(self._queries(x), k, v, None, False)


class Mlp(nn.Module):
    """fc1 (D -> hidden), exact GELU, dropout, fc2 (hidden -> D), dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (no-op dropout calls skipped: decoding runs this once per token and layer)
        if not (self.training and self.drop.p > 0):
            return self.fc2(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT), initialised small so
    deep models start close to the identity."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: during training, drop a residual branch for a whole sample
    with probability ``p`` and rescale the kept ones by 1 / (1 - p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1); got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block::

        x = x + attn(norm1(x))                 # causal or bidirectional
        x = x + cross(norm2(x), context)       # only with cross_attn=True
        x = x + mlp(norm3(x))

    each branch optionally scaled by LayerScale and dropped by DropPath.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        cross_attn: bool = False,
    ):
        super().__init__()

        def scale() -> nn.Module:
            return LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

        def path() -> nn.Module:
            return DropPath(drop_path) if drop_path > 0 else nn.Identity()

        attn_args = dict(qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop, proj_drop=drop)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, **attn_args)
        self.ls1, self.drop_path1 = scale(), path()
        self.cross: CrossAttention | None = None
        if cross_attn:
            self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
            self.cross = CrossAttention(dim, num_heads, **attn_args)
            self.ls2, self.drop_path2 = scale(), path()
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        # (+1e-6: a ratio inferred as hidden / dim must give back hidden exactly)
        self.mlp = Mlp(dim, int(dim * mlp_ratio + 1e-6), drop=drop)
        self.ls3, self.drop_path3 = scale(), path()
        # Without LayerScale and DropPath the branches are added as they are; decoding
        # runs forward once per token and layer, so skipping the identity calls counts.
        self._plain_residual = not layer_scale and drop_path <= 0

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D), context (B, M, D) or None -> (B, T, D)."""
        y = self.attn(self.norm1(x), causal=causal, attn_mask=attn_mask, cache=cache, layer=layer)
        if self._plain_residual:
            x = x + y
            if self.cross is not None:
                x = x + self.cross(self.norm2(x), context, cache=cache, layer=layer)
            return x + self.mlp(self.norm3(x))
        x = x + self.drop_path1(self.ls1(y))
        if self.cross is not None:
            y = self.cross(self.norm2(x), context, cache=cache, layer=layer)
            x = x + self.drop_path2(self.ls2(y))
        return x + self.drop_path3(self.ls3(self.mlp(self.norm3(x))))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of any module, by module type: weight decay on the weight
    matrices of linear maps (``nn.Linear`` weights, convolution kernels, the input
    projections of ``nn.MultiheadAttention``); none on anything else: biases, norms,
    LayerScale, embeddings (``nn.Embedding`` and learned ``nn.Parameter`` tokens,
    positions and queries). Decaying those pulls learned positions / identities toward
    zero for no regularising gain.

    The one weight-decay rule of boldgpt (the training engine uses it for every
    model). Frozen parameters (``requires_grad=False``) are left out; a parameter
    shared by several modules counts once.

    Returns ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest,
    "weight_decay": 0.0}]``.
    """
    decay_ids = set()
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            decay_ids.add(id(m.weight))
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(m, name, None) is not None:
                    decay_ids.add(id(getattr(m, name)))
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]

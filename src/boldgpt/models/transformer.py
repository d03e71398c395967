"""The transformer backbone shared by every boldgpt model, and the base class of the
models that read patches of a map through it (IGPT, BEiT).

Token sequence (P = 1 + R prefix tokens, N patch tokens)::

    [subject token, register_1 .. register_R, patch_1 .. patch_N]

- subject token = learned group token (+ the subject's embedding when subject
  embeddings are on; during training it is dropped for a whole sample with
  probability ``subject_dropout`` so the model also learns the group prior);
- patch token = ``patch_embed(patch) + pos_embed[slot]``, where ``slot`` indexes the
  model's fixed patch order (``patchify.patch_indices``); a masked patch's embedding
  is replaced by the mask token (BEiT);
- next-position queries (shuffled-order GPT): the token at the last prefix position
  and every patch token additionally carry ``next_pos_query[slot to predict next]``
  (the end query after the last patch), so the output at a position predicts
  whichever slot the order puts next.

Registers sit right after the subject token: in a causal model they see only the
subject token and earlier registers, and every patch can read them, so no position
ever sees a later patch. ``register_layout="legacy_global"`` reproduces the seed
project's layout instead (registers appended at the end, attending to and attended by
every position); it LEAKS later patches into earlier outputs of a causal model and
exists only to run that project's checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boldgpt.errors import ConfigError, DataError
from boldgpt.models.layers import LN_EPS, Block, KVCache, param_groups
from boldgpt.patching import MaskedPatchify
from boldgpt.tokenizer import KMeansTokenizer

REGISTER_LAYOUTS = ("prefix", "legacy_global")
INIT_STD = 0.02


def _trunc_normal_(t: torch.Tensor, std: float = INIT_STD) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


POS_INIT = ("sincos", "random")
SINCOS_SCALE = 0.5


def sincos_embedding(coords: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """2-D sine-cosine features (N, dim) of positions ``coords`` (N, 2) (row, column, in
    patch units): dim // 4 frequencies from 1 down to 1 / max_period radians per patch;
    [sin, cos] of rows, then of columns (zero-padded to ``dim``)."""
    k = dim // 4
    freqs = max_period ** (-torch.arange(k, dtype=torch.float64) / max(k, 1))
    rows = coords[:, :1].double() * freqs
    cols = coords[:, 1:2].double() * freqs
    emb = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=1)
    return F.pad(emb, (0, dim - 4 * k)).float()


def config_kwargs(init_locals: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able constructor arguments of a model, from ``locals()`` taken at the
    top of its ``__init__``. The mask and stored patch order are left out: they travel
    with the weights (``patchify.mask``, ``patchify.patch_indices``)."""
    kwargs = {
        k: v
        for k, v in init_locals.items()
        if k not in ("self", "mask", "patch_indices", "__class__")
    }
    if not isinstance(kwargs.get("ordering", ""), str):
        kwargs["ordering"] = "priority"  # a priority map; the order itself is stored
    for k, v in kwargs.items():
        if isinstance(v, tuple):
            kwargs[k] = list(v)
    return kwargs


BACKBONE_ARGS = (
    "embed_dim", "depth", "num_heads", "mlp_ratio", "num_subjects", "subject_embed",
    "subject_dropout", "num_registers", "context_dim", "qkv_bias", "qk_norm", "layer_scale",
    "drop_path", "drop", "attn_drop",
)  # fmt: skip
"""Constructor arguments that models pass through to :class:`Transformer` unchanged."""


def backbone_kwargs(init_locals: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """The :class:`Transformer` arguments among a model's constructor ``locals()``,
    plus the ones the model ``fixed`` itself (e.g. ``causal``, ``mask_token``)."""
    return {**{k: init_locals[k] for k in BACKBONE_ARGS}, **fixed}


class Transformer(nn.Module):
    """Pre-norm ViT over [subject token, registers, patch tokens].

    Args:
        num_patches: N, patch slots (the length of the model's fixed order).
        in_features: values per patch.
        embed_dim, depth, num_heads, mlp_ratio: width D, blocks, heads, MLP width / D.
        num_subjects: rows of the subject embedding table.
        subject_embed: add a per-subject embedding to the group token.
        subject_dropout: training-time probability of zeroing a sample's subject
            embedding (not rescaled).
        next_pos_query: learned query of the slot to predict next (plus an end query);
            needed to decode in any order.
        num_registers: R extra learned tokens.
        register_layout: ``prefix`` (safe, see module docstring) or ``legacy_global``.
        context_dim: width of a context sequence to cross-attend to (None: no
            cross-attention).
        causal: causal (GPT) or bidirectional (BEiT / encoder) attention.
        mask_token: learn a token that replaces masked patch embeddings.
        qkv_bias, qk_norm, layer_scale, drop_path, drop, attn_drop: block options
            (``layer_scale``: LayerScale init value, None = off; ``drop_path``:
            stochastic depth rate of the last block, linear from 0).
    """

    def __init__(
        self,
        num_patches: int,
        in_features: int,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        *,
        num_subjects: int = 8,
        subject_embed: bool = True,
        subject_dropout: float = 0.0,
        next_pos_query: bool = True,
        num_registers: int = 0,
        register_layout: str = "prefix",
        context_dim: int | None = None,
        causal: bool = True,
        mask_token: bool = False,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        slot_coords: torch.Tensor | None = None,
    ):
        super().__init__()
        if register_layout not in REGISTER_LAYOUTS:
            raise ConfigError(
                f"register_layout must be one of {REGISTER_LAYOUTS}; got {register_layout!r}"
            )
        if subject_embed and num_subjects < 1:
            raise ConfigError(f"num_subjects must be >= 1 with subject_embed; got {num_subjects}")
        if not 0.0 <= subject_dropout <= 1.0:
            raise ConfigError(f"subject_dropout must be in [0, 1]; got {subject_dropout}")
        D = embed_dim
        self.num_patches = num_patches
        self.embed_dim = D
        self.num_heads = num_heads
        self.num_subjects = num_subjects
        self.subject_dropout = subject_dropout
        self.num_registers = num_registers
        self.register_layout = register_layout
        self.causal = causal

        self.patch_embed = nn.Linear(in_features, D)
        self.cross_embed = nn.Linear(context_dim, D) if context_dim else None
        self.group_token = nn.Parameter(torch.zeros(1, 1, D))
        self.sub_embed = nn.Parameter(torch.zeros(num_subjects, D)) if subject_embed else None
        self.pos_embed = nn.Parameter(torch.zeros(num_patches, D))
        self.next_pos_query = nn.Parameter(torch.zeros(num_patches, D)) if next_pos_query else None
        self.eos_query = nn.Parameter(torch.zeros(1, D)) if next_pos_query else None
        self.reg_embed = nn.Parameter(torch.zeros(num_registers, D)) if num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(D)) if mask_token else None

        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(
            Block(
                D,
                num_heads,
                mlp_ratio,
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rate,
                layer_scale=layer_scale,
                cross_attn=context_dim is not None and context_dim > 0,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(D, eps=LN_EPS)
        self.init_weights(slot_coords)

    def init_weights(self, slot_coords: torch.Tensor | None = None) -> None:
        """Truncated normal (std 0.02) for linear weights and learned tokens, zero
        biases and group token, unit LayerNorm (timm / BEiT convention).

        With ``slot_coords`` (N, 2), the slot position embeddings and next-position
        queries start as 2-D sine-cosine features of the slots' places (still
        learned): nearby slots then look alike from the first step, which a
        shuffled-order model otherwise has to discover from scratch (in a CPU test,
        in-mask MSE after 500 steps 0.79 vs 0.97 from a random start).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.group_token)
        learned = (self.sub_embed, self.pos_embed, self.next_pos_query, self.eos_query)
        for p in (*learned, self.reg_embed, self.mask_token):
            if p is not None:
                _trunc_normal_(p)
        if slot_coords is not None:
            if slot_coords.shape != (self.num_patches, 2):
                raise ValueError(
                    f"slot_coords must be ({self.num_patches}, 2); got {tuple(slot_coords.shape)}"
                )
            emb = SINCOS_SCALE * sincos_embedding(slot_coords, self.embed_dim)
            with torch.no_grad():
                for p in (self.pos_embed, self.next_pos_query):
                    if p is not None:
                        p.copy_(emb)

    @property
    def has_subject_embed(self) -> bool:
        return self.sub_embed is not None

    @property
    def has_next_pos_query(self) -> bool:
        return self.next_pos_query is not None

    @property
    def num_prefix(self) -> int:
        """Tokens before the first patch: subject token (+ registers in the prefix
        layout)."""
        return 1 + (self.num_registers if self.register_layout == "prefix" else 0)

    @property
    def supports_cache(self) -> bool:
        """Whether incremental decoding with a KV cache is valid (not with legacy
        global registers, which attend to every later token)."""
        return self.reg_embed is None or self.register_layout == "prefix"

    def prefix(self, subject_id: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Subject token and prefix registers (B, P, D). ``subject_id`` (B,) int64, or
        None for the group token alone (the population prior)."""
        token = self.group_token.expand(batch_size, 1, -1)
        if self.sub_embed is not None and subject_id is not None:
            emb = self.sub_embed[subject_id]
            if self.training and self.subject_dropout > 0:
                keep = torch.rand(batch_size, 1, device=emb.device) >= self.subject_dropout
                emb = emb * keep.to(emb.dtype)
            token = token + emb[:, None]
        if self.reg_embed is not None and self.register_layout == "prefix":
            token = torch.cat([token, self.reg_embed.expand(batch_size, -1, -1)], dim=1)
        return token

    def embed_patches(
        self,
        patches: torch.Tensor,
        slots: torch.Tensor,
        masked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch tokens (B, T, D) from patches (B, T, in_features) at slots (B, T) or
        (T,); where ``masked`` (B, T) is True the patch embedding is the mask token."""
        x = self.patch_embed(patches)
        if masked is not None:
            if self.mask_token is None:
                raise ValueError("this backbone has no mask token (mask_token=False)")
            x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        return x + self.pos_embed[slots]

    def queries(self, slots: torch.Tensor) -> torch.Tensor | None:
        """Next-position queries (B, T, D) of slots (B, T) in [0, N]; slot N is the end
        query. None for a backbone without queries."""
        if self.next_pos_query is None or self.eos_query is None:
            return None
        return torch.cat([self.next_pos_query, self.eos_query])[slots]

    def init_cache(self, max_len: int) -> KVCache:
        """An empty KV cache for sequences of up to ``max_len`` tokens (prefix
        included)."""
        if not self.supports_cache:
            raise ValueError(
                "legacy_global registers attend to every later token, so a KV cache "
                "cannot be used; decode with use_cache=False"
            )
        return KVCache(max_len)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Run the blocks and the final norm over tokens x (B, T, D) -> (B, T, D).

        ``context`` (B, M, context_dim) feeds cross-attention. With ``cache`` the
        tokens continue the cached sequence and are appended to it.
        """
        if self.cross_embed is not None:
            if cache is not None and cache.cross:
                context = None  # its keys / values are already in the cache
            elif context is None:
                raise ValueError("this model cross-attends to a context; pass context=(B, M, C)")
            else:
                context = self.cross_embed(context)
        elif context is not None:
            raise ValueError("this model has no cross-attention (context_dim=None); got a context")

        T = x.shape[1]
        attn_mask = None
        legacy = self.reg_embed is not None and self.register_layout == "legacy_global"
        if legacy:
            if cache is not None:
                raise ValueError("legacy_global registers cannot be used with a KV cache")
            R = self.num_registers
            x = torch.cat([x, self.reg_embed.expand(x.shape[0], -1, -1)], dim=1)
            if self.causal:
                attn_mask = torch.ones(T + R, T + R, dtype=torch.bool, device=x.device).tril_()
                attn_mask[:, T:] = True
                attn_mask[T:, :] = True
        for i, block in enumerate(self.blocks):
            x = block(x, context, causal=self.causal, attn_mask=attn_mask, cache=cache, layer=i)
        if cache is not None:
            cache.advance(T)
        return self.norm(x[:, :T] if legacy else x)


@dataclass
class ModelOutput:
    """What a model's forward returns.

    Attributes:
        loss: scalar training loss.
        output: (B, N, C) predictions, C = patch values (continuous) or vocabulary
            size (token logits); IGPT: in sequence order (``output[:, t]`` predicts
            slot ``order[:, t]``); BEiT: in slot order.
        target: what ``output`` is scored against: patches (B, N, P) or token ids
            (B, N), aligned with ``output``.
        patches: (B, N, P) the input's patches in slot (fixed) order.
        order: (B, N) slot at each sequence step (IGPT); None for BEiT.
        mask: (B, N) bool, True where a patch was masked (BEiT); None for IGPT.
        metrics: extra detached scalars (e.g. token accuracy).
    """

    loss: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor
    patches: torch.Tensor
    order: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class PatchModel(nn.Module):
    """Base of the models that read a map as patches: patchify, optional tokenizer,
    backbone and head, plus the input checks and helpers they share.

    Subclasses set ``causal`` and implement ``forward(batch) -> ModelOutput``.
    """

    causal: bool = False

    def __init__(
        self,
        mask: np.ndarray | torch.Tensor,
        *,
        patch_size: int,
        channels: int,
        ordering: str | np.ndarray,
        patch_indices: Any,
        categorical: bool,
        vocab_size: int,
        input_key: str,
        head_drop: float,
        pos_init: str,
        backbone: dict[str, Any],
    ):
        super().__init__()
        if pos_init not in POS_INIT:
            raise ConfigError(f"pos_init must be one of {POS_INIT}; got {pos_init!r}")
        self.patchify = MaskedPatchify(mask, patch_size, channels, ordering, patch_indices)
        self.categorical = categorical
        self.tokenizer = KMeansTokenizer(vocab_size, self.patchify.dim) if categorical else None
        self.input_key = input_key
        self.backbone = Transformer(
            self.patchify.num_patches,
            self.patchify.dim,
            causal=self.causal,
            slot_coords=self.slot_coords() if pos_init == "sincos" else None,
            **backbone,
        )
        if not categorical:
            # Covariance (P, P) of the residual of a continuous prediction, estimated
            # after training (boldgpt.generate.fit_residual_covariance): with the
            # predicted mean it gives the Gaussian predictive distribution that MSE
            # training implies, so samples get realistic within-patch texture.
            # Zeros until fitted.
            self.register_buffer("residual_cov", torch.zeros(self.patchify.dim, self.patchify.dim))
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(
            self.backbone.embed_dim, vocab_size if categorical else self.patchify.dim
        )
        _trunc_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.config: dict[str, Any] = {"name": type(self).__name__.lower(), "kwargs": {}}

    @property
    def num_patches(self) -> int:
        return self.patchify.num_patches

    def slot_coords(self) -> torch.Tensor:
        """(N, 2) (row, column) of every slot's patch on the patch grid."""
        cols = self.patchify.grid[1]
        idx = self.patchify.patch_indices
        return torch.stack([idx // cols, idx % cols], dim=1).float()

    @property
    def num_subjects(self) -> int:
        """Subjects the model has embeddings for (0 without subject embeddings)."""
        return self.backbone.num_subjects if self.backbone.has_subject_embed else 0

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay linear weights only (see :func:`layers.param_groups`)."""
        return param_groups(self, weight_decay)

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Head over backbone outputs (B, T, D) -> (B, T, C)."""
        return self.head(self.head_drop(hidden))

    def output_to_patches(self, output: torch.Tensor) -> torch.Tensor:
        """Point predictions as patches (B, T, P): the predicted values, or the
        centroid of the most likely token."""
        if self.tokenizer is not None:
            return self.tokenizer.decode(output.argmax(dim=-1))
        return output

    def encode_targets(self, patches: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) of patches (B, T, P) for a categorical model."""
        if self.tokenizer is None:
            raise ValueError("encode_targets needs a categorical model")
        if not self.tokenizer.is_fitted:
            raise ConfigError(
                "this categorical model's tokenizer has no vocabulary yet: fit it with "
                "model.tokenizer.fit(patches) (or `boldgpt fit-vocab`) before training"
            )
        return self.tokenizer.encode(patches)

    def masked_mse(
        self, output: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error over in-mask values only: sum(m (y - t)^2) / sum(m), in
        float32 (a bf16 sum would round the count of ~10^5 in-mask values)."""
        m = pixel_mask.float()
        return ((output.float() - target.float()).square() * m).sum() / m.sum().clamp_min(1.0)

    def check_inputs(
        self, batch: Mapping[str, torch.Tensor], require_subject: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate a prepared batch; return (maps, subject_id or None).

        Raises DataError naming the key and what was expected for: a missing key,
        uint8 or non-float maps, a wrong shape, NaN/Inf, bad or out-of-range subject
        ids.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"a model takes a batch dict with key {self.input_key!r}; got {type(batch)}"
            )
        if self.input_key not in batch:
            raise DataError(f"batch has no {self.input_key!r}; keys: {sorted(batch)}")
        x = batch[self.input_key]
        if not torch.is_tensor(x):
            raise DataError(f"batch[{self.input_key!r}] must be a tensor; got {type(x)}")
        batch_size = self.check_maps(x)
        return x, self.check_subject(batch.get("subject_id"), batch_size, require_subject)

    def check_maps(self, x: torch.Tensor) -> int:
        """Check maps (B, H, W) or (B, C, H, W) against the model's mask; return B."""
        p = self.patchify
        key = self.input_key
        if x.dtype == torch.uint8:
            raise DataError(
                f"batch[{key!r}] is uint8: models take prepared float32 values "
                "(boldgpt.data.transforms.prepare_batch, or schema.dequantize for activity)"
            )
        if not x.is_floating_point():
            raise DataError(f"batch[{key!r}] must be floating point; got {x.dtype}")
        expected = (p.height, p.width) if p.channels == 1 else (p.channels, p.height, p.width)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise DataError(
                f"batch[{key!r}] must have shape (B, {', '.join(map(str, expected))}); "
                f"got {tuple(x.shape)}"
            )
        if not torch.compiler.is_compiling() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"batch[{key!r}] contains {bad} NaN/Inf values")
        return x.shape[0]

    def check_subject(
        self, subject_id: Any, batch_size: int, require: bool = True
    ) -> torch.Tensor | None:
        """Subject ids as a (B,) int64 tensor on the model's device (None when the
        model has no subject embeddings, or when missing and not ``require``)."""
        if not self.backbone.has_subject_embed:
            return None
        if subject_id is None:
            if require:
                raise DataError("batch has no 'subject_id' (B,) int64; this model needs it")
            return None
        sid = torch.as_tensor(subject_id, device=self.device)
        if sid.ndim == 0:
            sid = sid.expand(batch_size)
        if sid.shape != (batch_size,) or sid.is_floating_point() or sid.dtype == torch.bool:
            raise DataError(
                f"subject_id must be integers of shape ({batch_size},); "
                f"got {sid.dtype} {tuple(sid.shape)}"
            )
        if not torch.compiler.is_compiling():
            lo, hi = int(sid.min()), int(sid.max())
            if lo < 0 or hi >= self.num_subjects:
                raise DataError(
                    f"subject_id out of range: got values in [{lo}, {hi}]; this model has "
                    f"embeddings for subjects 0..{self.num_subjects - 1}"
                )
        return sid.long()

    def prediction_maps(self, out: ModelOutput) -> torch.Tensor:
        """Maps (B, H, W) (or (B, C, H, W)) of a forward's point predictions, each
        patch in its place."""
        pred = self.output_to_patches(out.output.detach())
        if out.order is not None:
            pred = torch.empty_like(pred).scatter_(1, out.order[..., None].expand_as(pred), pred)
        return self.patchify.inverse(pred)

    def estimate_flops(self, context_len: int = 0) -> int:
        """Forward FLOPs for one sample over the full sequence: 2 x linear weights x
        tokens + attention (Q K^T and A V counted in full); with ``context_len`` > 0,
        the cross-attention over a context of that length too. A training step costs
        about 3x this."""
        b = self.backbone
        T = b.num_prefix + self.num_patches + (b.num_registers if b.num_prefix == 1 else 0)
        per_token, per_context = 0, 0
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                # the context's key/value projections run over the context, not the map
                on_context = name.endswith(".cross.kv") or name.endswith("cross_embed")
                if on_context:
                    per_context += m.weight.numel()
                else:
                    per_token += m.weight.numel()
        depth, D = len(b.blocks), b.embed_dim
        flops = 2 * per_token * T + 4 * depth * T * T * D
        if b.cross_embed is not None and context_len:
            flops += 2 * per_context * context_len + 4 * depth * T * context_len * D
        return int(flops)

    def sample(
        self,
        batch_size: int,
        subject_id: int | torch.Tensor | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Draw ``batch_size`` new maps (B, H, W) (images: (B, C, H, W)).

        ``subject_id``: an int or (B,) ids, or None for the group prior. Continuous
        models without ``noise`` are deterministic (``noise="residual"`` draws from
        the fitted predictive distribution). Other options (order,
        temperature, top_k, noise, noise_scale, context, generator, num_steps) are those of
        :func:`boldgpt.generate.sample`.
        """
        from boldgpt.generate import sample

        return sample(self, batch_size, subject_id=subject_id, use_cache=use_cache, **kwargs)

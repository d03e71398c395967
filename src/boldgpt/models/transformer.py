"""The transformer backbone shared by every boldgpt model, and the base class of the
models that read patches of a map through it (IGPT, BEiT). Both are built from one
config (:class:`~boldgpt.models.config.PatchModelConfig` or a family's subclass).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boldgpt.errors import ConfigError, DataError
from boldgpt.models.checks import check_finite, check_subject_ids, value_checks_enabled
from boldgpt.models.config import PatchModelConfig
from boldgpt.models.layers import LN_EPS, Block, KVCache
from boldgpt.patching import MaskedPatchify
from boldgpt.tokenizer import KMeansTokenizer

REGISTER_LAYOUTS = ("prefix", "legacy_global")
INIT_STD = 0.02


def _trunc_normal_(t: torch.Tensor, std: float = INIT_STD) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


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


class Transformer(nn.Module):
    """Pre-norm ViT over [subject token, registers, patch tokens].

    Args:
        num_patches: N, patch slots (the length of the model's fixed order).
        in_features: values per patch.
        config: the model's config; the backbone reads ``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``, the subject, register, cross-attention and
            block options (see :class:`~boldgpt.models.config.PatchModelConfig`).
        causal: causal (GPT) or bidirectional (BEiT / encoder) attention.
        next_pos_query: learned query of the slot to predict next (plus an end query);
            needed to decode in any order.
        mask_token: learn a token that replaces masked patch embeddings.
        register_layout: ``prefix`` (safe, see module docstring) or ``legacy_global``.
        slot_coords: (N, 2) patch places for the sine-cosine init (None: random).
    """

    def __init__(
        self,
        num_patches: int,
        in_features: int,
        config: PatchModelConfig,
        *,
        causal: bool = True,
        next_pos_query: bool = True,
        mask_token: bool = False,
        register_layout: str = "prefix",
        slot_coords: torch.Tensor | None = None,
    ):
        super().__init__()
        if register_layout not in REGISTER_LAYOUTS:
            raise ConfigError(
                f"register_layout must be one of {REGISTER_LAYOUTS}; got {register_layout!r}"
            )
        c = config
        D = c.embed_dim
        self.num_patches = num_patches
        self.embed_dim = D
        self.num_heads = c.num_heads
        self.num_subjects = c.num_subjects
        self.subject_dropout = c.subject_dropout
        self.num_registers = c.num_registers
        self.register_layout = register_layout
        self.causal = causal

        self.patch_embed = nn.Linear(in_features, D)
        self.cross_embed = nn.Linear(c.context_dim, D) if c.context_dim else None
        self.group_token = nn.Parameter(torch.zeros(1, 1, D))
        self.sub_embed = nn.Parameter(torch.zeros(c.num_subjects, D)) if c.subject_embed else None
        self.pos_embed = nn.Parameter(torch.zeros(num_patches, D))
        self.next_pos_query = nn.Parameter(torch.zeros(num_patches, D)) if next_pos_query else None
        self.eos_query = nn.Parameter(torch.zeros(1, D)) if next_pos_query else None
        R = c.num_registers
        self.reg_embed = nn.Parameter(torch.zeros(R, D)) if R else None
        self.mask_token = nn.Parameter(torch.zeros(D)) if mask_token else None

        rates = torch.linspace(0, c.drop_path, c.depth).tolist() if c.depth else []
        self.blocks = nn.ModuleList(
            Block(
                D,
                c.num_heads,
                c.mlp_ratio,
                qkv_bias=c.qkv_bias,
                qk_norm=c.qk_norm,
                drop=c.drop,
                attn_drop=c.attn_drop,
                drop_path=rate,
                layer_scale=c.layer_scale,
                cross_attn=bool(c.context_dim),
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
        # (no concatenated table: decoding calls this once per token)
        last = self.num_patches - 1
        query = self.next_pos_query[slots.clamp(max=last)]
        return torch.where((slots > last)[..., None], self.eos_query, query)

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
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the blocks and the final norm over tokens x (B, T, D) -> (B, T, D).

        ``context`` (B, M, context_dim) feeds cross-attention. With ``cache`` the
        tokens continue the cached sequence and are appended to it. ``attn_mask``
        (T, L) or (B, 1, T, L) bool (True = may attend; L = cached + new tokens)
        replaces the causal / bidirectional pattern (e.g. one-pass queries that see
        a prompt and themselves only).
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
        legacy = self.reg_embed is not None and self.register_layout == "legacy_global"
        if legacy:
            if attn_mask is not None:
                raise ValueError("legacy_global registers cannot take an attention mask")
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

    Built as ``Model(config, mask=None, patch_indices=None)``:

    - ``config``: the architecture, an instance of the class's ``config_class``
      (:mod:`boldgpt.models.config`); kept as ``model.config``;
    - ``mask``: bool (H, W) pixels with signal: the cortex mask of the data for a
      model over maps (required: a ConfigError without it); None for an image model
      (the full ``image_size`` square);
    - ``patch_indices``: a stored fixed patch order (raster indices of the kept
      patches, see :class:`~boldgpt.patching.MaskedPatchify`); replaces
      ``config.ordering``.

    The mask and the order are buffers (``patchify.mask``,
    ``patchify.patch_indices``): they travel with the weights, not the config.
    Subclasses set ``causal`` and ``config_class``, may override
    :meth:`backbone_options`, and implement ``forward(batch) -> ModelOutput``.
    """

    causal: bool = False
    config_class: ClassVar[type[PatchModelConfig]] = PatchModelConfig

    def __init__(
        self,
        config: PatchModelConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}; "
                f"got {type(config).__name__}"
            )
        self.config = config
        mask = self._check_mask(config, mask)
        self.patchify = MaskedPatchify(
            mask, config.patch_size, config.channels, config.ordering, patch_indices
        )
        self.categorical = config.categorical
        dim = self.patchify.dim
        self.tokenizer = KMeansTokenizer(config.vocab_size, dim) if config.categorical else None
        self.input_key = config.input_key
        self.backbone = Transformer(
            self.patchify.num_patches,
            dim,
            config,
            causal=self.causal,
            slot_coords=self.slot_coords() if config.pos_init == "sincos" else None,
            **self.backbone_options(config),
        )
        if not config.categorical:
            # Covariance (P, P) of the residual of a continuous prediction, estimated
            # after training (boldgpt.generate.fit_residual_covariance): with the
            # predicted mean it gives the Gaussian predictive distribution that MSE
            # training implies, so samples get realistic within-patch texture.
            # Zeros until fitted.
            self.register_buffer("residual_cov", torch.zeros(dim, dim))
        self.head_drop = nn.Dropout(config.head_drop)
        self.head = nn.Linear(config.embed_dim, config.vocab_size if config.categorical else dim)
        _trunc_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def backbone_options(cls, config: PatchModelConfig) -> dict[str, Any]:
        """The family's fixed :class:`Transformer` options (``next_pos_query``,
        ``mask_token``, ``register_layout``) for ``config``."""
        return {}

    @staticmethod
    def _check_mask(config: PatchModelConfig, mask: Any) -> Any:
        if config.is_image_model:
            size = (config.image_size, config.image_size)
            if mask is None:
                return torch.ones(size, dtype=torch.bool)
            if tuple(mask.shape) != size:
                raise ConfigError(
                    f"an image model with image_size={config.image_size} needs a {size} mask "
                    f"(or none); got {tuple(mask.shape)}"
                )
            return mask
        if mask is None:
            raise ConfigError(
                "a model over maps needs the cortex mask of its data: pass mask= (a bool "
                "(H, W) array; create_model also takes a .npy path or a name such as 'sim')"
            )
        return mask

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
        uint8 or non-float maps, a wrong shape, bad subject ids; and for NaN/Inf
        values and out-of-range subject ids where reading values costs no device sync
        (see :mod:`boldgpt.models.checks`).
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
        if value_checks_enabled(x):
            check_finite(x, key)
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
        sid = torch.as_tensor(subject_id)
        if sid.ndim == 0:
            sid = sid.expand(batch_size)
        if sid.shape != (batch_size,) or sid.is_floating_point() or sid.dtype == torch.bool:
            raise DataError(
                f"subject_id must be integers of shape ({batch_size},); "
                f"got {sid.dtype} {tuple(sid.shape)}"
            )
        # checked where it lies (before any transfer), so a host batch costs no sync
        if value_checks_enabled(sid):
            check_subject_ids(sid, self.num_subjects)
        return sid.to(self.device).long()

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
            # (a completion head runs a few times per sample, not per token: its
            # family counts it; a frozen image encoder runs once per picture)
            per_sample = name.startswith(("completion.", "image_encoder."))
            if isinstance(m, nn.Linear) and not per_sample:
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

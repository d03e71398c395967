"""image2bold: an encoding model, picture -> BOLD map.

A shuffled-order IGPT over the patches of the map whose blocks cross-attend to the
token features of a frozen image encoder (:mod:`boldgpt.models.encoders`)::

    images (B, 3, S, S) -> image encoder -> context (B, M, C)
    [subject token, patch pi_0, ..., patch pi_{N-1}] --causal self-attention,
        cross-attention to the context--> predictions of patches pi_0 .. pi_{N-1}

Training is IGPT's next-patch loss (in-mask MSE, or cross-entropy on tokens) in a
random order per sample, conditioned on the picture. Because every position carries
the next-position query of the slot it predicts, the first prediction after the
subject token is the model's estimate of any slot from the picture and the subject
alone; so the map of an unseen picture comes in ONE pass, every slot queried
directly (:func:`boldgpt.generate.complete` with ``method="query"`` and nothing
observed; ``image_queries`` trains that path on every slot, not only on the first
step of each order)::

    context = model.image_context(images)                         # (B, M, C)
    empty = torch.zeros(B, N, dtype=torch.bool)
    patches = complete(model, torch.zeros(B, N, P), empty, subject_id=sid,
                       context=context, method="query")            # (B, N, P)
    maps = model.patchify.inverse(patches)                         # (B, H, W)

``method="autoregressive"`` draws samples instead, and observed patches (a
subject's known part of the map) make a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from boldgpt.errors import ConfigError
from boldgpt.models.cbip import check_image_side
from boldgpt.models.config import IGPTConfig
from boldgpt.models.encoders import TargetCache, batch_images, build_image_encoder
from boldgpt.models.igpt import IGPT
from boldgpt.models.transformer import ModelOutput


@dataclass(frozen=True)
class Image2BOLDConfig(IGPTConfig):
    """An image2bold model (:class:`Image2BOLD`); ``image_size`` is required.
    ``context_dim`` may be left None: it becomes the image encoder's width.

    Adds:
        image_encoder: the frozen image encoder (see
            :func:`~boldgpt.models.encoders.build_image_encoder`).
        cache_targets: keep the encoder's token features per stimulus id (no random
            image augmentation then).
        image_queries: training only: per map, this many randomly drawn slots are
            also predicted from the picture and the subject alone (a one-pass query
            with nothing observed: exactly how the map of an unseen picture is
            predicted); their loss joins the next-patch loss (a mean over every
            prediction, Q image queries beside N next-patch ones). Without them only
            the first step of each order trains that path (1 prediction in N), and
            the encoding accuracy lags far behind a ridge on the same features. 0: off;
            at most the number of patches is used (a larger value: every slot).
    """

    image_encoder: str = "imagebeit_micro_patch16"
    cache_targets: bool = True
    image_queries: int = 0

    model_class: ClassVar[str] = "Image2BOLD"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_side(self)
        if not isinstance(self.image_queries, int) or self.image_queries < 0:
            raise ConfigError(
                f"model config image_queries={self.image_queries!r}: expected an integer >= 0"
            )
        if self.image_queries and (not self.shuffle or self.legacy_registers):
            raise ConfigError(
                f"model config image_queries={self.image_queries}: needs shuffle=True and "
                "no legacy registers (one-pass queries need next-position queries)"
            )

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """Maps, subject ids, the stimuli (B, 3, S, S) and their ``nsd_id`` (B,)."""
        return (*super().batch_keys, "image", "nsd_id")


class Image2BOLD(IGPT):
    """Shuffled-order IGPT over BOLD maps, cross-attending to a frozen image encoder.

    Built as ``Image2BOLD(config, mask, patch_indices=None)``; ``model.config`` has
    ``context_dim`` set to the encoder's width. ``image_encoder`` is frozen.
    """

    config_class = Image2BOLDConfig
    config: Image2BOLDConfig
    init_skip: ClassVar[tuple[str, ...]] = ("image_encoder.",)
    """State-dict prefixes :func:`~boldgpt.models.pretrained.init_from` never copies
    (everything of a pretrained boldGPT applies here, its head included)."""

    def __init__(
        self,
        config: Image2BOLDConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        encoder = build_image_encoder(config.image_encoder, config.image_size)
        if config.context_dim is None:
            config = config.replace(context_dim=encoder.embed_dim)
        elif config.context_dim != encoder.embed_dim:
            raise ConfigError(
                f"model config context_dim={config.context_dim}: the image encoder "
                f"{config.image_encoder!r} gives {encoder.embed_dim}-wide features "
                "(leave context_dim unset)"
            )
        super().__init__(config, mask, patch_indices)
        self.image_encoder = encoder
        self.target_cache = TargetCache() if config.cache_targets else None

    @property
    def image_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel the images must be normalised with."""
        return self.image_encoder.mean, self.image_encoder.std

    def image_context(
        self, images: torch.Tensor, nsd_id: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The cross-attention context (B, M, C) of images (B, 3, S, S): the frozen
        encoder's token features (from the per-stimulus cache when it is on and
        ``nsd_id`` (B,) is given)."""
        if self.target_cache is not None and nsd_id is not None:
            return self.target_cache(self.image_encoder, images, nsd_id).tokens
        return self.image_encoder(images).tokens

    def forward(  # type: ignore[override]
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        order: str | torch.Tensor | None = None,
        context: Any = None,
    ) -> ModelOutput:
        """Next-patch loss of a prepared batch, conditioned on its pictures.

        Args:
            batch: ``activity`` (B, H, W), ``subject_id`` (B,), ``image``
                (B, 3, S, S) normalised with :attr:`image_normalization`, and
                optionally ``nsd_id`` (B,) (the target cache).
            order: as in :meth:`IGPT.forward`.
            context: not accepted: the context is the batch's pictures.

        Returns:
            IGPT's :class:`ModelOutput` (``output`` (B, N, C) in sequence order).
        """
        if context is not None:
            raise ValueError("Image2BOLD computes its context from batch['image']")
        images = batch_images(batch, self.image_encoder, type(self).__name__).to(self.device)
        ctx = self.image_context(images, batch.get("nsd_id"))
        out = super().forward(batch, order=order, context=ctx)
        if not self.training or not self.config.image_queries:
            return out
        _, subject_id = self.check_inputs(batch)
        return with_empty_prompt_queries(self, out, subject_id, ctx, self.config.image_queries)

    def image_query_predictions(
        self, subject_id: torch.Tensor | None, context: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """Predictions (B, Q, C) of slots (B, Q) from the picture and the subject alone:
        the one-pass query with nothing observed (``generate.complete(method="query")``
        on an empty prompt), for training.

        Each query token is the last prefix token plus the slot's next-position query;
        it sees the prefix before it and itself (:meth:`IGPT.query_tokens`), and the
        context through cross-attention.
        """
        return empty_prompt_predictions(self, subject_id, context, slots)


def empty_prompt_predictions(
    model: IGPT, subject_id: torch.Tensor | None, context: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Predictions (B, Q, C) of slots (B, Q) by a shuffled IGPT from its prefix (subject
    token, registers) and its cross-attention context alone: the one-pass query of
    ``generate.complete(method="query")`` with nothing observed.

    Each query token is the last prefix token plus the slot's next-position query; it
    sees the prefix before it and itself (:meth:`IGPT.query_tokens`).
    """
    b = model.backbone
    B, R, Q = slots.shape[0], b.num_prefix, slots.shape[1]
    prefix = b.prefix(subject_id, B)
    last = torch.full((B,), R - 1, dtype=torch.long, device=slots.device)
    x, query_mask = model.query_tokens(prefix, last, slots)
    causal = torch.ones(R, R, dtype=torch.bool, device=slots.device).tril_()
    prefix_mask = F.pad(causal, (0, Q)).expand(B, R, R + Q)  # the prefix never sees queries
    attn_mask = torch.cat([prefix_mask, query_mask], dim=1)
    h = b(torch.cat([prefix, x], dim=1), context, attn_mask=attn_mask[:, None])
    return model.predict(h[:, R:])


def with_empty_prompt_queries(
    model: IGPT,
    out: ModelOutput,
    subject_id: torch.Tensor | None,
    context: torch.Tensor,
    num_queries: int,
) -> ModelOutput:
    """``out`` (a training forward of ``model``) with ``num_queries`` random slots per
    sample (at most all) also predicted from the empty prompt
    (:func:`empty_prompt_predictions`); their loss (metric ``image_query_loss``) joins
    ``out.loss`` as one mean over every prediction: N next-patch ones (plus the
    model's own ``query_tokens``) and Q from the empty prompt, weighted by count."""
    patches = out.patches
    B, N = patches.shape[:2]
    Q = min(num_queries, N)
    slots = torch.rand(B, N, device=patches.device).argsort(dim=1)[:, :Q]
    pred = empty_prompt_predictions(model, subject_id, context, slots)
    target = patches.gather(1, slots[..., None].expand(-1, -1, patches.shape[2]))
    if model.tokenizer is not None:
        tokens = model.encode_targets(target).flatten()
        loss_q = F.cross_entropy(pred.flatten(0, 1).float(), tokens)
    else:
        loss_q = model.masked_mse(pred, target, model.patchify.patch_mask[slots])
    n_main = N + min(model.config.query_tokens, N - 1)
    loss = (out.loss * n_main + loss_q * Q) / (n_main + Q)
    return replace(out, loss=loss, metrics={**out.metrics, "image_query_loss": loss_q.detach()})

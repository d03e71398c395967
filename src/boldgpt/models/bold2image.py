"""bold2image: a reconstruction model, BOLD map -> picture.

A bidirectional transformer encodes the map (the shared backbone with
``causal=False``, as in CBIP); its output sequence is the context that a
shuffled-order IGPT over the patches of a small RGB image (``decoder``)
cross-attends to::

    maps (B, H, W) -> patches (B, N, P) -> [subject, registers, patches] -> backbone
        -> context (B, R + 1 + N, D)
    [image patch pi_0, ..., pi_{M-1}] --causal self-attention, cross-attention to the
        context--> predictions of image patches (in-image MSE)

Both parts train together on the next-patch loss of the picture. Reconstructing the
picture of a map (:mod:`boldgpt.generate` takes the decoder and the context)::

    context = model.bold_context(maps, subject_id)                   # (B, L, D)
    d = model.decoder
    empty = torch.zeros(B, d.num_patches, dtype=torch.bool)
    patches = complete(d, torch.zeros(B, d.num_patches, d.patchify.dim), empty,
                       context=context, method="query")              # one pass: the
    images = d.patchify.inverse(patches)                             # expected image

``method="autoregressive"`` (or :func:`~boldgpt.generate.sample` with the context)
draws samples instead. The decoder has the encoder's width, depth and heads, with
patches of ``image_patch_size`` pixels in raster order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from boldgpt.errors import ConfigError, DataError
from boldgpt.models.cbip import check_image_side
from boldgpt.models.config import IGPTConfig, PatchModelConfig
from boldgpt.models.igpt import IGPT
from boldgpt.models.image2bold import with_empty_prompt_queries
from boldgpt.models.transformer import ModelOutput, PatchModel

SHARED = (
    "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "layer_scale",
    "drop_path", "drop", "attn_drop", "head_drop", "pos_init",
)  # fmt: skip
"""Fields the image decoder takes from the model's config."""


@dataclass(frozen=True)
class Bold2ImageConfig(PatchModelConfig):
    """A bold2image model (:class:`Bold2Image`); the base fields describe the BOLD
    encoder (and, for ``SHARED``, the decoder); ``image_size`` (required) is the side
    of the reconstructed pictures.

    Adds:
        image_patch_size: patch side of the image decoder (a divisor of image_size).
        image_queries: training only: per picture, this many random image patches
            (at most all) are also predicted from the map alone (the decoder's one-pass
            query with nothing observed, which is how a picture is reconstructed);
            their loss joins the next-patch loss (a mean over every prediction).
            Without them only the first step of each order trains that path. 0: off.
    """

    image_patch_size: int = 8
    image_queries: int = 0

    model_class: ClassVar[str] = "Bold2Image"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_side(self)
        if self.categorical:
            raise ConfigError("bold2image predicts pixel values: categorical=False")
        if not isinstance(self.image_queries, int) or self.image_queries < 0:
            raise ConfigError(
                f"model config image_queries={self.image_queries!r}: expected an integer >= 0"
            )
        size, p = self.image_size, self.image_patch_size
        if not isinstance(p, int) or p < 1 or size % p:
            raise ConfigError(
                f"model config image_patch_size={p!r}: expected a divisor of image_size={size}"
            )

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """Maps, subject ids and the stimuli (B, 3, S, S)."""
        return (*super().batch_keys, "image")

    def decoder_config(self) -> IGPTConfig:
        """The image decoder: a shuffled IGPT over (3, S, S) images in raster order,
        cross-attending to the encoder's D-wide outputs."""
        return IGPTConfig(
            input_key="image",
            image_size=self.image_size,
            patch_size=self.image_patch_size,
            channels=3,
            ordering="raster",
            subject_embed=False,
            context_dim=self.embed_dim,
            shuffle=True,
            **{name: getattr(self, name) for name in SHARED},
        )


class Bold2Image(PatchModel):
    """Bidirectional BOLD encoder + image IGPT decoder (``decoder``) conditioned on it.

    Built as ``Bold2Image(config, mask, patch_indices=None)`` with the cortex mask
    (the model's ``patchify`` cuts the maps; ``decoder.patchify`` the images).
    """

    causal = False
    config_class = Bold2ImageConfig
    config: Bold2ImageConfig
    init_skip: ClassVar[tuple[str, ...]] = ("decoder.", "residual_cov")
    """State-dict prefixes :func:`~boldgpt.models.pretrained.init_from` never copies
    from a map model (it gives the encoder; the decoder is new)."""

    def __init__(
        self,
        config: Bold2ImageConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        super().__init__(config, mask, patch_indices)
        self.head = None  # the encoder's outputs are the context: no head of its own
        self.decoder = IGPT(config.decoder_config())

    @classmethod
    def backbone_options(cls, config: PatchModelConfig) -> dict[str, Any]:
        return {"next_pos_query": False, "mask_token": False}

    @property
    def device(self) -> torch.device:
        return self.backbone.pos_embed.device

    def bold_context(
        self, maps: torch.Tensor, subject_id: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The decoder's context (B, P + N, D): the encoder's outputs over the subject
        token, registers and patches of maps (B, H, W)."""
        b = self.backbone
        patches = self.patchify(maps)
        slots = torch.arange(patches.shape[1], device=patches.device)
        x = torch.cat([b.prefix(subject_id, patches.shape[0]), b.embed_patches(patches, slots)], 1)
        return b(x)

    def forward(
        self, batch: Mapping[str, torch.Tensor], *, order: str | torch.Tensor | None = None
    ) -> ModelOutput:
        """The decoder's next-patch loss on the batch's pictures, given their maps.

        Args:
            batch: ``activity`` (B, H, W), ``subject_id`` (B,) and ``image``
                (B, 3, S, S) (prepared images, the target).
            order: the decoder's order (see :meth:`IGPT.resolve_order`).

        Returns:
            The decoder's :class:`ModelOutput` (image patches; ``output`` (B, M, 3 p^2)
            in sequence order).
        """
        maps, subject_id = self.check_inputs(batch)
        if "image" not in batch:
            S = self.config.image_size
            raise DataError(
                f"Bold2Image needs batch['image'] (B, 3, {S}, {S}), the pictures to "
                f"reconstruct; the batch has {sorted(batch)} (cache the data with images: "
                f"image_size={S})"
            )
        context = self.bold_context(maps, subject_id)
        out = self.decoder({"image": batch["image"].to(self.device)}, order=order, context=context)
        if not self.training or not self.config.image_queries:
            return out
        return with_empty_prompt_queries(
            self.decoder, out, None, context, self.config.image_queries
        )

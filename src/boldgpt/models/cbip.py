"""CBIP: contrastive BOLD-image pretraining.

A bidirectional transformer over the patches of a map (the shared backbone with
``causal=False``, optional registers) is pooled and projected to the embedding
width of a frozen image encoder (:mod:`boldgpt.models.encoders`), and trained so
that a trial's BOLD embedding matches the embedding of the picture the subject saw
(:mod:`boldgpt.models.losses`: CLIP, SigLIP or cosine; trials of the same picture
are all positives)::

    maps (B, H, W) -> patches (B, N, P) -> [subject, registers, patches] -> backbone
        -> pool (B, D) -> head (B, C)  ~  image embedding (B, C) of images (B, 3, S, S)

The image embedding is the frozen encoder's pooled output (``image_embedding="pooled"``)
or a learned linear projection of its token grid (``"tokens"``, (B, M * C) -> (B, C)):
a mean over the tokens discards where things are in the picture, and retinotopic maps
depend on exactly that.

Patch dropping (``patch_drop`` > 0, training only): each sample keeps a random
subset of its patches, each still carrying the position embedding of its own slot,
so the model learns from partial maps and trains faster.

Frozen image targets are cached per stimulus (``cache_targets``; the batch's
``nsd_id``), so the image encoder runs once per picture. The cache assumes the
images are not randomly augmented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from boldgpt.errors import ConfigError
from boldgpt.models.config import PatchModelConfig
from boldgpt.models.encoders import (
    EncoderOutput,
    TargetCache,
    batch_images,
    build_image_encoder,
)
from boldgpt.models.losses import LOSSES, make_contrastive_loss
from boldgpt.models.transformer import ModelOutput, PatchModel

POOLING = ("mean", "subject")
IMAGE_EMBEDDINGS = ("pooled", "tokens")


@dataclass(frozen=True)
class CBIPConfig(PatchModelConfig):
    """A CBIP model (:class:`CBIP`); ``image_size`` is required (the size of the
    stimuli the image encoder takes).

    Adds:
        image_encoder: the frozen image encoder (see
            :func:`~boldgpt.models.encoders.build_image_encoder`): a model directory
            of a pretrained image model, an image model name (random weights), or
            ``timm:<name>``.
        loss: ``clip``, ``siglip`` or ``cosine``.
        pool: ``mean`` (of the patch outputs) or ``subject`` (the subject token's
            output).
        image_embedding: ``pooled`` (the frozen encoder's pooled output) or ``tokens``
            (its token features, flattened, through a learned linear projection to
            the encoder's width: keeps the picture's layout).
        patch_drop: fraction of each map's patches dropped per training sample.
        cache_targets: keep the image encoder's outputs per stimulus id (no random
            image augmentation then).
    """

    image_encoder: str = "imagebeit_micro_patch16"
    loss: str = "clip"
    pool: str = "mean"
    image_embedding: str = "pooled"
    patch_drop: float = 0.0
    cache_targets: bool = True

    model_class: ClassVar[str] = "CBIP"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_side(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"model config loss={self.loss!r}: expected one of {LOSSES}")
        if self.pool not in POOLING:
            raise ConfigError(f"model config pool={self.pool!r}: expected one of {POOLING}")
        if self.image_embedding not in IMAGE_EMBEDDINGS:
            raise ConfigError(
                f"model config image_embedding={self.image_embedding!r}: expected one of "
                f"{IMAGE_EMBEDDINGS}"
            )
        if not 0.0 <= self.patch_drop < 1.0:
            raise ConfigError(f"model config patch_drop={self.patch_drop!r}: expected [0, 1)")

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """Maps, subject ids, the stimuli (B, 3, S, S) and their ``nsd_id`` (B,)."""
        return (*super().batch_keys, "image", "nsd_id")


def check_image_side(config: PatchModelConfig) -> None:
    """ConfigError unless a model over maps that also reads images reads maps and has
    an ``image_size`` (shared by the CBIP and image2bold configs)."""
    if config.is_image_model:
        raise ConfigError(
            f"model config input_key={config.input_key!r}: a {config.model_class} model reads "
            "BOLD maps ('activity') beside the images"
        )
    if not isinstance(config.image_size, int) or config.image_size < 1:
        raise ConfigError(
            f"model config image_size={config.image_size!r}: expected the side (px) of the "
            f"images the image encoder takes"
        )


class CBIP(PatchModel):
    """Bidirectional BOLD encoder trained against a frozen image encoder.

    Built as ``CBIP(config, mask, patch_indices=None)``. ``head`` is the projection
    (D -> C, C = the image encoder's width); ``image_encoder`` is frozen;
    ``image_head`` (M * C -> C, ``image_embedding="tokens"`` only) projects its token
    grid; the loss module (``loss_fn``) holds the learned temperature / scale and bias.
    """

    causal = False
    config_class = CBIPConfig
    config: CBIPConfig
    init_skip: ClassVar[tuple[str, ...]] = (
        "head.",
        "image_head.",
        "residual_cov",
        "image_encoder.",
        "loss_fn.",
    )
    """State-dict prefixes :func:`~boldgpt.models.pretrained.init_from` never copies
    from a map model: the projection head (and a patch model's residual covariance)
    belong to another task."""

    def __init__(
        self,
        config: CBIPConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        if config.categorical:
            raise ConfigError("a CBIP model predicts embeddings, not tokens: categorical=False")
        super().__init__(config, mask, patch_indices)
        self.image_encoder = build_image_encoder(config.image_encoder, config.image_size)
        self.head = nn.Linear(config.embed_dim, self.image_encoder.embed_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.head.bias)
        self.image_head: nn.Linear | None = None
        if config.image_embedding == "tokens":
            enc = self.image_encoder
            self.image_head = nn.Linear(enc.num_tokens * enc.embed_dim, enc.embed_dim)
            nn.init.trunc_normal_(self.image_head.weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(self.image_head.bias)
        self.loss_fn = make_contrastive_loss(config.loss)
        self.target_cache = TargetCache() if config.cache_targets else None

    @classmethod
    def backbone_options(cls, config: PatchModelConfig) -> dict[str, Any]:
        return {"next_pos_query": False, "mask_token": False}

    @property
    def image_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel the images must be normalised with."""
        return self.image_encoder.mean, self.image_encoder.std

    # ---- the two sides ---------------------------------------------------------------

    def kept_slots(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, K) the slots each sample keeps under patch dropping, in increasing
        order: K = N - round(patch_drop * N) (at least 1), a uniformly random subset
        per sample."""
        N = self.num_patches
        K = max(1, N - round(self.config.patch_drop * N))
        keys = torch.rand(batch_size, N, generator=generator, device=self.device)
        return keys.argsort(dim=1)[:, :K].sort(dim=1).values

    def tokens(
        self,
        patches: torch.Tensor,
        subject_id: torch.Tensor | None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's input (B, P + K, D): prefix, then the patches at ``slots``
        (B, K) (default: every slot), each with its own slot's position embedding.
        ``patches`` (B, N, P) in slot order."""
        b = self.backbone
        B, N = patches.shape[:2]
        if slots is None:
            slots = torch.arange(N, device=patches.device).expand(B, -1)
        kept = patches.gather(1, slots[..., None].expand(-1, -1, patches.shape[-1]))
        return torch.cat([b.prefix(subject_id, B), b.embed_patches(kept, slots)], dim=1)

    def encode_bold(
        self,
        maps: torch.Tensor,
        subject_id: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BOLD embeddings (B, C) of maps (B, H, W), from the patches at ``slots``
        (B, K) only when given (default: all)."""
        return self.embed_bold_patches(self.patchify(maps), subject_id, slots)

    def embed_bold_patches(
        self,
        patches: torch.Tensor,
        subject_id: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`encode_bold` from patches (B, N, P) in slot order."""
        h = self.backbone(self.tokens(patches, subject_id, slots))
        P = self.backbone.num_prefix
        pooled = h[:, 0] if self.config.pool == "subject" else h[:, P:].mean(dim=1)
        return self.predict(pooled)

    def encode_images(
        self, images: torch.Tensor, nsd_id: torch.Tensor | None = None
    ) -> EncoderOutput:
        """The frozen encoder's outputs for images (B, 3, S, S), from the per-stimulus
        cache when it is on and ``nsd_id`` (B,) is given."""
        if self.target_cache is not None and nsd_id is not None:
            return self.target_cache(self.image_encoder, images, nsd_id)
        return self.image_encoder(images)

    def embed_images(
        self, images: torch.Tensor, nsd_id: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image embeddings (B, C) of images (B, 3, S, S): the space BOLD embeddings are
        matched in (see ``image_embedding``)."""
        out = self.encode_images(images, nsd_id)
        if self.image_head is None:
            return out.pooled
        return self.image_head(out.tokens.flatten(1))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        """Contrastive loss of a prepared batch.

        Args:
            batch: ``activity`` (B, H, W), ``subject_id`` (B,), ``image`` (B, 3, S, S)
                normalised with :attr:`image_normalization`, and ``nsd_id`` (B,) (the
                stimuli: positives and the target cache; without it each trial is
                its own stimulus and nothing is cached).

        Returns:
            :class:`ModelOutput` with ``output`` the BOLD embeddings (B, C), ``target``
            the image embeddings (B, C), ``patches`` (B, N, P), metrics ``top1``
            (in-batch retrieval) and the loss's scale (and bias).
        """
        maps, subject_id = self.check_inputs(batch)
        images = batch_images(batch, self.image_encoder, type(self).__name__).to(self.device)
        nsd_id = batch.get("nsd_id")
        slots = None
        if self.training and self.config.patch_drop > 0:
            slots = self.kept_slots(maps.shape[0])
        patches = self.patchify(maps)
        bold = self.embed_bold_patches(patches, subject_id, slots)
        image = self.embed_images(images, nsd_id)
        sid = None if nsd_id is None else torch.as_tensor(nsd_id, device=bold.device)
        # the global batch's negatives in training; evaluation stays per rank
        loss, metrics = self.loss_fn(bold, image, sid, gather=self.training)
        return ModelOutput(
            loss=loss,
            output=bold,
            target=image,
            patches=patches,
            metrics=metrics,
        )

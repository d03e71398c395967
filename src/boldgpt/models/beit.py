"""BEiT: masked patch prediction with a bidirectional transformer.

A random subset of each map's patches (a fixed fraction, or a fraction drawn
uniformly per sample) has its patch embedding replaced by a learned mask token; the
model predicts the masked patches from the visible ones and the subject token. The
loss counts masked patches only: in-mask MSE on values, or cross-entropy on k-means
token ids. Sampling / completion decode iteratively in parallel
(:mod:`boldgpt.generate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from boldgpt.models.config import BEiTConfig, PatchModelConfig
from boldgpt.models.transformer import ModelOutput, PatchModel


class BEiT(PatchModel):
    """Bidirectional transformer trained to fill in masked patches.

    Built as ``BEiT(config, mask, patch_indices=None)`` from a :class:`BEiTConfig`
    (``mask_ratio``: fraction of patches masked per training sample, fixed or drawn
    uniformly from ``(low, high)``; at least one patch is always masked).
    """

    causal = False
    config_class = BEiTConfig
    config: BEiTConfig

    def __init__(
        self,
        config: BEiTConfig,
        mask: np.ndarray | torch.Tensor | None = None,
        patch_indices: torch.Tensor | Sequence[int] | None = None,
    ):
        super().__init__(config, mask, patch_indices)
        self.mask_ratio = config.mask_ratio

    @classmethod
    def backbone_options(cls, config: PatchModelConfig) -> dict[str, Any]:
        return {"next_pos_query": False, "mask_token": True}

    def random_mask(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, N) bool, True = masked: a uniformly random subset per sample of size
        round(ratio * N), at least 1 (torch's global RNG unless ``generator``)."""
        N = self.num_patches
        lo, hi = self.mask_ratio
        ratio = torch.rand(batch_size, 1, generator=generator, device=self.device)
        ratio = lo + (hi - lo) * ratio
        count = (ratio * N).round().clamp(1, N)
        keys = torch.rand(batch_size, N, generator=generator, device=self.device)
        rank = keys.argsort(dim=1).argsort(dim=1)
        return rank < count

    def predict_masked(
        self,
        patches: torch.Tensor,
        masked: torch.Tensor,
        subject_id: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predictions (B, N, C) for every slot, from patches (B, N, P) in slot order of
        which those where ``masked`` (B, N) is True are hidden."""
        b = self.backbone
        slots = torch.arange(self.num_patches, device=patches.device)
        x = b.embed_patches(patches, slots, masked)
        x = torch.cat([b.prefix(subject_id, patches.shape[0]), x], dim=1)
        h = b(x, context)
        return self.predict(h[:, b.num_prefix :])

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Masked patch prediction loss of a prepared batch.

        Args:
            batch: ``activity`` (B, H, W) float z-values (or ``image``) and
                ``subject_id`` (B,).
            mask: (B, N) bool patches to mask (default: :meth:`random_mask`).
            context: (B, M, context_dim) for cross-attention models.

        Returns:
            :class:`ModelOutput` with ``output`` (B, N, C) in slot order, ``mask`` and
            the loss over masked patches only.
        """
        maps, subject_id = self.check_inputs(batch)
        patches = self.patchify(maps)
        B, N = patches.shape[:2]
        if mask is None:
            mask = self.random_mask(B)
        elif mask.shape != (B, N) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool of shape ({B}, {N}); got {mask.dtype} {tuple(mask.shape)}"
            )
        mask = mask.to(patches.device)
        output = self.predict_masked(patches, mask, subject_id, context)
        metrics: dict[str, torch.Tensor] = {}
        if self.tokenizer is not None:
            target = self.encode_targets(patches)
            # weighted by the mask rather than indexed with it: boolean indexing has a
            # data-dependent shape, which syncs an accelerator
            m = mask.float()
            count = m.sum().clamp_min(1.0)
            ce = F.cross_entropy(output.float().transpose(1, 2), target, reduction="none")
            loss = (ce * m).sum() / count
            with torch.no_grad():
                metrics["accuracy"] = ((output.argmax(-1) == target).float() * m).sum() / count
        else:
            target = patches
            pixel_mask = self.patchify.patch_mask & mask[..., None]
            loss = self.masked_mse(output, target, pixel_mask)
        return ModelOutput(
            loss=loss, output=output, target=target, patches=patches, mask=mask, metrics=metrics
        )

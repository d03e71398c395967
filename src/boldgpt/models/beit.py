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

from boldgpt.errors import ConfigError
from boldgpt.models.transformer import ModelOutput, PatchModel, backbone_kwargs, config_kwargs


class BEiT(PatchModel):
    """Bidirectional transformer trained to fill in masked patches.

    Args:
        mask: bool (H, W), the pixels with signal.
        mask_ratio: fraction of patches masked per sample: a float (fixed), or
            ``[low, high]`` for a fraction drawn uniformly per sample (at least one
            patch is always masked).
        Other arguments as in :class:`~boldgpt.models.igpt.IGPT` (no ``shuffle``: a
        bidirectional model has no order).
    """

    causal = False

    def __init__(
        self,
        mask: np.ndarray | torch.Tensor,
        *,
        patch_size: int = 10,
        channels: int = 1,
        ordering: str | np.ndarray = "radial",
        patch_indices: Any = None,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_subjects: int = 8,
        subject_embed: bool = True,
        subject_dropout: float = 0.0,
        mask_ratio: float | Sequence[float] = (0.0, 1.0),
        categorical: bool = False,
        vocab_size: int = 1024,
        num_registers: int = 0,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        head_drop: float = 0.0,
        input_key: str = "activity",
        pos_init: str = "sincos",
    ):
        kwargs = config_kwargs(locals())
        ratio = _check_ratio(mask_ratio)
        super().__init__(
            mask,
            patch_size=patch_size,
            channels=channels,
            ordering=ordering,
            patch_indices=patch_indices,
            categorical=categorical,
            vocab_size=vocab_size,
            input_key=input_key,
            head_drop=head_drop,
            pos_init=pos_init,
            backbone=backbone_kwargs(locals(), next_pos_query=False, mask_token=True),
        )
        self.mask_ratio = ratio
        self.config = {"name": "beit", "kwargs": kwargs}

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
            loss = F.cross_entropy(output[mask].float(), target[mask])
            with torch.no_grad():
                metrics["accuracy"] = (output[mask].argmax(-1) == target[mask]).float().mean()
        else:
            target = patches
            pixel_mask = self.patchify.patch_mask & mask[..., None]
            loss = self.masked_mse(output, target, pixel_mask)
        return ModelOutput(
            loss=loss, output=output, target=target, patches=patches, mask=mask, metrics=metrics
        )


def _check_ratio(mask_ratio: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(mask_ratio, (int, float)):
        lo = hi = float(mask_ratio)
    else:
        values = list(mask_ratio)
        if len(values) != 2:
            raise ConfigError(f"mask_ratio must be a float or [low, high]; got {mask_ratio!r}")
        lo, hi = float(values[0]), float(values[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"mask_ratio must satisfy 0 <= low <= high <= 1; got {mask_ratio!r}")
    return lo, hi

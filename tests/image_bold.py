"""Shared pieces of the image <-> BOLD model tests: a small size, the "sim" mask, a
saved frozen image encoder and batches that pair maps with pictures."""

from __future__ import annotations

from pathlib import Path

import torch

from boldgpt.data.masks import named_mask
from boldgpt.models.registry import create_model, save_model

SMALL = dict(depth=1, embed_dim=32, num_heads=2, num_subjects=2)
MASK = named_mask("sim")


def save_image_encoder(directory: Path, image_size: int) -> str:
    """A small pretrained-image-model directory (imagebeit), to serve as a frozen encoder."""
    torch.manual_seed(0)
    image_model = create_model("imagebeit_micro_patch16", image_size=image_size, **SMALL)
    return str(save_model(image_model, directory / "imagebeit"))


def paired_batch(
    n: int, image_size: int, seed: int = 0, nsd_id: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Random maps (n, 215, 200), subjects 0/1 and pictures (n, 3, S, S); ``nsd_id`` when
    given."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "activity": torch.randn(n, *MASK.shape, generator=g),
        "subject_id": torch.arange(n) % 2,
        "image": torch.randn(n, 3, image_size, image_size, generator=g),
    }
    if nsd_id is not None:
        out["nsd_id"] = nsd_id
    return out


def small_model(name: str, **overrides) -> torch.nn.Module:
    """``create_model(name)`` at the tests' small size over the "sim" mask, seeded."""
    torch.manual_seed(0)
    return create_model(name, mask="sim", **{**SMALL, **overrides})

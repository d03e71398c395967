"""Whole maps of a split as float tensors, for evaluation, baselines and generation
prompts (training reads batches through the cache's loader instead)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from boldgpt.data.cache import CachedNSDFlat, build_cache
from boldgpt.data.sources import Source
from boldgpt.data.transforms import dequantize
from boldgpt.errors import DataError

CHUNK = 1024
"""Maps read and dequantized at a time."""


def cache_splits(split: str) -> list[str]:
    """The splits to cache for ``split``: training and the demo cache train and val
    together, so reading either reuses that cache."""
    return ["train", "val"] if split in ("train", "val") else [split]


def load_split_maps(
    source: str | os.PathLike | Source,
    split: str,
    max_maps: int | None = None,
    seed: int = 0,
    subjects: int | str | Sequence[int | str] | None = None,
    first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Maps of a split from the uint8 cache (built if needed).

    Returns maps (M, 215, 200) float32 z-values, their subject ids (M,) int64 and the
    mask bool (215, 200). ``max_maps`` keeps a seeded random subset (with ``first``: the
    first ``max_maps``), in dataset order.
    """
    cache_dir = build_cache(source, splits=cache_splits(split), subjects=subjects)
    ds = CachedNSDFlat(cache_dir, split, images=False)
    n = len(ds)
    if n == 0:
        raise DataError(f"{source} has no maps in split {split!r}")
    if max_maps is not None and max_maps < 1:
        raise ValueError(f"max_maps must be >= 1 or None; got {max_maps}")
    idx = np.arange(n)
    if max_maps is not None and max_maps < n:
        rng = np.random.default_rng(seed)
        idx = idx[:max_maps] if first else np.sort(rng.choice(n, max_maps, replace=False))
    maps, sids = [], []
    for start in range(0, len(idx), CHUNK):
        batch = ds.__getitems__(idx[start : start + CHUNK])
        maps.append(dequantize(batch["activity"]))
        sids.append(batch["subject_id"])
    return torch.cat(maps), torch.cat(sids), ds.mask

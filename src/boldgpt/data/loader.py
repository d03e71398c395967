"""The one DataLoader factory of boldgpt: raw batches from any map-style dataset.

Datasets of this package (:class:`~boldgpt.data.cache.CachedNSDFlat`) define
``__getitems__(indices)``, which returns a whole raw batch (a dict of tensors) in one
copy; such batches are passed through unchanged. Other datasets are collated by torch's
``default_collate``. The training engine, benchmarks and tests all go through
:func:`make_dataloader`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool | None = None,
    seed: int = 0,
    sampler: Sampler[int] | Iterable[int] | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    timeout: float = 0,
) -> DataLoader:
    """A ``DataLoader`` of raw batches (dicts of tensors, e.g. activity (B, 215, 200) uint8).

    Args:
        dataset: a map-style dataset; with ``__getitems__`` its batches are used as is.
        batch_size: samples per batch.
        shuffle: random order (default: True unless a ``sampler`` is given), drawn from a
            generator seeded with ``seed``: the same seed gives the same epochs.
        seed: seeds the loader's own generator, which also draws the worker seeds, so
            creating an iterator never touches torch's global random stream (a resumed
            training run would otherwise drift from the uninterrupted one).
        sampler: any sampler of indices (distributed, resumable, a list); replaces
            shuffling.
        drop_last: drop the last incomplete batch.
        num_workers: loader processes; 0 (in the main process) is already fast for the
            cache because a batch is one copy from its memory map.
        pin_memory: page-locked batches, for faster copies to a GPU.
        persistent_workers, prefetch_factor: as in ``DataLoader`` (used only with workers).
        timeout: with workers, seconds to wait for a batch before raising (0: forever).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler, not both")
    if sampler is None:
        if shuffle is None or shuffle:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = SequentialSampler(dataset)
    batched = hasattr(dataset, "__getitems__")
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last),
        collate_fn=_keep_batch if batched else None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        timeout=timeout if num_workers > 0 else 0,
        generator=torch.Generator().manual_seed(seed),
    )


def fetch_batch(dataset: Dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    """The raw batch of ``indices`` from a map-style dataset, collated the way
    :func:`make_dataloader` collates it."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(indices)
    return torch.utils.data.default_collate([dataset[i] for i in indices])


def _keep_batch(batch: Any) -> Any:
    # With __getitems__ the fetcher hands over the finished batch already.
    return batch


__all__ = ["fetch_batch", "make_dataloader"]

"""Torch CPU thread control."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads (None: unchanged), then restore.

    Work made of small products (token-by-token decoding of a few maps, the simulator
    beside its drawing processes) gains nothing from more threads but loses a lot when
    cores are contended: oversubscribed OpenMP threads spin-wait."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

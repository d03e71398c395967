"""Checks of input values that cost a host-device sync on an accelerator.

Shape and dtype checks read tensor metadata and are always on. Checks of values
(NaN/Inf, subject ids in range) must read the data: on a CPU tensor that is free, but
on a CUDA tensor ``bool(...)`` / ``int(...)`` waits for the GPU, which stalls the
training pipeline at every forward. So models run them only on host tensors, or
everywhere when debugging is on (``BOLDGPT_DEBUG=1`` in the environment, or
``boldgpt.models.checks.DEBUG = True``). The training engine checks the host batch
before moving it to the device (:func:`check_subject_ids`, :func:`check_finite`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from boldgpt.errors import DataError

DEBUG: bool = os.environ.get("BOLDGPT_DEBUG", "") not in ("", "0")
"""Run value checks on accelerator tensors too (syncs the device at every check)."""


def syncs_device(t: torch.Tensor) -> bool:
    """Whether reading a value of ``t`` on the host waits for a device."""
    return t.device.type not in ("cpu", "meta")


def value_checks_enabled(t: torch.Tensor) -> bool:
    """Whether to check the values of ``t``: on host tensors always, on device tensors
    only with :data:`DEBUG`; never while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return False
    return DEBUG or not syncs_device(t)


def check_finite(x: torch.Tensor, key: str) -> None:
    """DataError when ``x`` holds NaN or Inf (``key`` names it in the message)."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"batch[{key!r}] contains {bad} NaN/Inf values")


def check_subject_ids(ids: Any, num_subjects: int) -> None:
    """DataError unless every subject id is an integer in ``[0, num_subjects)``.

    For the host side of the training loop: call it on the CPU batch before the
    transfer (on a CUDA tensor it syncs the device). ``ids``: a tensor, array or
    sequence of ints.
    """
    sid = torch.as_tensor(ids)
    if sid.is_floating_point() or sid.dtype == torch.bool or sid.is_complex():
        raise DataError(f"subject_id must be integers; got {sid.dtype}")
    if sid.numel() == 0:
        return
    lo, hi = int(sid.min()), int(sid.max())
    if lo < 0 or hi >= num_subjects:
        raise DataError(
            f"subject_id out of range: got values in [{lo}, {hi}]; this model has "
            f"embeddings for subjects 0..{num_subjects - 1}"
        )

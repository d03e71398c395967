"""Shared test fixtures. Tests never touch the network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# before anything imports torch, as the `boldgpt` command does: the tests then run the
# same MKL kernels as the command (boldgpt.utils.mkl)
import boldgpt  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED = Path(
    os.environ.get("BOLDGPT_SHARED_DIR", Path(__file__).resolve().parents[1] / ".." / "shared")
)
NSD_DIR = SHARED / "nsd"


@pytest.fixture(scope="session")
def nsd_mask() -> np.ndarray:
    """The real NSD-Flat mask from ../shared (skips when absent)."""
    path = NSD_DIR / "nsd_flat_mask.npy"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return np.load(path)


@pytest.fixture(scope="session")
def nsd_design_path() -> Path:
    """The real NSD trial schedule from ../shared (skips when absent)."""
    path = NSD_DIR / "nsd_trial_metadata.parquet"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path

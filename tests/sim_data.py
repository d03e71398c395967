"""The simulated ``ci`` dataset, generated once per test session and shared by the
simulator's test modules (a module-level cache: pytest would otherwise build a
session fixture imported into two modules twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}


def ci_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``simulate_dataset(..., "ci", seed=0)`` in a session temp dir."""
    if "ci" not in _CACHE:
        from boldgpt.sim import simulate_dataset

        root = tmp_path_factory.mktemp("sim") / "ci-seed0"
        _CACHE["ci"] = simulate_dataset(root, "ci", seed=0, progress=False)
    return _CACHE["ci"]

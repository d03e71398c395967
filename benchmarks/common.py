"""Shared helpers for benchmarks: timing, the machine's matmul peak, result rows."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One benchmark measurement.

    ``ratio`` compares ``value`` with a baseline measured in the same run
    (``baseline`` names it); ``target`` is the goal, as text (e.g. ">= 20x").
    """

    bench: str
    case: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def matmul_peak_gflops(n: int = 2048, dtype: str = "float32", device: str = "cpu") -> float:
    """Measured dense matmul throughput (GFLOP/s) of this machine for ``dtype``: the
    reference for model FLOP utilization."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)

    def run() -> None:
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    seconds = timeit(run, repeat=5, warmup=2)
    return 2 * n**3 / seconds / 1e9


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }

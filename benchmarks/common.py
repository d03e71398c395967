"""Shared helpers for the benchmarks: timing, the machine's roofline, the benchmark
mask, a synthetic map cache, result rows (model FLOPs: :mod:`flops`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import boldgpt  # noqa: F401  (before torch: on AMD CPUs it lets MKL use its fast kernels)

REPO = Path(__file__).resolve().parents[1]
NSD_MASK = REPO / ".." / "shared" / "nsd" / "nsd_flat_mask.npy"
ROOFLINE_SIZES = (1024, 2048, 4096)


@dataclass
class Row:
    """One benchmark measurement.

    ``ratio`` compares ``value`` with a reference (``baseline`` names it: a baseline
    measured in the same run, or the machine's matmul peak); ``target`` is the goal,
    as text (e.g. ">= 0.90"), and ``met`` whether ``ratio`` (or ``value``) reaches it.
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


NO_BF16 = "skipped: this CPU has no native bf16 kernels (bf16 autocast is emulated there)"


def skipped_row(bench: str, case: str, reason: str, target: str = "") -> Row:
    """A row for a case that does not apply on this machine (value NaN, the reason in
    ``extra["skipped"]``)."""
    return Row(bench, case, float("nan"), "", target=target, extra={"skipped": reason})


@dataclass
class Context:
    """What every benchmark case gets: the run's options and the measured peaks."""

    quick: bool
    device: Any  # torch.device
    peak_gflops: dict[str, float] = field(default_factory=dict)  # "float32" / "bfloat16"
    read_gbps: dict[int, float] = field(default_factory=dict)  # threads -> memory read GB/s
    fast_bf16: bool = True  # False on a CPU without native bf16 kernels (emulated)
    threads: int = 1  # torch's threads for the roofline (all of them)


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` timed runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def synced(fn: Callable[[], Any], device: Any) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation (GPU work is asynchronous)."""
    import torch

    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def matmul_gflops(n: int, dtype: str = "float32", device: str = "cpu", repeat: int = 5) -> float:
    """2 n^3 / t in GFLOP/s for an (n, n) x (n, n) product, t the median of ``repeat``
    timed runs after a warm-up, with all of torch's threads."""
    import torch

    dev = torch.device(device)
    a = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
    seconds = timeit(synced(lambda: a @ b, dev), repeat=repeat, warmup=2)
    return 2 * n**3 / seconds / 1e9


def memory_read_gbps(threads: int, megabytes: int = 256, repeat: int = 5) -> float:
    """Streaming read bandwidth of main memory (GB/s): the median time of summing a
    ``megabytes`` float32 tensor (far larger than any cache) on ``threads`` threads.
    Decoding one token at a time reads every weight and the KV cache per step, so this,
    not the matmul peak, is its limit."""
    import torch

    from boldgpt.utils.threads import cpu_threads

    a = torch.ones(megabytes * 2**20 // 4)
    with cpu_threads(threads):
        seconds = timeit(lambda: a.sum(), repeat=repeat, warmup=2)
    return a.numel() * 4 / seconds / 1e9


def roofline(
    dtype: str = "float32", device: str = "cpu", sizes: tuple[int, ...] = ROOFLINE_SIZES
) -> tuple[float, dict[int, float]]:
    """The machine's dense matmul peak for ``dtype`` (GFLOP/s): the best over ``sizes``
    of :func:`matmul_gflops`; also returns every size's figure."""
    per_size = {n: matmul_gflops(n, dtype, device) for n in sizes}
    return max(per_size.values()), per_size


def load_mask() -> tuple[Any, str]:
    """The real NSD-Flat mask (../shared/nsd relative to the repository) when present,
    else the named mask ``"sim"`` (the embedded dataset's procedural mask)."""
    if NSD_MASK.exists():
        return np.load(NSD_MASK), "nsd_flat_mask"
    return "sim", "sim"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return out.stdout.strip() + ("+uncommitted" if dirty else "")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import torch

    from boldgpt.utils.machine import cpu_description
    from boldgpt.utils.mkl import mkl_status

    return {
        "machine": platform.machine(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **mkl_status(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def write_synthetic_cache(
    root: Path, num_maps: int, mask: np.ndarray, image_size: int | None = None, seed: int = 0
) -> Path:
    """A map cache in the format :class:`boldgpt.data.cache.CachedNSDFlat` reads
    (one ``train`` split, random quantized maps inside ``mask``, 8 subjects; one
    stimulus per map when ``image_size`` is given), without building one from a
    source. Returns its directory."""
    from boldgpt.data import cache as cache_format
    from boldgpt.data import schema

    rng = np.random.default_rng(seed)
    split = root / "train"
    split.mkdir(parents=True, exist_ok=True)
    activity = np.lib.format.open_memmap(
        split / "activity.npy", mode="w+", dtype=np.uint8, shape=(num_maps, *schema.MAP_SHAPE)
    )
    for start in range(0, num_maps, 1024):
        stop = min(start + 1024, num_maps)
        z = rng.standard_normal((stop - start, *schema.MAP_SHAPE), dtype=np.float32)
        activity[start:stop] = schema.quantize(np.where(mask, z, 0.0))
    activity.flush()
    del activity
    ids = np.arange(num_maps, dtype=np.int64)
    for name in cache_format.ID_COLUMNS:
        np.save(split / f"{name}.npy", ids % 8 if name == "subject_id" else ids)
    np.save(root / "mask.npy", np.asarray(mask, dtype=bool))
    images = None
    if image_size is not None:
        np.save(split / "image_index.npy", ids)
        np.save(root / "image_nsd_id.npy", ids)
        np.save(
            root / "images.npy",
            rng.integers(0, 256, (num_maps, image_size, image_size, 3), dtype=np.uint8),
        )
        images = {"size": image_size, "count": num_maps}
    meta = {
        "format_version": cache_format.FORMAT_VERSION,
        "source": "synthetic (benchmarks)",
        "source_fingerprint": "synthetic",
        "splits": {"train": {"count": num_maps}},
        "images": images,
    }
    raw = json.dumps(meta, indent=2).encode()
    (root / "meta.json").write_bytes(raw)
    (root / "COMPLETE").write_text(hashlib.sha256(raw).hexdigest())
    return root

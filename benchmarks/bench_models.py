"""Model speed: training throughput and sampling with / without the KV cache.

- ``train``: samples/s of a full AdamW step (forward, backward, update) of
  ``boldgpt_small_patch10`` (continuous, batch 16, the 253 patches of the real NSD
  mask, fp32), and the model FLOP utilization against this machine's measured fp32
  matmul peak (FLOPs from ``model.estimate_flops()``, x3 for forward + backward).
- ``sample``: seconds to sample 4 full maps with ``boldgpt_tiny_patch10``, with the
  KV cache and without it (recomputing the whole prefix each step); the ratio is the
  cache's speed-up.

``--quick`` uses the micro model for sampling and fewer repeats (a smoke run).
Runs on the GPU when one is available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from boldgpt.models.registry import create_model
from common import Row, matmul_peak_gflops, timeit

REPO = Path(__file__).resolve().parents[1]
NSD_MASK = REPO / ".." / "shared" / "nsd" / "nsd_flat_mask.npy"


def load_mask() -> tuple[np.ndarray, str]:
    """The real NSD-Flat mask when ../shared is present, else the embedded one."""
    if NSD_MASK.exists():
        return np.load(NSD_MASK), "nsd_flat_mask"
    from boldgpt.sim import default_mask

    return default_mask(), "sim default_mask"


def _synced(fn: Any, device: torch.device) -> Any:
    def run() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def bench_train(mask: np.ndarray, device: torch.device, quick: bool) -> Row:
    torch.manual_seed(0)
    name, B = "boldgpt_small_patch10", 16
    model = create_model(name, mask=mask).to(device).train()
    optimizer = torch.optim.AdamW(model.param_groups(0.05), lr=1e-4)
    m = torch.from_numpy(mask).to(device)
    batch = {
        "activity": (torch.randn(B, *mask.shape, device=device) * m).clamp(-2.5, 2.5),
        "subject_id": torch.arange(B, device=device) % 8,
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()

    seconds = timeit(_synced(step, device), repeat=2 if quick else 5, warmup=1)
    flops = 3 * model.estimate_flops() * B / seconds / 1e9
    peak = matmul_peak_gflops(device=device.type)
    return Row(
        bench="models",
        case=f"train {name} B={B} fp32 ({model.num_patches} patches)",
        value=B / seconds,
        unit="samples/s",
        baseline="fp32 matmul peak (MFU)",
        ratio=flops / peak,
        extra={
            "step_seconds": round(seconds, 4),
            "model_gflops_per_s": round(flops, 1),
            "matmul_peak_gflops": round(peak, 1),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "device": str(device),
        },
    )


def bench_sample(mask: np.ndarray, device: torch.device, quick: bool) -> list[Row]:
    torch.manual_seed(0)
    name, B = ("boldgpt_micro_patch10" if quick else "boldgpt_tiny_patch10"), 4
    model = create_model(name, mask=mask).to(device).eval()
    cached = timeit(
        _synced(lambda: model.sample(B, use_cache=True), device), repeat=1 if quick else 3
    )
    uncached = timeit(_synced(lambda: model.sample(B, use_cache=False), device), repeat=1, warmup=0)
    extra = {"device": str(device), "num_patches": model.num_patches}
    return [
        Row("models", f"sample {name} B={B} without cache", uncached, "s", extra=dict(extra)),
        Row(
            "models",
            f"sample {name} B={B} with KV cache",
            cached,
            "s",
            baseline="without cache",
            ratio=uncached / cached,
            extra=dict(extra),
        ),
    ]


def run(quick: bool = False) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mask, source = load_mask()
    rows = [bench_train(mask, device, quick), *bench_sample(mask, device, quick)]
    for row in rows:
        row.extra["mask"] = source
    return rows


if __name__ == "__main__":
    from run import print_table

    print_table(run())

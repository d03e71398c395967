"""A/B: torch's MKL with and without its optimised kernels on an AMD CPU
(:mod:`boldgpt.utils.mkl`).

    python benchmarks/mkl_ab.py [--pairs 3] [--out benchmarks/results/mkl-ab.json]

Which kernels MKL runs is decided when torch loads, so the two variants run in separate
processes (``BOLDGPT_FAST_MKL=0`` and the default), alternated ``--pairs`` times; each
process measures the fp32 matmul at n = 2048, the training step of ``bench_models``
(forward, backward, AdamW; batch 16, fp32, all threads) of ``boldgpt_tiny_patch10`` and
``boldgpt_small_patch10`` over the real NSD-Flat mask, and KV-cache sampling of full tiny
maps at batch 1, 4 and 64 on one thread, as ``boldgpt generate`` does. Prints each pair
and the median of the per-pair speed-ups (default / BOLDGPT_FAST_MKL=0), and writes them
as JSON. Run it on a quiet machine: the host's speed drifts over minutes, which the
alternation spreads over both variants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boldgpt  # noqa: F401  (before torch: it decides which kernels MKL runs)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def measure() -> dict[str, float | str | None]:
    """One process's figures (seconds; GFLOP/s for the matmul)."""
    import torch

    from bench_models import _batch, _build, _train_step
    from boldgpt.generate import sample
    from boldgpt.models.registry import create_model
    from boldgpt.utils.mkl import mkl_status
    from boldgpt.utils.threads import cpu_threads
    from common import load_mask, matmul_gflops, timeit

    cpu = torch.device("cpu")
    mask, _ = load_mask()
    out: dict[str, float | str | None] = {**mkl_status()}
    out["matmul_2048_gflops"] = matmul_gflops(2048)
    for name in ("boldgpt_tiny_patch10", "boldgpt_small_patch10"):
        model = _build(name, "continuous", mask, cpu)
        step = _train_step(model, _batch(model, cpu, 16), cpu, "float32")
        out[f"train {name} s/step"] = timeit(step, repeat=3, warmup=1)
    torch.manual_seed(0)
    model = create_model("boldgpt_tiny_patch10", mask=mask).eval()
    with cpu_threads(1):
        for B in (1, 4, 64):
            out[f"sample tiny B={B} s"] = timeit(lambda B=B: sample(model, B), repeat=1)
    return out


def run_child(fast: bool) -> dict:
    env = dict(os.environ)
    env.pop("BOLDGPT_FAST_MKL", None)
    if not fast:
        env["BOLDGPT_FAST_MKL"] = "0"
    done = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternated process pairs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "mkl-ab.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    pairs = []
    for i in range(args.pairs):
        generic, fast = run_child(fast=False), run_child(fast=True)
        pairs.append({"generic": generic, "fast": fast})
        print(f"pair {i + 1}: generic {generic}\n        fast    {fast}", flush=True)
    keys = [k for k, v in pairs[0]["fast"].items() if isinstance(v, float)]
    speedup = {}
    for key in keys:
        per_pair = [p["fast"][key] / p["generic"][key] for p in pairs]
        if "gflops" not in key:  # seconds: fewer is faster
            per_pair = [1 / r for r in per_pair]
        speedup[key] = round(statistics.median(per_pair), 3)
        print(f"{key:32s} speed-up {speedup[key]:.3f}  (pairs: {[round(r, 3) for r in per_pair]})")
    record = {
        "started": started,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "speedup_median_of_pairs": speedup,
        "pairs": pairs,
    }
    from boldgpt.utils.io import write_json
    from common import machine_info

    record["machine"] = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The demo's training loop, measured in a fresh process: peak resident memory and the
share of step time spent waiting for data.

The child process builds the demo's model and optimizer from
``configs/boldgpt_cont_demo.yaml`` through the engine's ``Trainer`` (no evaluation,
figures or checkpoints), feeds it a synthetic map cache in the real format (the
benchmark mask; no simulator run), and times ~50 steps: the data wait is the time in
the trainer's next-batch fetch (loader + ``prepare_batch``), the rest of the step is
forward, backward and update. Peak RSS covers the whole child process (Python, torch,
the model, the cache pages it touched). Targets: peak RSS <= 4 GB; data wait < 5%.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Context, Row

HERE = Path(__file__).resolve().parent
CONFIG = REPO / "configs" / "boldgpt_cont_demo.yaml"


def child(out: Path, steps: int) -> None:
    """Runs in the subprocess: train ``steps`` demo steps and write the figures."""
    import numpy as np
    import torch

    from bench_datapath import _mask_array
    from boldgpt.data.cache import CachedNSDFlat
    from boldgpt.data.transforms import prepare_batch
    from boldgpt.engine.config import load_config
    from boldgpt.engine.train import TrainData, Trainer
    from common import peak_rss_mb, write_synthetic_cache

    mask, source = _mask_array()
    with tempfile.TemporaryDirectory(prefix="boldgpt-bench-") as tmp:
        cache = write_synthetic_cache(Path(tmp) / "cache", 4096, mask)
        data = TrainData(
            train=CachedNSDFlat(cache, "train"),
            val=None,
            mask=np.asarray(mask),
            prepare=lambda raw, device: prepare_batch(raw, device),
        )
        config = load_config(
            CONFIG,
            overrides=[
                f"out_dir={Path(tmp) / 'run'}",
                f"train.max_steps={steps + 5}",
                "optim.warmup_steps=1",
                "log.figures_every=0",
                "log.tensorboard=false",
            ],
        )
        trainer = Trainer(config, data=data)
        fetch = trainer._next_batch
        waits: list[float] = []

        def timed_fetch() -> dict:
            t0 = time.perf_counter()
            batch = fetch()
            waits.append(time.perf_counter() - t0)
            return batch

        trainer._next_batch = timed_fetch  # type: ignore[method-assign]
        for _ in range(5):  # warm-up: first batches, allocator, lazy inits
            trainer.step()
        waits.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = time.perf_counter() - t0
    result = {
        "steps": steps,
        "step_seconds": total / steps,
        "data_wait_fraction": sum(waits) / total,
        "peak_rss_mb": peak_rss_mb(),
        "model": config.model.name,
        "batch_size": config.data.batch_size,
        "threads": torch.get_num_threads(),
        "mask": source,
    }
    out.write_text(json.dumps(result))


def training(ctx: Context) -> list[Row]:
    steps = 10 if ctx.quick else 50
    with tempfile.TemporaryDirectory(prefix="boldgpt-bench-") as tmp:
        out = Path(tmp) / "demo.json"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(out), str(steps)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"demo child failed:\n{proc.stderr[-3000:]}")
        r = json.loads(out.read_text())
    extra = {k: r[k] for k in ("steps", "model", "batch_size", "threads", "mask")}
    extra["step_seconds"] = round(r["step_seconds"], 4)
    return [
        Row(
            "demo",
            f"peak RSS, {r['model']} training (batch {r['batch_size']})",
            r["peak_rss_mb"],
            "MB",
            target="<= 4096",
            met=r["peak_rss_mb"] <= 4096,
            extra=extra,
        ),
        Row(
            "demo",
            "data wait / step time",
            r["data_wait_fraction"],
            "fraction",
            target="< 0.05",
            met=r["data_wait_fraction"] < 0.05,
            extra=extra,
        ),
    ]


CASES = [("training", training)]

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.path.insert(0, str(HERE))
        child(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("run through benchmarks/run.py (python benchmarks/run.py --only demo)")

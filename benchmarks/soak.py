"""Soak test: demo training for a long stretch (default 30 minutes) with evaluation and
checkpoints on schedule, watching for slow leaks and slow-downs.

It trains the demo model (``boldgpt.evaluate.demo.DEMO_CONFIG``: micro boldGPT on the
embedded ``sim:demo`` dataset) for ``--minutes`` of training time (data preparation
is not counted), samples this process's resident memory (VmRSS) every second, and
reads the step times from the run's ``log.jsonl``. It compares the first and the last
``--window`` minutes (5 by default; a quarter of the run when the run is shorter than
four windows):

- resident memory: median over each window; accepted when the last is < 5% above the
  first;
- step time: median over each window of the log intervals (seconds per optimizer step;
  the median ignores the intervals that include an evaluation or a checkpoint, which
  are reported apart as the mean); accepted when the last is within 10% of the first.

Prints a table and writes everything as JSON (``--out``)::

    python benchmarks/soak.py                    # 30 minutes
    python benchmarks/soak.py --minutes 1 --out /tmp/soak.json   # a quick check

Run it on a quiet machine: other jobs on the same cores change step times by more
than the 10% it tests for.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RSS_GROWTH_LIMIT = 0.05
STEP_TIME_LIMIT = 0.10


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


class RssSampler(threading.Thread):
    """Samples (wall time, RSS bytes) every ``every`` seconds until stopped."""

    def __init__(self, every: float = 1.0):
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), rss_bytes()))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def soak_config(run_dir: Path, args: argparse.Namespace) -> Any:
    """The demo config, made open-ended: a long schedule cut by ``train.max_minutes``."""
    from boldgpt.engine.config import config_from_dict
    from boldgpt.evaluate.demo import DEMO_CONFIG

    raw = copy.deepcopy(DEMO_CONFIG)
    raw["out_dir"] = str(run_dir)
    raw["data"]["source"] = args.source
    raw["train"].update(
        max_steps=args.max_steps,
        max_minutes=args.minutes,
        eval_every=args.eval_every,
        device=args.device,
    )
    if args.threads:
        raw["train"]["threads"] = args.threads
    raw["checkpoint"].update(every=args.checkpoint_every, resume="no")
    raw["log"].update(every=args.log_every, figures_every=args.figures_every, progress=False)
    return config_from_dict(raw, where="soak config")


def step_intervals(log: list[dict[str, Any]]) -> list[tuple[float, float, int]]:
    """(end time, seconds per step, steps) between consecutive training log lines."""
    train = [r for r in log if r.get("split") == "train"]
    return [
        (b["time"], (b["time"] - a["time"]) / (b["step"] - a["step"]), b["step"] - a["step"])
        for a, b in zip(train, train[1:])
        if b["step"] > a["step"]
    ]


def window_stats(
    intervals: list[tuple[float, float, int]], rss: list[tuple[float, int]], lo: float, hi: float
) -> dict[str, Any]:
    """Step times and memory of the wall-time window [lo, hi)."""
    steps = [(dt, n) for t, dt, n in intervals if lo <= t < hi]
    mem = [b for t, b in rss if lo <= t < hi]
    if not steps or not mem:
        raise RuntimeError("a window holds no log interval or memory sample; run longer")
    total_steps = sum(n for _, n in steps)
    return {
        "from_s": lo,
        "to_s": hi,
        "log_intervals": len(steps),
        "steps": total_steps,
        "step_time_median_s": statistics.median(dt for dt, _ in steps),
        "step_time_mean_s": sum(dt * n for dt, n in steps) / total_steps,
        "rss_median_mib": statistics.median(mem) / 2**20,
        "rss_max_mib": max(mem) / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="training time (default 30)")
    parser.add_argument(
        "--window", type=float, default=5.0, help="minutes compared at each end (default 5)"
    )
    parser.add_argument("--source", default="sim:demo", help="data source (default sim:demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between evaluations")
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints"
    )
    parser.add_argument(
        "--figures-every", type=int, default=0, help="steps between example figures (0: none)"
    )
    parser.add_argument(
        "--log-every", type=int, default=10, help="steps between log lines (step-time samples)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=1_000_000, help="schedule length (the time limit ends it)"
    )
    parser.add_argument("--run-dir", type=Path, help="training output (default: a temp dir)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / f"soak-{time.strftime('%Y-%m-%d')}.json",
        help="JSON results file",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.window <= 0:
        parser.error("--minutes and --window must be > 0")

    import torch

    from boldgpt.engine.logs import read_log
    from boldgpt.engine.train import train
    from boldgpt.utils.io import write_json

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="boldgpt-soak-"))
    config = soak_config(run_dir, args)
    sampler = RssSampler()
    sampler.start()
    t0 = time.time()
    try:
        result = train(config)
    finally:
        sampler.stop()
    log = read_log(run_dir)
    intervals = step_intervals(log)
    train_records = [r for r in log if r.get("split") == "train"]
    if len(intervals) < 4:
        raise SystemExit(f"only {len(intervals)} log intervals: run longer")
    start, end = train_records[0]["time"], train_records[-1]["time"] + 1e-6
    window = min(args.window * 60, (end - start) / 4)
    first = window_stats(intervals, sampler.samples, start, start + window)
    last = window_stats(intervals, sampler.samples, end - window, end)
    rss_growth = last["rss_median_mib"] / first["rss_median_mib"] - 1
    step_change = last["step_time_median_s"] / first["step_time_median_s"] - 1
    evals = sum(1 for r in log if r.get("split") == "val")
    checkpoints = len(list((run_dir / "checkpoints").glob("step-*.pt")))
    summary = {
        "bench": "soak",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": torch.get_num_threads(),
            "device": str(config.train.device),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "minutes_requested": args.minutes,
        "training_minutes": (end - start) / 60,
        "setup_seconds": start - t0,
        "window_minutes": window / 60,
        "status": result.status,
        "steps": result.step,
        "evaluations": evals,
        "checkpoints_kept": checkpoints,
        "first": first,
        "last": last,
        "rss_growth": rss_growth,
        "step_time_change": step_change,
        "accepted": {
            f"rss_growth < {RSS_GROWTH_LIMIT:.0%}": rss_growth < RSS_GROWTH_LIMIT,
            f"|step_time_change| < {STEP_TIME_LIMIT:.0%}": abs(step_change) < STEP_TIME_LIMIT,
        },
        "config": config.to_dict(),
        "rss_samples": [[round(t - start, 1), b] for t, b in sampler.samples],
    }
    write_json(args.out, summary)
    if args.run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)

    w = f"{window / 60:.1f} min"
    print(
        f"soak: {result.step} steps in {(end - start) / 60:.1f} min of training "
        f"({evals} evaluations, every {args.eval_every} steps; checkpoints every "
        f"{args.checkpoint_every})"
    )
    rows = [
        ("step time, median (s)", "step_time_median_s", "{:.4f}"),
        ("step time, mean incl. eval/ckpt (s)", "step_time_mean_s", "{:.4f}"),
        ("resident memory, median (MiB)", "rss_median_mib", "{:.1f}"),
        ("resident memory, max (MiB)", "rss_max_mib", "{:.1f}"),
    ]
    print(f"{'':38} {'first ' + w:>14} {'last ' + w:>14} {'change':>8}")
    for label, key, fmt in rows:
        a, b = first[key], last[key]
        print(f"{label:38} {fmt.format(a):>14} {fmt.format(b):>14} {b / a - 1:>+8.1%}")
    for name, ok in summary["accepted"].items():
        print(f"  {'met' if ok else 'NOT met':8} {name}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

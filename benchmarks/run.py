"""Run the benchmarks on this machine, print a table and write JSON.

    python benchmarks/run.py                       # everything (~15-25 min on 2 CPU cores)
    python benchmarks/run.py --quick               # smoke run: small models, few repeats
    python benchmarks/run.py --only train,sample   # only these cases (see --help)
    python benchmarks/run.py models datapath       # only these benchmark files

First the roofline: the dense matmul peak (GFLOP/s) in float32 and bfloat16, the best
over n in {1024, 2048, 4096} of 2 n^3 / t (t: median of 5 timed runs after a warm-up,
all threads). Model FLOP/s are then reported as a fraction of it (MFU). Each
``benchmarks/bench_<name>.py`` defines ``CASES``, a list of (case name, function of a
:class:`common.Context` returning rows), or ``run(quick) -> rows`` (one case).

The JSON (default ``benchmarks/results/latest.json``) records the machine, torch
version and threads, the git commit, the load average before and after (timings on a
shared machine are only comparable within one run), the roofline and every row. The
fp32 roofline is measured again at the end of a full run: its ratio to the first
measurement says how much the machine's speed drifted while the cases ran, and when
the end's peak is the higher, every ratio to the fp32 peak (MFU) is taken against it,
so a slow moment during the first roofline cannot make a model look faster than the
machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# as the boldgpt command does (boldgpt/cli/__init__.py): no spin-waiting OpenMP threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from common import (  # noqa: E402
    NO_BF16,
    ROOFLINE_SIZES,
    Context,
    Row,
    load_average,
    machine_info,
    memory_read_gbps,
    roofline,
    skipped_row,
)


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def cases_of(name: str) -> list[tuple[str, Callable[[Context], list[Row]]]]:
    module = importlib.import_module(f"bench_{name}")
    if hasattr(module, "CASES"):
        return [(f"{name}.{case}", fn) for case, fn in module.CASES]
    return [(name, lambda ctx, m=module: m.run(quick=ctx.quick))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help=f"benchmark files to run (default: all of {available()})"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated names: run only these cases, given as FILE.CASE (models.train), "
        "CASE (train, sample, compile, create, maps, images, training) or FILE (models, "
        "datapath, demo, data); the roofline always runs",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "latest.json", help="JSON output path"
    )
    args = parser.parse_args(argv)

    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    patterns = [p.strip() for p in args.only.split(",") if p.strip()]
    selected = []
    for name in names:
        try:
            cases = cases_of(name)
        except Exception as exc:  # a benchmark file broken by work in progress
            print(f"cannot import bench_{name}: {exc!r}", file=sys.stderr)
            continue
        selected += [c for c in cases if not patterns or _matches(c[0], patterns)]
    if not selected:
        parser.error(f"no case matches --only {args.only!r}")

    import torch

    from boldgpt.utils.machine import cpu_has_fast_bf16

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = machine_info()
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    info["load_average_before"] = load_average()
    print(f"machine: {info}")
    sizes = (512, 1024) if args.quick else ROOFLINE_SIZES
    ctx = Context(
        quick=args.quick,
        device=device,
        fast_bf16=device.type != "cpu" or cpu_has_fast_bf16(),
        threads=torch.get_num_threads(),
    )
    rows: list[Row] = []
    roof: dict[str, dict] = {}
    for dtype in ("float32", "bfloat16"):
        if not ctx.fast_bf16 and dtype == "bfloat16":
            rows.append(skipped_row("roofline", f"matmul {dtype}", NO_BF16))
            continue
        peak, per_size = roofline(dtype, device.type, sizes)
        ctx.peak_gflops[dtype] = peak
        roof[dtype] = {"peak_gflops": round(peak, 1), "per_size": per_size}
        rows.append(
            Row(
                "roofline",
                f"matmul {dtype} (best of n={list(sizes)})",
                peak,
                "GFLOP/s",
                extra={f"n={n}": round(g, 1) for n, g in per_size.items()},
            )
        )
    if device.type == "cpu":
        for threads in dict.fromkeys((1, torch.get_num_threads())):
            gbps = memory_read_gbps(threads, megabytes=64 if args.quick else 256)
            ctx.read_gbps[threads] = gbps
            rows.append(Row("roofline", f"memory read, {threads} thread(s)", gbps, "GB/s"))
    failed = []
    for case, fn in selected:
        print(f"running {case} ...", flush=True)
        t0 = time.perf_counter()
        try:
            new_rows = fn(ctx)
        except Exception as exc:
            traceback.print_exc()
            failed.append(case)
            new_rows = [Row(case.split(".")[0], case, float("nan"), "", extra={"error": repr(exc)})]
        for row in new_rows:
            row.extra.setdefault("seconds_to_run_case", round(time.perf_counter() - t0, 1))
        rows.extend(new_rows)
    if "float32" in roof and not args.quick:
        # The host's speed drifts on a shared machine (neighbours, clocks): the peak
        # measured again at the end shows how far the ratios to it can be trusted.
        end, _ = roofline("float32", device.type, sizes)
        roof["float32"]["peak_gflops_end"] = round(end, 1)
        start = ctx.peak_gflops["float32"]
        if end > start:
            rescale_to_peak(rows, "float32", start, end)
            print(
                f"fp32 peak {start:.1f} GFLOP/s at the start, {end:.1f} at the end: "
                "ratios to it use the end's (the higher: a slow moment must not inflate them)"
            )
        rows.append(
            Row(
                "roofline",
                f"matmul float32 at the end of the run (best of n={list(sizes)})",
                end,
                "GFLOP/s",
                baseline="end / start of the run",
                ratio=end / start,
            )
        )
    info["load_average_after"] = load_average()

    print_table(rows)
    print(f"load average before {info['load_average_before']}, after {info['load_average_after']}")
    result = {
        "machine": info,
        "quick": args.quick,
        "roofline": roof,
        "rows": [r.as_dict() for r in rows],
    }
    from boldgpt.utils.io import atomic_write

    with atomic_write(args.out, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if failed:
        print(f"FAILED cases: {failed}", file=sys.stderr)
    return 1 if failed else 0


def rescale_to_peak(rows: list[Row], dtype: str, measured: float, best: float) -> None:
    """Make the ratios to the ``dtype`` matmul peak (rows whose ``extra`` names it in
    ``peak_dtype``), computed against ``measured``, ratios to ``best`` instead, and
    decide their targets again (``extra["target_ratio"]``)."""
    for row in rows:
        if row.ratio is None or row.extra.get("peak_dtype") != dtype:
            continue
        row.ratio *= measured / best
        row.extra["peak_gflops"] = round(best, 1)
        target = row.extra.get("target_ratio")
        if target is not None:
            row.met = row.ratio >= target


def _matches(case: str, patterns: list[str]) -> bool:
    """Whether ``case`` ("file.case") is named by a pattern: itself, its file or its case."""
    file, _, short = case.partition(".")
    return any(p in (case, file, short) for p in patterns)


def print_table(rows: list[Row]) -> None:
    header = ["bench", "case", "value", "unit", "ratio", "target", "met"]
    lines = [header]
    for r in rows:
        ratio = f"{r.ratio:.3g} ({r.baseline})" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "NO")
        value = "skipped" if "skipped" in r.extra else f"{r.value:,.4g}"
        lines.append([r.bench, r.case, value, r.unit, ratio, r.target, met])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    sys.exit(main())

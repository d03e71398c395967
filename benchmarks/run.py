"""Run the benchmarks, print a table and write JSON.

    python benchmarks/run.py                  # all benchmarks
    python benchmarks/run.py data models      # bench_data.py and bench_models.py
    python benchmarks/run.py --out benchmarks/results/latest.json

Every ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> list[Row]``.
Speeds are reported as ratios against a baseline measured in the same run and
against the machine's measured matmul peak (printed first).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row, machine_info, matmul_peak_gflops  # noqa: E402


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {available()})"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "latest.json", help="JSON output"
    )
    args = parser.parse_args(argv)

    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")

    info = machine_info()
    peak = matmul_peak_gflops()
    info["matmul_peak_gflops_fp32"] = round(peak, 1)
    print(f"machine: {info}")
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        t0 = time.perf_counter()
        new_rows = module.run(quick=args.quick)
        for row in new_rows:
            row.extra.setdefault("seconds_to_run_bench", round(time.perf_counter() - t0, 1))
        rows.extend(new_rows)

    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


def print_table(rows: list[Row]) -> None:
    header = ["bench", "case", "value", "unit", "vs baseline", "target", "met"]
    lines = [header]
    for r in rows:
        ratio = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append([r.bench, r.case, f"{r.value:,.4g}", r.unit, ratio, r.target, met])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    sys.exit(main())

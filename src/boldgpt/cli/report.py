"""``boldgpt report RUN_DIR``: one self-contained HTML page of a run (the builder is
:func:`boldgpt.evaluate.html.build_run_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Write RUN_DIR/run_report.html (self-contained: figures embedded) and run_report.md for a
training run, a demo folder or an evaluation folder: the config, the training and
validation curves (from log.jsonl), the demo's tables (summary.json), every evaluation
table with its baselines (eval.json files written by `boldgpt eval`, up to two folders
below RUN_DIR) and their figures.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page of a run: config, curves, evaluations, figures",
        description=DESCRIPTION,
        epilog="example:\n  boldgpt eval runs/demo/train/model && boldgpt report runs/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's folder")
    p.add_argument("--name", default="run_report", help="file name of the page, without suffix")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from boldgpt.evaluate.html import build_run_report

    md, page = build_run_report(args.run_dir, args.name)
    print(f"wrote {page} and {md}")
    return 0

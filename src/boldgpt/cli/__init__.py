"""The ``boldgpt`` command.

Each command group lives in its own module of this package and exposes
``register(subparsers)``, which adds its parsers and sets ``func`` on them. Heavy
imports (torch, datasets) happen inside the command functions so that ``--help``
stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from boldgpt.errors import BoldGPTError

# OpenMP threads that spin-wait between parallel regions steal the cores they share with
# other processes: on 2 busy cores a training block ran 1.5x slower with the default
# policy (benchmarks/RESULTS.md). Set before torch starts its OpenMP runtime; a value
# from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Modules of boldgpt.cli that contribute commands, in the order --help lists them.
COMMAND_MODULES = ("data", "vocab", "models", "train", "generate", "eval", "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boldgpt",
        description=(
            "Foundation models for fMRI brain-activity flat maps (NSD-Flat): data, "
            "tokenizer, training, generation, evaluation and reports. Every command runs "
            "offline on the embedded simulated dataset unless you name a hub id."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"boldgpt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"boldgpt.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"boldgpt {version('boldgpt')}"
    except PackageNotFoundError:
        return "boldgpt (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `boldgpt train cfg.yaml --flag a=1`: KEY=VALUE overrides may follow options.
    if extra and hasattr(args, "overrides") and all("=" in e and e[0] != "-" for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (BoldGPTError, FileNotFoundError) as exc:
        print(f"boldgpt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `boldgpt list-models | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("boldgpt: interrupted", file=sys.stderr)
        return 130

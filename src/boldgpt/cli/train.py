"""``boldgpt train CONFIG.yaml [key=value ...]``: train a model from a config file."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

EPILOG = textwrap.dedent(
    """\
    examples:
      boldgpt train configs/boldgpt_cont_demo.yaml
      boldgpt train configs/boldgpt_cont_demo.yaml optim.lr=3e-4 train.max_steps=2000
      boldgpt train configs/boldgpt_tokens_demo.yaml debug=true out_dir=runs/try
      boldgpt train configs/boldgpt_cont_demo.yaml data.subjects=[subj01,subj02]
      boldgpt train configs/imagebeit_micro.yaml debug=true
      torchrun --nproc_per_node 2 -m boldgpt train configs/boldgpt_cont_full.yaml

    What a batch holds follows the model (its registry config): flat maps and subject
    ids for boldgpt_* / boldbeit_*, the stimulus images of the same split (cached at the
    model's image_size) for imagegpt_* / imagebeit_*. data.source is 'sim:<preset>'
    (ci, demo, full), a local NSD-Flat directory or a hub id; data.subjects is null
    (all) or a list of 0-based ids or NSD names ('subj01' = id 0).

    The run directory (out_dir) receives config.yaml (the resolved config), log.jsonl,
    tb/ (TensorBoard), figures/, checkpoints/ (step-*.pt, latest.pt, best.pt) and, at
    the end, model/ (load it with boldgpt.load_model or `boldgpt generate`). Running
    the same command again resumes from checkpoints/latest.pt (checkpoint.resume=auto).
    Ctrl-C or SIGTERM saves a checkpoint first and exits with status 130 / 143.
    Sections and keys: data, model, optim, train, log, checkpoint; see configs/*.yaml.
    """
)

SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (boldGPT, BEiT, ...) from a YAML config",
        description=(
            "Train a model described by a YAML config, with key=value overrides using "
            "dotted keys (values parsed as YAML). One process, or data parallel when "
            "launched by torchrun (gloo on CPU, nccl on GPU)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="the config file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. optim.lr=3e-4 train.precision=bf16 model.freeze=[backbone.*]",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (after overrides and validation) and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from boldgpt.engine.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    return train_and_exit(config)


def train_and_exit(config) -> int:
    """Run :func:`boldgpt.engine.train.train` and turn its end into an exit status. In a
    torchrun job this never returns (see ``distributed.shutdown``)."""
    from boldgpt.engine import distributed
    from boldgpt.engine.train import train
    from boldgpt.errors import BoldGPTError

    try:
        result = train(config)
    except BaseException as exc:
        if not distributed.is_distributed():
            raise
        # Every rank reports its own error, then leaves without the gloo teardown crash.
        label = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}"
        if not isinstance(exc, BoldGPTError | KeyboardInterrupt):
            import traceback

            traceback.print_exc()
        print(f"boldgpt: {label}", file=sys.stderr, flush=True)
        distributed.shutdown(130 if isinstance(exc, KeyboardInterrupt) else 2)
        raise
    code = SIGNAL_EXIT.get(result.signal or "", 0) if result.status == "interrupted" else 0
    is_main = int(os.environ.get("RANK", "0")) == 0
    # (an early end was already reported by the loop, with the checkpoint's path)
    if result.status == "finished" and result.model_dir is not None and is_main:
        print(f"done: step {result.step}; model saved to {result.model_dir}", flush=True)
    distributed.shutdown(code)
    return code

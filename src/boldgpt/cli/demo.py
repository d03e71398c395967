"""``boldgpt demo [OUT_DIR]``: the README demo, end to end and offline (the pipeline is
:func:`boldgpt.evaluate.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from boldgpt.cli.options import add_source

DESCRIPTION = """\
The README demo, offline on one machine:

1. simulate the embedded NSD-Flat-format dataset (sim:demo; first run only) and cache it;
2. train a micro shuffled-order boldGPT on continuous patches for a fixed number of steps
   (--steps; the same --seed gives the same model and report on any machine, up to
   float rounding; the whole demo takes 10-15 minutes on 2 CPU cores);
3. fit the baselines: the training mean map and MaskedPCA (MaskedPCA on the other
   thread, while the model trains, unless --no-images);
4. score next-patch prediction on validation maps in the fixed and in random orders;
5. complete held-out maps from their left hemisphere and from their central 30% of
   patches, with the model queried in one pass and autoregressively, beside MaskedPCA
   and the mean map; draw samples;
6. meanwhile, on another thread (a child process): train an image encoder, an encoding
   model (image2bold: picture -> map) and a retrieval model (CBIP), and score them beside
   their baselines and ceilings (--no-images skips this);
7. write OUT_DIR/report.md, report.html (figures embedded) and summary.json.

Running it again in the same folder reuses the data and the trained model.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from boldgpt.evaluate.demo import DEFAULT_STEPS

    p = subparsers.add_parser(
        "demo",
        help="the README demo: simulate data, train a small boldGPT, evaluate, report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path("runs/demo"),
        metavar="OUT_DIR",
        help="where the report, figures, model and logs go (default runs/demo)",
    )
    add_source(p)
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"training steps of 16 maps (default {DEFAULT_STEPS})",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--eval-maps", type=int, default=512, help="validation maps to score")
    p.add_argument("--completion-maps", type=int, default=128, help="validation maps to complete")
    p.add_argument("--pca-maps", type=int, default=4000, help="training maps to fit PCA on")
    p.add_argument("--components", type=int, default=128, help="PCA components")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--no-images",
        dest="images",
        action="store_false",
        help="skip the image side (encoding and retrieval models; about 11 minutes of a "
        "second CPU thread)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from boldgpt.evaluate.demo import run_demo

    run_demo(
        args.out_dir,
        source=args.source,
        steps=args.steps,
        seed=args.seed,
        eval_maps=args.eval_maps,
        completion_maps=args.completion_maps,
        pca_maps=args.pca_maps,
        components=args.components,
        device=args.device,
        images=args.images,
    )
    return 0

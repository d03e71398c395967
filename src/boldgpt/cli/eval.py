"""``boldgpt eval MODEL_DIR [MODEL_DIR ...]``: the tasks that fit each model, with their
baselines and ceilings (the pipeline is :func:`boldgpt.evaluate.eval.evaluate_models`)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from boldgpt.cli.options import add_source, add_subjects

DESCRIPTION = """\
Evaluate trained models on one split of a data source. Each model gets the tasks that
fit its class, and every number stands beside baselines computed in the same run on
the same maps:

  boldGPT (IGPT)   next-patch prediction, fixed and random orders: in-mask R², MSE
                   (token NLL and accuracy for token models); mean map, MaskedPCA
  BEiT             masked prediction of 50% of the patches: R² of the hidden pixels;
                   mean map, MaskedPCA from the visible pixels
  image2bold       encoding: Pearson r per pixel across held-out stimuli (maps averaged
                   over repeats), R² per map, noise-ceiling-normalized accuracy; mean
                   map, ridge from the image encoder's features; on sim: sources also r
                   against the true noiseless maps, the truth itself and a fit of the
                   simulator's true receptive-field responses (reference upper bound)
  CBIP             retrieval: top-1 among 300 stimuli over 30 draws, map->image and
                   image->map, two-way identification; chance, ridge from MaskedPCA
                   components of the maps to the image embeddings
  bold2image       reconstruction: PixCorr, SSIM, two-way identification; mean image
  --probe          24-way category decoding from frozen embeddings (within and across
                   subjects) beside PCA + logistic / MLP on raw maps and the majority
                   class (slow; labels from the simulator's truth, or --nsd-labels)

Writes OUT/eval.json (every number, per subject and averaged), OUT/eval.md (tables) and
OUT/figures/*.png. `boldgpt report RUN_DIR` puts them in an HTML page.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate models on their tasks, beside baselines and ceilings",
        description=DESCRIPTION,
        epilog=textwrap.dedent(
            """\
            examples:
              boldgpt eval runs/demo/train/model --split val
              boldgpt eval runs/i2b/model runs/cbip/model --source sim:demo --out runs/eval
              boldgpt eval runs/demo/train/model --probe --max-maps 2000
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="model directories (or hub ids)")
    add_source(p)
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="held-out split to score (default val: the shared-stimulus trials)",
    )
    add_subjects(p)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: eval-SPLIT beside the model directory; required "
        "with several models)",
    )
    p.add_argument(
        "--max-maps", type=int, default=None, help="score a seeded subset of this many maps"
    )
    p.add_argument(
        "--train-maps",
        type=int,
        default=4000,
        help="training maps for the mean map, MaskedPCA and ridge baselines (default 4000)",
    )
    p.add_argument("--components", type=int, default=128, help="MaskedPCA components")
    p.add_argument(
        "--pca",
        default=None,
        metavar="FILE",
        help="a MaskedPCA saved earlier on this data (e.g. a demo's pca.safetensors) to "
        "use instead of fitting one on --train-maps",
    )
    p.add_argument("--probe", action="store_true", help="also run 24-way category decoding")
    p.add_argument(
        "--nsd-labels",
        default=None,
        metavar="DIR",
        help="--probe on real NSD: folder with the decoding benchmark's "
        "nsd_clip_coco_targets.npy and nsd_include_coco_categories.json (sim: sources use "
        "the simulator's truth)",
    )
    p.add_argument(
        "--feature-encoder",
        default=None,
        metavar="SPEC",
        help="image encoder (a model directory, image model name or timm:NAME) whose "
        "features score reconstructions by two-way identification (default: pixel space)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="maps per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is often fastest for small models on "
        "a busy machine)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from boldgpt.errors import ConfigError
    from boldgpt.evaluate.eval import EvalOptions, evaluate_models, write_eval

    out = args.out
    if out is None:
        if len(args.models) > 1:
            raise ConfigError("--out is required when several models are evaluated")
        out = Path(args.models[0]).parent / f"eval-{args.split}"
    for name, value in (("--max-maps", args.max_maps), ("--train-maps", args.train_maps)):
        if value is not None and value < 2:
            raise ConfigError(f"{name} must be at least 2; got {value}")
    options = EvalOptions(
        source=args.source,
        split=args.split,
        subjects=args.subjects,
        max_maps=args.max_maps,
        train_maps=args.train_maps,
        components=args.components,
        pca=args.pca,
        probe=args.probe,
        nsd_labels=args.nsd_labels,
        feature_encoder=args.feature_encoder,
        device=args.device,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    result = evaluate_models(args.models, options, figure_dir=out / "figures")
    js, md = write_eval(result, out)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0

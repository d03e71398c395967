"""``boldgpt data simulate``: write the embedded simulated dataset (nsd-flat-sim).

``register(subparsers)`` adds the ``simulate`` parser to the ``boldgpt data`` group
(``cli/data.py`` calls it). Heavy imports happen when the command runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from boldgpt.cli.options import add_subjects

_DESCRIPTION = """\
Write a simulated fMRI dataset in exactly the NSD-Flat format (same columns, PNG
encodings, uint8 z-score convention, 215 x 200 flat maps, hub file layout
data/train-*.parquet and data/test-*.parquet) to OUT_DIR, with its ground truth.

The maps come from a model of visual cortex: retinotopic areas whose receptive fields
pool image contrast, category-selective regions (faces, bodies, animals, food, places,
vehicles, objects), per-subject anatomy and gains, and spatially correlated noise at
the chosen SNR, z-scored per session. The stimuli are COCO-like pictures of 24 object
categories with boxes and captions.

presets:
  ci     600 maps, 2 subjects, 170 stimuli (seconds; for tests)
  demo   12,000 maps, 4 subjects, ~2,900 stimuli, 360 shared (about 30 s; default data)
  full   213,000 maps, 8 subjects, 73,000 stimuli: NSD's size (streamed to shards)

examples:
  boldgpt data simulate sim-demo
  boldgpt data simulate sim-ci --preset ci --snr 1.0 --seed 3 --figure sim-ci.png
  boldgpt data simulate sim-nsd --preset demo --design nsd_trial_metadata.parquet \\
      --mask nsd_flat_mask.npy --subjects subj01,subj02 --validate
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``simulate`` to a subparsers object (the ``boldgpt data`` group)."""
    p = subparsers.add_parser(
        "simulate",
        help="write the embedded simulated dataset (NSD-Flat format)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output directory")
    p.add_argument(
        "--preset",
        default="demo",
        choices=("ci", "demo", "full"),
        help="dataset size (default: demo)",
    )
    p.add_argument(
        "--mask", type=Path, metavar="FILE",
        help="bool (215, 200) .npy cortex mask (default: the procedural two-hemisphere mask)",
    )  # fmt: skip
    p.add_argument(
        "--design", type=Path, metavar="FILE",
        help="schedule table (.parquet/.csv) with columns sub, ses, trial_id, nsd_id like "
        "nsd_trial_metadata.parquet; subsampled to the preset's size (default: generated)",
    )  # fmt: skip
    subjects = p.add_mutually_exclusive_group()
    add_subjects(subjects)
    subjects.add_argument(
        "--num-subjects", type=int, metavar="N",
        help="simulate the first N subjects (default: the preset's number)",
    )  # fmt: skip
    p.add_argument(
        "--snr", type=float,
        help="mean single-trial signal/noise variance ratio over the mask (default: 0.5)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--image-size", type=int, metavar="PX", help="stimulus side in pixels (default: 256)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset in OUT_DIR"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--figure", type=Path, metavar="PNG", help="also write an overview figure")
    p.add_argument(
        "--validate", action="store_true",
        help="run the science checks (reliability vs SNR, smoothness, subject differences, "
        "category regions, ridge on true features), print them and save OUT_DIR/validation.json",
    )  # fmt: skip
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from boldgpt.sim import simulate_dataset

    t0 = time.perf_counter()
    root = simulate_dataset(
        args.out_dir,
        args.preset,
        mask=args.mask,
        design=args.design,
        subjects=args.subjects if args.subjects is not None else args.num_subjects,
        snr=args.snr,
        seed=args.seed,
        image_size=args.image_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    info = json.loads((root / "simulation.json").read_text())
    splits = info["splits"]
    print(
        f"{root}: {splits['train']} train + {splits['test']} test maps "
        f"({info['val_rows']} train rows show shared images), {info['num_stimuli']} stimuli, "
        f"subjects {info['subjects']}, SNR {info['snr']} "
        f"(ready in {time.perf_counter() - t0:.1f} s)"
    )
    if args.figure:
        from boldgpt.viz.simulate import plot_simulation

        plot_simulation(root, args.figure)
        print(f"figure: {args.figure}")
    if args.validate:
        from boldgpt.sim.validate import validate_simulation
        from boldgpt.utils.io import write_json

        metrics = validate_simulation(root, progress=not args.no_progress)
        width = max(map(len, metrics))
        for key, value in metrics.items():
            print(f"  {key:<{width}}  {value:.4g}")
        write_json(root / "validation.json", metrics)
    return 0

"""``boldgpt data``: look at a data source (``inspect``), build its training cache
(``cache``) and, from the simulator's module, generate the embedded dataset (``simulate``)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from boldgpt.cli.options import add_source, add_subjects

if TYPE_CHECKING:
    from boldgpt.data.inspect import SourceSummary

PATCH_SIZES = (10, 16)
"""Patch sides (pixels) whose counts ``inspect`` prints."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    group = subparsers.add_parser(
        "data",
        help="inspect, cache or simulate NSD-Flat data",
        description="Work with NSD-Flat data sources: inspect, cache, simulate.",
    )
    sub = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda args: group.print_help() or 2)

    p = sub.add_parser(
        "inspect",
        help="print subjects, trials per split, mask and patch counts; draw example maps",
        description=(
            "Summarize a data source: subjects, trials per split and subject, stimuli, the "
            "cortex mask (pixels, patches at 10 and 16 px) and write a PNG of example maps "
            "beside their stimuli. Reads only metadata columns and a few maps, so it is "
            "quick even for the full dataset."
        ),
    )
    add_source(p)
    add_subjects(p)
    p.add_argument("--mask-file", type=Path, help="a mask (.npy bool 215x200, or PNG) to use")
    p.add_argument("--out", type=Path, help="PNG of examples (default: ./<source>_examples.png)")
    p.add_argument("--examples", type=int, default=6, help="example maps to draw (default 6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "cache",
        help="decode maps (and resized stimuli) once into memory-mapped arrays for training",
        description=(
            "Build (or reuse) the memory-mapped uint8 cache of a source that training reads: "
            "one array of maps per split, ids, the mask and optionally every stimulus resized "
            "once. It is keyed by source and options, rebuilt when the source's files "
            "change, and written atomically (an interrupted build leaves nothing usable). "
            "Prints the cache directory."
        ),
    )
    add_source(p)
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val", "test"],
        choices=["train", "val", "test"],
        help="splits to cache (default: all three)",
    )
    add_subjects(p)
    p.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="also cache the stimuli, centre-cropped and resized to PX x PX (e.g. 224)",
    )
    p.add_argument("--cache-root", type=Path, help="parent of caches (default $BOLDGPT_HOME/cache)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cache)

    try:
        simulate = importlib.import_module("boldgpt.cli.simulate")
    except ModuleNotFoundError as exc:
        if exc.name != "boldgpt.cli.simulate":
            raise
    else:
        simulate.register(sub)

    from boldgpt.cli import surface  # `data flatten` and `data to-surface`

    surface.register(sub)


# --------------------------------------------------------------------------- cache


def _cache(args: argparse.Namespace) -> int:
    from boldgpt.data.cache import build_cache, cache_path, check_cache
    from boldgpt.data.sources import resolve_source

    src = resolve_source(args.source, progress=not args.no_progress)
    params = {"splits": args.splits, "subjects": args.subjects, "image_size": args.image_size}
    marker = cache_path(src, cache_root=args.cache_root, **params) / "COMPLETE"
    before = marker.stat().st_mtime_ns if marker.exists() else None
    out = build_cache(
        src,
        **params,
        cache_root=args.cache_root,
        num_workers=args.workers,
        rebuild=args.rebuild,
        progress=not args.no_progress,
    )
    meta = check_cache(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for split, info in meta["splits"].items():
        print(f"{split:>5}: {info['count']:,} maps")
    if meta["images"]:
        print(f"stimuli: {meta['images']['count']:,} at {meta['images']['size']} px")
    n = sum(info["count"] for info in meta["splits"].values())
    n += meta["images"]["count"] if meta["images"] else 0
    built = meta["build_seconds"]
    if (out / "COMPLETE").stat().st_mtime_ns != before:
        rate = n / max(built, 1e-9)
        print(f"built in {built:.1f} s ({rate:,.0f} PNG/s decoded), {size / 1e6:,.1f} MB")
    else:
        print(f"reused a valid cache ({size / 1e6:,.1f} MB)")
    print(out)
    return 0


# --------------------------------------------------------------------------- inspect


def _inspect(args: argparse.Namespace) -> int:
    from boldgpt.data import schema
    from boldgpt.data.inspect import inspect_source
    from boldgpt.patching import num_patches

    info = inspect_source(
        args.source, subjects=args.subjects, mask_file=args.mask_file, progress=not args.no_progress
    )
    src = info.source
    print(f"source: {src.spec} ({src.kind}: {src.root})")
    for hub_split, files in src.files.items():
        size = sum(f.stat().st_size for f in files)
        print(f"  hub split {hub_split}: {len(files)} shard(s), {size / 1e6:,.1f} MB")
    names = ", ".join(schema.subject_name(s) for s in info.subjects)
    print(f"subjects: {len(info.subjects)} ({names})")

    splits = list(info.trials)
    print(f"{'trials':<10}" + "".join(f"{s:>10}" for s in splits) + f"{'total':>10}")
    for s in info.subjects:
        counts = [info.trials[split][s] for split in splits]
        cells = "".join(f"{c:>10,}" for c in counts)
        print(f"  {schema.subject_name(s):<8}{cells}{sum(counts):>10,}")
    totals = [sum(info.trials[split].values()) for split in splits]
    print(f"  {'all':<8}" + "".join(f"{c:>10,}" for c in totals) + f"{sum(totals):>10,}")
    print("unique stimuli: " + ", ".join(f"{split} {n:,}" for split, n in info.stimuli.items()))

    mask = info.mask
    print(
        f"mask: {int(mask.sum()):,} of {mask.size:,} pixels ({100 * mask.mean():.1f}%), "
        f"from {info.mask_from}"
    )
    for p in PATCH_SIZES:
        touched, interior = num_patches(mask, p)
        print(f"  {p:>2} px patches: {touched} touched, {interior} fully inside")

    out = args.out or Path(f"{src.name}_examples.png")
    k = _write_examples(info, out, args.examples)
    print(f"figure: {out} ({k} example maps)")
    return 0


def _write_examples(summary: SourceSummary, out: Path, count: int) -> int:
    """Draw example maps of the source beside their stimuli; returns how many."""
    from boldgpt.data.inspect import example_maps
    from boldgpt.viz.data import plot_examples

    ex = example_maps(summary, count)
    if ex is None:
        return 0
    plot_examples(
        ex.maps,
        out,
        images=ex.images if any(im is not None for im in ex.images) else None,
        mask=summary.mask,
        titles=ex.titles,
        suptitle=f"{summary.source.spec}: {ex.split} examples",
    )
    return len(ex.maps)

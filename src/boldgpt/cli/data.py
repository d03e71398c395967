"""``boldgpt data``: look at a data source (``inspect``), build its training cache
(``cache``) and, from the simulator's module, generate the embedded dataset (``simulate``)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

SOURCE_HELP = (
    "data source: 'sim:<preset>' (embedded simulated dataset, generated on first use, e.g. "
    "sim:ci, sim:demo), a local directory in the NSD-Flat hub layout (data/train-*.parquet, "
    "data/test-*.parquet), or a hub id such as clane9/NSD-Flat (needs network). "
    "Default: %(default)s"
)
SUBJECTS_HELP = "subjects to keep: names (subj01 subj02) or 0-based subject_id values (0 1)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    from boldgpt.data.nsd_flat import DEFAULT_SOURCE

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
    p.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help=SOURCE_HELP)
    p.add_argument("--subjects", nargs="+", metavar="S", help=SUBJECTS_HELP)
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
    p.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help=SOURCE_HELP)
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val", "test"],
        choices=["train", "val", "test"],
        help="splits to cache (default: all three)",
    )
    p.add_argument("--subjects", nargs="+", metavar="S", help=SUBJECTS_HELP)
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


# --------------------------------------------------------------------------- cache


def _cache(args: argparse.Namespace) -> int:
    from boldgpt.data.cache import build_cache, cache_path, check_cache
    from boldgpt.data.nsd_flat import resolve_source

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


def inspect_source(
    source: str,
    *,
    subjects: list[str] | None = None,
    mask_file: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Counts and mask statistics of a source (what ``boldgpt data inspect`` prints)."""
    import numpy as np

    from boldgpt.data.nsd_flat import SPLITS, index_split, load_mask, resolve_source
    from boldgpt.patching import num_patches

    src = resolve_source(source, progress=progress)
    indexes = {}
    for split in SPLITS:
        if src.files["train" if split != "test" else "test"]:
            indexes[split] = index_split(src, split, subjects)
    sids = sorted({int(s) for ix in indexes.values() for s in np.unique(ix.meta["subject_id"])})
    trials = {
        split: {s: int((ix.meta["subject_id"] == s).sum()) for s in sids}
        for split, ix in indexes.items()
    }
    stimuli = {split: int(len(np.unique(ix.meta["nsd_id"]))) for split, ix in indexes.items()}
    if mask_file is not None:
        mask_from = str(mask_file)
    elif (src.root / "mask.npy").exists():
        mask_from = str(src.root / "mask.npy")
    else:
        mask_from = "the maps (estimated: pixels that are not constant background)"
    mask = load_mask(src, mask_file, progress=progress)
    patches = {p: num_patches(mask, p) for p in (10, 16)}
    return {
        "source": src,
        "indexes": indexes,
        "subjects": sids,
        "trials": trials,
        "stimuli": stimuli,
        "mask": mask,
        "mask_from": mask_from,
        "patches": patches,
    }


def _inspect(args: argparse.Namespace) -> int:
    from boldgpt.data import schema

    info = inspect_source(
        args.source,
        subjects=args.subjects,
        mask_file=args.mask_file,
        progress=not args.no_progress,
    )
    src = info["source"]
    print(f"source: {src.spec} ({src.kind}: {src.root})")
    for hub_split, files in src.files.items():
        size = sum(f.stat().st_size for f in files)
        print(f"  hub split {hub_split}: {len(files)} shard(s), {size / 1e6:,.1f} MB")
    names = ", ".join(schema.subject_name(s) for s in info["subjects"])
    print(f"subjects: {len(info['subjects'])} ({names})")

    splits = list(info["trials"])
    header = f"{'trials':<10}" + "".join(f"{s:>10}" for s in splits) + f"{'total':>10}"
    print(header)
    for s in info["subjects"]:
        counts = [info["trials"][split][s] for split in splits]
        cells = "".join(f"{c:>10,}" for c in counts)
        print(f"  {schema.subject_name(s):<8}{cells}{sum(counts):>10,}")
    totals = [sum(info["trials"][split].values()) for split in splits]
    print(f"  {'all':<8}" + "".join(f"{c:>10,}" for c in totals) + f"{sum(totals):>10,}")
    stim = ", ".join(f"{split} {n:,}" for split, n in info["stimuli"].items())
    print(f"unique stimuli: {stim}")

    mask = info["mask"]
    print(
        f"mask: {int(mask.sum()):,} of {mask.size:,} pixels ({100 * mask.mean():.1f}%), "
        f"from {info['mask_from']}"
    )
    for p, (touched, interior) in info["patches"].items():
        print(f"  {p:>2} px patches: {touched} touched, {interior} fully inside")

    out = args.out or Path(f"{src.name}_examples.png")
    k = _write_examples(info, out, args.examples)
    print(f"figure: {out} ({k} example maps)")
    return 0


def _write_examples(info: dict[str, Any], out: Path, count: int) -> int:
    """Draw ``count`` trials spread evenly over the first non-empty split (val first:
    shared stimuli, seen by every subject)."""
    import numpy as np
    import pyarrow.parquet as pq

    from boldgpt.data import schema
    from boldgpt.data.nsd_flat import decode_activity, decode_image, read_rows
    from boldgpt.viz.data import plot_examples

    indexes = info["indexes"]
    split = next((s for s in ("val", "train", "test") if s in indexes and len(indexes[s])), None)
    if split is None or count < 1:
        return 0
    index = indexes[split]
    positions = np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).astype(int))
    maps, images, titles = [], [], []
    for i in positions.tolist():
        path, row = index.locate(i)
        has_image = "image" in pq.read_schema(path).names
        values = read_rows(path, [row], ["activity", "image"] if has_image else ["activity"])
        act = decode_activity(values["activity"][0], f"{path} row {row} column 'activity'")
        maps.append(schema.dequantize(act))
        images.append(
            decode_image(values["image"][0], f"{path} row {row} column 'image'")
            if has_image
            else None
        )
        sid, nsd = int(index.meta["subject_id"][i]), int(index.meta["nsd_id"][i])
        titles.append(f"{schema.subject_name(sid)} nsd {nsd}")
    plot_examples(
        np.stack(maps),
        out,
        images=images if any(im is not None for im in images) else None,
        mask=info["mask"],
        titles=titles,
        suptitle=f"{info['source'].spec}: {split} examples",
    )
    return len(maps)

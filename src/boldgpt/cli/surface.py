"""``boldgpt data flatten`` and ``boldgpt data to-surface``: surface maps -> an NSD-Flat-layout
dataset, and flat maps (e.g. a model's outputs) -> GIfTI per hemisphere.

Registered as subcommands of ``boldgpt data`` (by :mod:`boldgpt.cli.data`), because
flattening produces a data source like ``simulate`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FLATTEN_EPILOG = """\
manifest (CSV with a header; one row per map, or per file pair for all its maps):
  left,right         the hemispheres' files: GIfTI (.func.gii, .shape.gii, ...), MGH/MGZ
                     or .npy (V,) / (N, V); fsaverage6/fsaverage data are reduced to
                     fsaverage5 (nested meshes: their first 10,242 vertices)
  subject,session    required: subject (0-based id or subj01) and session number
  map                optional: index of the map in the files (default: every map)
  stimulus           optional: stimulus id (nsd_id); ';'-separated for several maps
  image              optional: stimulus picture (stored as PNG)
  shared             optional: true = validation split (NSD's shared1000 convention)
  split              optional: train or test

examples:
  boldgpt data flatten flat_ds --left sub-01_hemi-L.func.gii --right sub-01_hemi-R.func.gii \\
      --subject subj01 --session 1
  boldgpt data flatten flat_ds --manifest maps.csv --test-sessions 1
  boldgpt train data.source=flat_ds
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flatten`` and ``to-surface`` to the ``data`` subcommands."""
    _register_flatten(sub)
    _register_to_surface(sub)


def _register_flatten(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flatten",
        help="turn per-hemisphere surface maps (GIfTI, MGH, .npy) into an NSD-Flat dataset",
        description=(
            "Rasterize surface maps onto NSD-Flat's 215x200 canvas (1 mm pixels, both "
            "hemispheres side by side) on real fsaverage5 flat geometry shipped with nilearn "
            "(or your flat surfaces), z-score per session, code as uint8 and write a dataset "
            "in the NSD-Flat layout (data/*.parquet, mask.npy) that boldgpt's loader, cache "
            "and training read as a source. The mask is the pixels covered by the ROI's "
            "triangles (default ROI: occipital cortex, pial y < -60 mm on fsaverage5). "
            "Nothing is downloaded."
        ),
        epilog=FLATTEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="dataset directory to write")
    p.add_argument("--manifest", type=Path, help="CSV of maps and their metadata (see below)")
    p.add_argument("--left", type=Path, help="left-hemisphere file (instead of a manifest)")
    p.add_argument("--right", type=Path, help="right-hemisphere file (with --left)")
    p.add_argument("--subject", default="0", help="with --left/--right: subject (default 0)")
    p.add_argument(
        "--session", type=int, default=0, help="with --left/--right: session (default 0)"
    )
    p.add_argument(
        "--flat-left", type=Path, help="flat GIfTI surface (default: nilearn fsaverage5)"
    )
    p.add_argument("--flat-right", type=Path, help="flat GIfTI surface of the right hemisphere")
    p.add_argument(
        "--roi-left", type=Path, help="vertex mask (.label, or a map file: nonzero = inside)"
    )
    p.add_argument("--roi-right", type=Path, help="vertex mask of the right hemisphere")
    p.add_argument(
        "--placement",
        choices=["fit", "pycortex", "none"],
        default="fit",
        help="fit: ROI patches side by side, centred, 1 mm = 1 px (shrunk only if too big); "
        "pycortex: hemispheres shifted to touch at x=0, as pycortex merges flat maps; "
        "none: flat coordinates are canvas mm already (default: fit)",
    )
    p.add_argument(
        "--no-zscore",
        action="store_true",
        help="keep values (already z/t maps) instead of z-scoring each vertex per session",
    )
    p.add_argument(
        "--nan",
        choices=["mask", "error"],
        default="mask",
        help="NaN/inf at ROI vertices: drop those vertices from the mask with a warning "
        "(mask, default) or stop (error)",
    )
    p.add_argument(
        "--test-sessions", type=int, default=0, help="each subject's last K sessions -> test split"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_flatten)


def _register_to_surface(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "to-surface",
        help="write flat maps (.npy, e.g. from `boldgpt generate`) as GIfTI per hemisphere",
        description=(
            "Send flat maps back to the cortical surface: each vertex gets the bilinear "
            "interpolation of the mask pixels around its flat position. Input: a .npy of "
            "(215, 200) or (B, 215, 200) z-values (uint8 maps are decoded first). Output: "
            "OUT_hemi-L.func.gii and OUT_hemi-R.func.gii, one data array per map, on the "
            "mesh of the geometry (fsaverage5 for the default). Vertices outside the ROI "
            "get --fill."
        ),
    )
    p.add_argument("maps", type=Path, help=".npy file of flat maps")
    p.add_argument("out", type=Path, help="output prefix, e.g. results/samples")
    p.add_argument(
        "--geometry",
        type=Path,
        help="a dataset written by `data flatten` (or its surface_geometry.npz); default: "
        "the default geometry (fsaverage5 flat, occipital ROI, fit)",
    )
    p.add_argument(
        "--fill", type=float, default=float("nan"), help="value outside the ROI (default NaN)"
    )
    p.set_defaults(func=_to_surface)


def _flatten(args: argparse.Namespace) -> int:
    from boldgpt.errors import ConfigError
    from boldgpt.surface.flatten import flatten_dataset, read_manifest

    if args.manifest is not None and (args.left or args.right):
        raise ConfigError("give either --manifest or --left/--right, not both")
    if args.manifest is not None:
        entries = read_manifest(args.manifest)
    elif args.left and args.right:
        entries = [
            {
                "left": args.left,
                "right": args.right,
                "subject": args.subject,
                "session": args.session,
            }
        ]
    else:
        raise ConfigError("give --manifest CSV, or both --left and --right files")
    summary = flatten_dataset(
        args.out,
        entries,
        flat=(args.flat_left, args.flat_right),
        roi=(args.roi_left, args.roi_right),
        placement=args.placement,
        zscore=not args.no_zscore,
        nan=args.nan,
        test_sessions=args.test_sessions,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{split} {n:,}" for split, n in summary["maps"].items())
    geo = summary["geometry"]
    print(f"maps: {counts}; subjects: {len(summary['subjects'])}")
    print(f"mask: {summary['mask_pixels']:,} pixels", end="; ")
    print(f"placement {geo['placement']}, scale {geo['scale']:.3g}")
    print(args.out)
    return 0


def _to_surface(args: argparse.Namespace) -> int:
    import numpy as np

    from boldgpt.errors import DataError
    from boldgpt.surface.flatten import maps_to_surface
    from boldgpt.surface.geometry import SurfaceGeometry, build_geometry
    from boldgpt.surface.io import write_gifti

    if not args.maps.is_file():
        raise DataError(f"maps file {args.maps} does not exist")
    try:
        maps = np.load(args.maps, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{args.maps}: cannot read as .npy ({exc})") from exc
    geometry = SurfaceGeometry.load(args.geometry) if args.geometry else build_geometry()
    try:
        left, right = maps_to_surface(maps, geometry, fill=args.fill)
    except DataError as exc:
        raise DataError(f"{args.maps}: {exc}") from None
    for hemi, values in (("L", left), ("R", right)):
        path = args.out.with_name(f"{args.out.name}_hemi-{hemi}.func.gii")
        write_gifti(path, values, "left" if hemi == "L" else "right")
        print(path)
    print(f"{len(left)} map(s), {left.shape[1]:,} + {right.shape[1]:,} vertices")
    return 0

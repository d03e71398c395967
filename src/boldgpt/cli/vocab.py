"""``boldgpt fit-vocab``: fit the k-means patch vocabulary of categorical models."""

from __future__ import annotations

import argparse
from pathlib import Path

from boldgpt.cli.options import add_source, add_subjects


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit-vocab",
        help="fit a k-means vocabulary of map patches (for categorical models)",
        description=(
            "Fit the vocabulary of a categorical (token) model: k-means on the patches "
            "that lie fully inside the cortex mask, from a random sample of training maps. "
            "Writes the vocabulary (safetensors, with its patch size and source) and a "
            "picture of it (PNG, tokens laid out on a grid with similar tokens nearby)."
        ),
    )
    add_source(p)
    p.add_argument("--out", type=Path, default=Path("vocab.safetensors"), help="vocabulary file")
    p.add_argument("--vocab-size", type=int, default=1024, help="number of tokens (default 1024)")
    p.add_argument("--patch-size", type=int, default=10, help="patch side in pixels (default 10)")
    p.add_argument("--maps", type=int, default=4000, help="training maps to sample (default 4000)")
    add_subjects(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (sampling and k-means)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_fit_vocab)


def _fit_vocab(args: argparse.Namespace) -> int:
    import torch

    from boldgpt.data.cache import open_cached
    from boldgpt.data.transforms import dequantize
    from boldgpt.errors import DataError
    from boldgpt.patching import MaskedPatchify
    from boldgpt.tokenizer import KMeansTokenizer, sample_interior_patches, save_tokenizer
    from boldgpt.viz.vocab import plot_vocab

    if args.vocab_size < 2 or args.maps < 1 or args.patch_size < 1:
        raise DataError("--vocab-size must be >= 2, --maps and --patch-size >= 1")
    train = open_cached(args.source, "train", subjects=args.subjects, progress=not args.no_progress)
    n = min(args.maps, len(train))
    patchify = MaskedPatchify(train.mask, args.patch_size, ordering="raster")
    patches = sample_interior_patches(
        lambda idx: dequantize(train[idx]["activity"]), len(train), n, patchify, args.seed
    )
    if len(patches) < args.vocab_size:
        raise DataError(
            f"only {len(patches)} interior patches from {n} maps for {args.vocab_size} tokens: "
            "use more --maps or a smaller --vocab-size"
        )
    print(
        f"fitting {args.vocab_size} tokens on {len(patches):,} interior {args.patch_size}x"
        f"{args.patch_size} patches from {n:,} training maps of {args.source}"
    )
    tokenizer = KMeansTokenizer(args.vocab_size, patchify.dim).fit(patches, seed=args.seed)
    recon = tokenizer.decode(tokenizer.encode(patches))
    residual = (recon - patches).pow(2).sum() / (patches - patches.mean(0)).pow(2).sum()
    explained = 1.0 - float(residual)
    used = int(torch.unique(tokenizer.encode(patches)).numel())
    save_tokenizer(
        tokenizer,
        args.out,
        patch_size=args.patch_size,
        source=str(args.source),
        num_maps=n,
        num_patches=len(patches),
        seed=args.seed,
    )
    picture = args.out.with_suffix(".png")
    plot_vocab(tokenizer.vocab.numpy(), args.patch_size, picture)
    print(f"tokens explain {100 * explained:.1f}% of patch variance; {used} tokens in use")
    print(f"wrote {args.out} and {picture}")
    return 0

"""``boldgpt generate MODEL_DIR`` (sample or complete maps) and ``boldgpt fit-pca``
(the MaskedPCA baseline)."""

from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path
from typing import Any

OBSERVE = ("prefix", "random", "left", "right")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample new maps from a model, or complete partially observed maps",
        description=(
            "Sample brain-activity maps from a trained model (a model directory or hub "
            "id), or, with --complete, show the model part of real maps and let it fill "
            "in the rest. Writes arrays (.npy, z-values, NaN-free, zero outside the "
            "mask) and a figure to OUT."
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              boldgpt generate runs/demo/train/model --out runs/demo/gen --num 8
              boldgpt generate runs/demo/train/model --complete --observe left --num 6
              boldgpt generate MODEL --complete --observe prefix --fraction 0.25 --order random

            --observe picks the observed patches of each real map: 'prefix' = the first
            FRACTION of the model's fixed order (the centre of the map for a radial
            order), 'random' = a random FRACTION of the patches, 'left' / 'right' = one
            side of the flat map (one hemisphere), the model completes the other.
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", help="model directory (or hub id)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="output folder")
    p.add_argument("--num", type=int, default=8, help="maps to generate (default 8)")
    p.add_argument("--subject", type=int, default=None, help="subject id (default: group)")
    p.add_argument(
        "--order",
        default="fixed",
        help="generation order of the patches: fixed, random (shuffled models only)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="token sampling temperature")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument(
        "--noise",
        choices=["auto", "residual", "white", "none"],
        default="auto",
        help="continuous models: draw each patch from N(prediction, residual covariance "
        "fitted after training) ('residual'), add independent noise ('white'), or feed back "
        "the predicted mean ('none': smooth, deterministic). auto: residual when the model "
        "has it, else none",
    )
    p.add_argument(
        "--noise-scale", type=float, default=1.0, help="multiplies the noise std (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g = p.add_argument_group("completion")
    g.add_argument("--complete", action="store_true", help="complete real maps instead")
    g.add_argument("--source", default="sim:demo", help="data source of the real maps")
    g.add_argument("--split", default="val", help="split of the real maps (default val)")
    g.add_argument("--observe", choices=OBSERVE, default="prefix", help="observed patches")
    g.add_argument("--fraction", type=float, default=0.3, help="observed fraction")
    g.add_argument("--pca", type=Path, default=None, help="also show a MaskedPCA completion")
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "fit-pca",
        help="fit the MaskedPCA baseline on training maps",
        description=(
            "Fit a PCA of the in-mask pixels of training maps (the linear baseline that "
            "every model is compared with; used by `boldgpt demo` and reports) and save it "
            "as a safetensors file, with a figure of the mean map, the leading components "
            "and the explained variance."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("pca.safetensors"), help="output file")
    p.add_argument("--source", default="sim:demo", help="data source (default sim:demo)")
    p.add_argument("--split", default="train", help="split to fit on (default train)")
    p.add_argument("--subjects", type=int, nargs="*", default=None, help="subject ids")
    p.add_argument("--components", type=int, default=128, help="number of components K")
    p.add_argument("--max-maps", type=int, default=10_000, help="maps to fit on (random subset)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_fit_pca)


# ---------------------------------------------------------------------------- helpers


def load_split_maps(
    source: str,
    split: str,
    max_maps: int | None = None,
    seed: int = 0,
    subjects: list[int] | None = None,
    first: bool = False,
):
    """Maps (M, H, W) float32 z-values, subject ids (M,) and the mask of a split, from
    the uint8 cache (built if needed). ``max_maps`` picks a seeded random subset
    (``first``: the first ones), kept in dataset order."""
    import numpy as np
    import torch

    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from boldgpt.data.transforms import dequantize

    cache_dir = build_cache(source, splits=_cache_splits(split), subjects=subjects)
    ds = CachedNSDFlat(cache_dir, split, images=False)
    n = len(ds)
    if n == 0:
        from boldgpt.errors import DataError

        raise DataError(f"{source} has no maps in split {split!r}")
    if max_maps is not None and max_maps < n:
        idx = (
            np.arange(max_maps)
            if first
            else np.sort(np.random.default_rng(seed).choice(n, max_maps, replace=False))
        )
    else:
        idx = np.arange(n)
    maps, sids = [], []
    for start in range(0, len(idx), 1024):
        batch = ds.__getitems__(idx[start : start + 1024])
        maps.append(dequantize(batch["activity"]))
        sids.append(batch["subject_id"])
    return torch.cat(maps), torch.cat(sids), ds.mask


def _cache_splits(split: str) -> list[str]:
    # The demo and training cache train+val together; reuse that cache when possible.
    return ["train", "val"] if split in ("train", "val") else [split]


def observed_patches(model_patchify: Any, batch_size: int, how: str, fraction: float, seed: int):
    """(B, N) bool observed patches of a completion prompt (see ``--observe``)."""
    import torch

    p = model_patchify
    N = p.num_patches
    if not 0 < fraction < 1 and how in ("prefix", "random"):
        raise ValueError(f"--fraction must be in (0, 1); got {fraction}")
    k = max(1, math.ceil(fraction * N))
    if how == "prefix":
        obs = torch.zeros(N, dtype=torch.bool)
        obs[:k] = True
        return obs.expand(batch_size, N).clone()
    if how == "random":
        gen = torch.Generator().manual_seed(seed)
        keys = torch.rand(batch_size, N, generator=gen)
        return keys.argsort(1).argsort(1) < k
    if how in ("left", "right"):
        cols = p.patch_indices.cpu() % p.grid[1]
        left_pad = p.padding[0]
        centre_x = cols.double() * p.patch_size + (p.patch_size - 1) / 2 - left_pad
        xs = p.mask.nonzero()[:, 1].double().cpu()
        midline = float(xs.mean())
        obs = centre_x < midline if how == "left" else centre_x >= midline
        return obs.expand(batch_size, N).clone()
    raise ValueError(f"unknown --observe {how!r}; expected one of {OBSERVE}")


# ---------------------------------------------------------------------------- commands


def run_generate(args: argparse.Namespace) -> int:
    from boldgpt.engine.distributed import resolve_device
    from boldgpt.utils.threads import cpu_threads

    device = resolve_device(args.device)
    # token-by-token decoding of a few maps: one thread is as fast, and far faster when
    # other processes use the cores
    with cpu_threads(1 if device.type == "cpu" else None):
        return _generate(args, device)


def _generate(args: argparse.Namespace, device: Any) -> int:
    import numpy as np
    import torch

    from boldgpt import generate
    from boldgpt.models.registry import load_model
    from boldgpt.viz import train as viz

    if args.num < 1:
        raise ValueError(f"--num must be >= 1; got {args.num}")
    model = load_model(args.model, device=device)
    p = model.patchify
    mask = p.mask.cpu().numpy()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    order = args.order
    if order not in ("fixed", "random"):
        raise ValueError(f"--order must be 'fixed' or 'random'; got {order!r}")
    noise = None if args.noise == "none" else args.noise
    if model.tokenizer is not None:
        noise = None
    elif noise == "auto":
        fitted = bool(model.residual_cov.diagonal().gt(0).any())
        noise = "residual" if fitted else None
    draw = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        noise=noise,
        noise_scale=args.noise_scale,
        generator=gen,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.complete:
        samples = generate.sample(model, args.num, subject_id=args.subject, order=order, **draw)
        samples = samples.float().cpu().numpy()
        _save_npy(args.out / "samples.npy", samples)
        fig = viz.samples_figure(None, samples, mask, cols=args.num, title=_title(args, model))
        viz.save(fig, args.out / "samples.png")
        print(f"wrote {args.num} samples to {args.out}/samples.npy and samples.png")
        return 0

    maps, sids, _ = load_split_maps(args.source, args.split, args.num, args.seed, first=True)
    observed = observed_patches(p, len(maps), args.observe, args.fraction, args.seed)
    subject = sids if args.subject is None else args.subject
    patches = p(maps.to(device))
    done = generate.complete(
        model, patches, observed.to(device), subject_id=subject, order=order, **draw
    )
    completions = p.inverse(done).float().cpu().numpy()
    observed_px = p.inverse_values(observed.float().to(device)).cpu().numpy() > 0.5
    real = p.inverse(patches).cpu().numpy()
    pca_maps = None
    if args.pca is not None:
        from boldgpt.models.pca import load_pca

        pca = load_pca(args.pca)
        coefs = pca.encode_partial(maps, torch.from_numpy(observed_px))
        pca_maps = np.where(observed_px, real, pca.decode(coefs).numpy())
    for name, arr in (("completions", completions), ("real", real), ("observed", observed_px)):
        _save_npy(args.out / f"{name}.npy", arr)
    fig = viz.completions_figure(
        real, observed_px, completions, mask, title=_title(args, model), pca=pca_maps
    )
    viz.save(fig, args.out / "completions.png")
    print(
        f"completed {len(maps)} {args.split} maps ({args.observe} observed); wrote "
        f"completions.npy, real.npy, observed.npy and completions.png to {args.out}"
    )
    return 0


def _title(args: argparse.Namespace, model: Any) -> str:
    what = "completions" if args.complete else "samples"
    extra = f", observe={args.observe}" if args.complete else ""
    return f"{type(model).__name__} {what} (order={args.order}{extra}, seed={args.seed})"


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    from boldgpt.utils.io import atomic_write

    with atomic_write(path, "wb") as f:
        np.save(f, array)


def run_fit_pca(args: argparse.Namespace) -> int:
    import time

    from boldgpt.models.pca import MaskedPCA, save_pca
    from boldgpt.viz import train as viz

    maps, _, mask = load_split_maps(
        args.source, args.split, args.max_maps, args.seed, subjects=args.subjects
    )
    t0 = time.perf_counter()
    pca = MaskedPCA(mask, args.components).fit(maps, seed=args.seed)
    seconds = time.perf_counter() - t0
    save_pca(pca, args.out)
    total = float(maps[:, mask].var(dim=0, unbiased=True).sum())
    explained = float(pca.explained_variance.sum()) / total
    fig = viz.pca_figure(pca, title=f"MaskedPCA of {len(maps)} {args.split} maps ({args.source})")
    figure = args.out.with_suffix(".png")
    viz.save(fig, figure)
    print(
        f"fitted MaskedPCA ({args.components} components) on {len(maps)} maps in "
        f"{seconds:.1f}s: {explained:.1%} of the in-mask variance; wrote {args.out} and {figure}"
    )
    return 0

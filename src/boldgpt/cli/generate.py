"""``boldgpt generate MODEL_DIR`` (sample or complete maps) and ``boldgpt fit-pca``
(the MaskedPCA baseline)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from boldgpt.cli.options import add_source, add_subjects, subject_arg
from boldgpt.errors import ConfigError

OBSERVE = ("prefix", "random", "left", "right")
"""--observe choices (``boldgpt.evaluate.tasks.OBSERVE``)."""
METHODS = ("auto", "query", "autoregressive")
"""--method choices: auto or one of ``boldgpt.generate.METHODS``."""


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
              boldgpt generate MODEL --complete --observe prefix --fraction 0.25 \\
                  --method autoregressive --order random

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
    p.add_argument(
        "--subject",
        type=subject_arg,
        default=None,
        metavar="SUBJECT",
        help="generate for this subject (0-based id or NSD name, e.g. 0 or subj01); "
        "default: the group (no subject). Completions default to each map's own subject",
    )
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
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for decoding (default 1: patch-by-patch decoding is made "
        "of small products, and more threads lose much when other processes share the "
        "cores; on an idle 2-core machine both cores decoded 64 maps 1.5-1.7x faster and "
        "4 maps no faster)",
    )
    _add_completion_args(p.add_argument_group("completion"))
    p.set_defaults(func=run_generate)
    _register_fit_pca(subparsers)


def _add_completion_args(g: argparse._ArgumentGroup) -> None:
    """``boldgpt generate --complete`` and its options."""
    g.add_argument("--complete", action="store_true", help="complete real maps instead")
    add_source(g, "where the real maps come from:")
    add_subjects(g)
    g.add_argument("--split", default="val", help="split of the real maps (default val)")
    g.add_argument("--observe", choices=OBSERVE, default="prefix", help="observed patches")
    g.add_argument("--fraction", type=float, default=0.3, help="observed fraction")
    g.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="autoregressive models: 'query' predicts every hidden patch directly from "
        "the observed ones, in one pass (the best guess of each); 'autoregressive' fills "
        "them in one after another in --order, feeding predictions (or draws) back. "
        "auto: query for shuffled-order models, else autoregressive; BEiT models always "
        "decode in parallel (default auto)",
    )
    g.add_argument(
        "--prompt-order",
        choices=["fixed", "random"],
        default="fixed",
        help="autoregressive models: the order the observed patches are fed in (default fixed)",
    )
    g.add_argument(
        "--num-orders",
        type=int,
        default=1,
        help="--method query with --prompt-order random: average the one-pass predictions "
        "over this many random prompt orders (an ensemble; default 1)",
    )
    g.add_argument("--pca", type=Path, default=None, help="also show a MaskedPCA completion")


def _register_fit_pca(subparsers: argparse._SubParsersAction) -> None:
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
    add_source(p)
    p.add_argument("--split", default="train", help="split to fit on (default train)")
    add_subjects(p)
    p.add_argument("--components", type=int, default=128, help="number of components K")
    p.add_argument("--max-maps", type=int, default=10_000, help="maps to fit on (random subset)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_fit_pca)


# ---------------------------------------------------------------------------- commands


def run_generate(args: argparse.Namespace) -> int:
    from boldgpt.engine.distributed import resolve_device
    from boldgpt.utils.threads import cpu_threads

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1; got {args.threads}")
    device = resolve_device(args.device)
    with cpu_threads(args.threads if device.type == "cpu" else None):
        return _generate(args, device)


def _generate(args: argparse.Namespace, device: Any) -> int:
    import torch

    from boldgpt.models.registry import load_model

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1; got {args.num}")
    if args.order not in ("fixed", "random"):
        raise ConfigError(f"--order must be 'fixed' or 'random'; got {args.order!r}")
    if args.num_orders < 1 or (
        args.num_orders > 1 and (args.method == "autoregressive" or args.prompt_order != "random")
    ):
        raise ConfigError(
            f"--num-orders {args.num_orders}: expected 1, or more with --prompt-order random "
            "and a one-pass --method (query, or auto for a shuffled model)"
        )
    model = load_model(args.model, device=device)
    draw = dict(
        order=args.order,
        temperature=args.temperature,
        top_k=args.top_k,
        noise=_noise(args.noise, model),
        noise_scale=args.noise_scale,
        generator=torch.Generator(device=device).manual_seed(args.seed),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    return _complete(args, model, draw) if args.complete else _sample(args, model, draw)


def _noise(choice: str, model: Any) -> str | None:
    """--noise as ``generate`` takes it: auto = residual when the model has it fitted."""
    if model.tokenizer is not None or choice == "none":
        return None
    if choice == "auto":
        return "residual" if bool(model.residual_cov.diagonal().gt(0).any()) else None
    return choice


def _sample(args: argparse.Namespace, model: Any, draw: dict[str, Any]) -> int:
    from boldgpt import generate
    from boldgpt.viz import train as viz

    samples = generate.sample(model, args.num, subject_id=args.subject, **draw)
    samples = samples.float().cpu().numpy()
    _save_npy(args.out / "samples.npy", samples)
    mask = model.patchify.mask.cpu().numpy()
    fig = viz.samples_figure(None, samples, mask, cols=args.num, title=_title(args, model))
    viz.save(fig, args.out / "samples.png")
    print(f"wrote {args.num} samples to {args.out}/samples.npy and samples.png")
    return 0


def _complete(args: argparse.Namespace, model: Any, draw: dict[str, Any]) -> int:
    import torch

    from boldgpt.data.maps import load_split_maps
    from boldgpt.evaluate import tasks
    from boldgpt.viz import train as viz

    p = model.patchify
    maps, sids, _ = load_split_maps(
        args.source, args.split, args.num, args.seed, subjects=args.subjects, first=True
    )
    observed = tasks.observed_patches(p, len(maps), args.observe, args.fraction, args.seed)
    if args.subject is not None:
        sids = torch.full_like(sids, args.subject)
    method = None if args.method == "auto" else args.method
    completions = tasks.model_completions(
        model,
        maps,
        sids,
        observed,
        method,
        prompt_order=args.prompt_order,
        num_orders=args.num_orders,
        **draw,
    )
    observed_px = tasks.observed_pixels(p, observed)
    real = p.inverse(p(maps.to(model.device))).cpu()
    pca_maps = None
    if args.pca is not None:
        from boldgpt.models.pca import load_pca

        pca_maps = tasks.pca_completions(load_pca(args.pca), maps, observed_px).numpy()
    arrays = {"completions": completions, "real": real, "observed": observed_px}
    for name, arr in arrays.items():
        _save_npy(args.out / f"{name}.npy", arr.numpy())
    mask = p.mask.cpu().numpy()
    fig = viz.completions_figure(
        real.numpy(), observed_px.numpy(), completions.numpy(), mask,
        title=_title(args, model), pca=pca_maps,
    )  # fmt: skip
    viz.save(fig, args.out / "completions.png")
    print(
        f"completed {len(maps)} {args.split} maps ({args.observe} observed, {args.method}); "
        f"wrote completions.npy, real.npy, observed.npy and completions.png to {args.out}"
    )
    return 0


def _title(args: argparse.Namespace, model: Any) -> str:
    what = "completions" if args.complete else "samples"
    extra = f", observe={args.observe}, method={args.method}" if args.complete else ""
    return f"{type(model).__name__} {what} (order={args.order}{extra}, seed={args.seed})"


def _save_npy(path: Path, array: Any) -> None:
    import numpy as np

    from boldgpt.utils.io import atomic_write

    with atomic_write(path, "wb") as f:
        np.save(f, array)


def run_fit_pca(args: argparse.Namespace) -> int:
    import time

    from boldgpt.data.maps import load_split_maps
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

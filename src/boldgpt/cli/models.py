"""``boldgpt list-models`` and ``boldgpt convert-original``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list-models",
        help="list the model names create_model() and training configs accept",
        description=(
            "List registered model names ({family}_{size}_patch{p}) with their size. "
            "Families: boldgpt (shuffled-order GPT on BOLD maps), boldbeit (masked "
            "patch prediction on BOLD maps), imagegpt / imagebeit (the same on RGB "
            "images); igpt / beit are the bare classes. Any argument can be overridden, "
            "e.g. categorical=True."
        ),
    )
    p.add_argument("pattern", nargs="?", help="only names containing this text")
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.set_defaults(func=_list_models)

    p = subparsers.add_parser(
        "convert-original",
        help="convert a checkpoint of the original boldGPT into a boldgpt model directory",
        description=(
            "Read a checkpoint of the seed boldGPT project (a .safetensors, .pt or .pth "
            "state dict, e.g. boldgpt_small_patch10.cont) and write a boldgpt model "
            "directory (config.json + model.safetensors) that boldgpt.load_model() and "
            "every command accept. The stored patch order is kept. The architecture "
            "comes from --architecture, else the file's metadata, else the tensor shapes."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="original checkpoint file")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="model directory to write")
    p.add_argument(
        "--architecture",
        metavar="JSON",
        help=(
            "the original architecture as a JSON object or a path to a JSON file, e.g. "
            '\'{"embed_dim": 384, "depth": 12, "num_heads": 6, "categorical": true}\''
        ),
    )
    p.add_argument(
        "--force", action="store_true", help="replace OUT_DIR if it is already a model directory"
    )
    p.set_defaults(func=_convert_original)


def _list_models(args: argparse.Namespace) -> int:
    from boldgpt.models.registry import list_models, model_defaults

    names = list_models(args.pattern)
    presets = {name: model_defaults(name) for name in names}
    if args.json:
        print(json.dumps(presets, indent=2))
        return 0
    header = ("name", "width", "depth", "heads", "patch", "input")
    rows = [header]
    for name, d in presets.items():
        rows.append(
            (
                name,
                str(d.get("embed_dim", "")),
                str(d.get("depth", "")),
                str(d.get("num_heads", "")),
                str(d.get("patch_size", "")),
                d.get("input_key", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _convert_original(args: argparse.Namespace) -> int:
    from boldgpt.errors import ConfigError
    from boldgpt.models.original import load_original_checkpoint
    from boldgpt.models.registry import is_model_dir, save_model

    arch = args.architecture
    if arch is not None and not arch.lstrip().startswith("{"):
        path = Path(arch)
        if not path.is_file():
            raise ConfigError(f"--architecture: {arch!r} is neither a JSON object nor a file")
        arch = path.read_text()
    out = args.out_dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.force:
            raise ConfigError(f"{out} exists and is not empty; pass --force to replace it")
        if not is_model_dir(out):
            raise ConfigError(f"{out} is not a boldgpt model directory; refusing to replace it")
    model = load_original_checkpoint(args.checkpoint, architecture=arch)
    save_model(model, args.out_dir)
    kw = model.config.to_dict()
    params = sum(p.numel() for p in model.parameters())
    kind = "tokens" if kw.get("categorical") else "continuous"
    order = "shuffled" if kw.get("shuffle") else "fixed order"
    print(
        f"wrote {args.out_dir}: IGPT {kind}, {order}, width {kw['embed_dim']}, depth "
        f"{kw['depth']}, {kw['num_heads']} heads, {model.num_patches} patches of "
        f"{kw['patch_size']} px, {params / 1e6:.2f}M parameters"
    )
    return 0

"""Model registry and model directories.

Names follow ``{family}_{size}_patch{p}``:

- families ``boldgpt`` (shuffled-order IGPT on BOLD maps), ``boldbeit`` (BEiT on BOLD
  maps), ``imagegpt`` / ``imagebeit`` (the same objectives on RGB images, full mask);
- sizes ``micro`` (128 wide, 4 deep, 4 heads: a CPU demo), ``tiny`` (192, 12, 3),
  ``small`` (384, 12, 6), ``base`` (768, 12, 12);
- patch 10 or 16 for BOLD maps, 16 for images.

``igpt`` and ``beit`` name the bare classes (every argument explicit; used for
converted checkpoints). Other modules can add families with :func:`register_model`.

A model directory holds ``config.json`` (``{"name", "kwargs"}`` plus format info)
and ``model.safetensors`` (the state dict, with the mask and the fixed patch order),
so :func:`load_model` rebuilds the exact model without executing code.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from boldgpt.errors import CheckpointError, ConfigError
from boldgpt.utils.io import atomic_dir, write_json

FORMAT = "boldgpt-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(embed_dim=128, depth=4, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
DEFAULT_IMAGE_SIZE = 224

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, dict[str, Any]]] = {}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def register_model(name: str, builder: Builder, defaults: dict[str, Any] | None = None) -> None:
    """Register ``name``: ``create_model(name, mask, **kw)`` calls
    ``builder(mask=mask, **{**defaults, **kw})``. The builder must return a module
    whose ``config`` attribute can be set."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = (builder, dict(defaults or {}))


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` keeps names containing it."""
    _register_builtin()
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)


def model_defaults(name: str) -> dict[str, Any]:
    """The preset arguments behind a registered name."""
    _register_builtin()
    return dict(_lookup(name)[1])


def create_model(
    name: str, mask: np.ndarray | torch.Tensor | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"boldgpt_tiny_patch10"``.
        mask: bool (H, W) pixels with signal. Default: the embedded dataset's mask
            (``boldgpt.sim.default_mask()``) for BOLD models, a full
            ``image_size`` square for image models.
        **overrides: constructor arguments replacing the preset, e.g.
            ``categorical=True``, ``num_subjects=8``, ``depth=6``.

    ``model.config`` records the name and every resolved argument, so
    ``create_model(config["name"], mask, **config["kwargs"])`` rebuilds the model.
    """
    _register_builtin()
    builder, defaults = _lookup(name)
    kwargs = {**defaults, **overrides}
    _check_kwargs(name, builder, kwargs)
    if mask is None:
        mask = _default_mask(kwargs)
    image_size = kwargs.pop("image_size", None)
    model = builder(mask=mask, **kwargs)
    config = getattr(model, "config", None) or {"kwargs": {}}
    resolved = {**config.get("kwargs", {}), **_jsonable(kwargs)}
    resolved.pop("patch_indices", None)  # stored with the weights
    if image_size is not None:
        resolved["image_size"] = image_size
    model.config = {"name": name, "kwargs": resolved}
    return model


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path`` (``config.json`` and
    ``model.safetensors``), atomically. An existing model directory there is replaced;
    any other non-empty directory is refused."""
    from safetensors.torch import save_file

    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError("model has no registry config; build it with create_model()")
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_model_dir(path))):
        raise ValueError(
            f"{path} exists and is not a boldgpt model directory; refusing to replace it"
        )
    try:
        json.dumps(config["kwargs"])
    except TypeError as exc:
        raise ConfigError(f"model config is not JSON-serialisable: {exc}") from None
    from boldgpt import __version__

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "boldgpt_version": __version__,
        "class": type(model).__name__,
        "name": config["name"],
        "kwargs": config["kwargs"],
    }
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, meta)
    return path


def load_model(
    path_or_hub_id: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
) -> nn.Module:
    """Load a model saved by :func:`save_model`, from a directory or a Hugging Face
    hub id ``owner/name`` (downloaded only when that id is not a local path; fails
    fast with a CheckpointError when the hub cannot be reached). A directory holding
    a checkpoint of the seed boldGPT project instead is converted on the fly.

    The model is returned in eval mode on ``device``.
    """
    path = Path(path_or_hub_id)
    if not path.exists():
        if not _HUB_ID.match(str(path_or_hub_id)):
            raise FileNotFoundError(f"no model directory at {path}")
        path = _download(str(path_or_hub_id), revision)
    if path.is_file():
        path = path.parent
    config_path = path / CONFIG_FILE
    weights_path = path / WEIGHTS_FILE
    config = _read_config(config_path) if config_path.exists() else None
    if config is None or config.get("format") != FORMAT:
        model = _load_foreign(path)
    else:
        if not weights_path.exists():
            raise CheckpointError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        model = _build_from_state(config, _read_safetensors(weights_path), str(weights_path))
    return model.to(device).eval()


def state_mismatches(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> list[str]:
    """How ``state`` differs from the ``expected`` state dict: one line per missing,
    unexpected or mis-shaped key (empty when they match)."""
    problems = [f"missing key {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected key {k}" for k in sorted(set(state) - set(expected))]
    problems += [
        f"shape mismatch: {k}: checkpoint {tuple(state[k].shape)}, "
        f"model expects {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return problems


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a CheckpointError that names every
    missing, unexpected and mis-shaped key."""
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        lines = [f"{source} does not match the model architecture:"]
        lines += [f"  {p}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... and {len(problems) - 20} more")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by :func:`save_model`."""
    path = Path(path)
    config = path / CONFIG_FILE
    try:
        return config.exists() and json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


# ---- internals ---------------------------------------------------------------------


def _build_from_state(
    config: dict[str, Any], state: dict[str, torch.Tensor], source: str
) -> nn.Module:
    name, kwargs = config.get("name"), config.get("kwargs")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: config needs 'name' (str) and 'kwargs' (dict)")
    for key in ("patchify.mask", "patchify.patch_indices"):
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key}")
    try:
        mask, order = state["patchify.mask"], state["patchify.patch_indices"]
        model = create_model(name, mask=mask, patch_indices=order, **kwargs)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild model {name!r}: {exc}") from exc
    load_state_checked(model, state, source)
    return model


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"cannot read weights {path}: {exc}") from exc


def _load_foreign(path: Path) -> nn.Module:
    """A directory without a boldgpt config: try a seed-project checkpoint."""
    from boldgpt.models.original import CHECKPOINT_SUFFIXES, load_original_checkpoint

    files = sorted(f for f in path.iterdir() if f.suffix in CHECKPOINT_SUFFIXES)
    if len(files) != 1:
        raise CheckpointError(
            f"{path} is not a boldgpt model directory (no {CONFIG_FILE} with format "
            f"{FORMAT!r}) and does not hold exactly one original checkpoint "
            f"({', '.join(CHECKPOINT_SUFFIXES)}); found {[f.name for f in files]}"
        )
    return load_original_checkpoint(files[0])


def _download(hub_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            hub_id,
            revision=revision,
            allow_patterns=[CONFIG_FILE, "*.safetensors", "*.pt", "*.pth", "*.json"],
            etag_timeout=5,
        )
    except Exception as exc:  # offline, unknown repo, HTTP errors: all mean "not here"
        raise CheckpointError(
            f"could not get model {hub_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Without network access, "
            "pass the path of a local model directory instead"
        ) from exc
    return Path(local)


def _lookup(name: str) -> tuple[Builder, dict[str, Any]]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (see boldgpt list-models)")
    return _REGISTRY[name]


def _check_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = set(params) | {"image_size"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {unknown} for model {name!r}; expected some of "
            f"{sorted(allowed - {'mask'})}"
        )


def _default_mask(kwargs: dict[str, Any]) -> np.ndarray:
    if kwargs.get("input_key", "activity") == "image":
        size = int(kwargs.get("image_size", DEFAULT_IMAGE_SIZE))
        return np.ones((size, size), dtype=bool)
    try:
        from boldgpt.sim import default_mask
    except ImportError as exc:
        raise ConfigError(
            "no mask given and the embedded dataset's default mask "
            f"(boldgpt.sim.default_mask) is unavailable ({exc}); pass mask="
        ) from exc
    return np.asarray(default_mask(), dtype=bool)


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if k == "ordering" and not isinstance(v, str):
            v = "priority"  # a priority map; the resulting order is stored with the weights
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, (np.generic, torch.Tensor)) and np.ndim(v) == 0:
            v = v.item()
        out[k] = v
    return out


_BUILTIN_DONE = False


def _register_builtin() -> None:
    """Register the built-in families (lazily: keeps ``import boldgpt`` cheap and
    avoids an import cycle with the model modules)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from boldgpt.models.beit import BEiT
    from boldgpt.models.igpt import IGPT

    register_model("igpt", IGPT)
    register_model("beit", BEiT)
    for size, dims in SIZES.items():
        for patch in (10, 16):
            bold = dict(patch_size=patch, channels=1, input_key="activity", **dims)
            register_model(f"boldgpt_{size}_patch{patch}", IGPT, dict(bold, shuffle=True))
            register_model(f"boldbeit_{size}_patch{patch}", BEiT, bold)
        image = dict(
            patch_size=16,
            channels=3,
            input_key="image",
            ordering="raster",
            subject_embed=False,
            image_size=DEFAULT_IMAGE_SIZE,
            **dims,
        )
        register_model(f"imagegpt_{size}_patch16", IGPT, dict(image, shuffle=True))
        register_model(f"imagebeit_{size}_patch16", BEiT, image)

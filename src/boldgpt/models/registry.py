"""Model registry and model directories.

Names follow ``{family}_{size}_patch{p}``:

- families ``boldgpt`` (shuffled-order IGPT on BOLD maps), ``boldbeit`` (BEiT on BOLD
  maps), ``imagegpt`` / ``imagebeit`` (the same objectives on RGB images, full square);
- sizes ``micro`` (128 wide, 4 deep, 4 heads: a CPU demo), ``tiny`` (192, 12, 3),
  ``small`` (384, 12, 6), ``base`` (768, 12, 12);
- patch 10 or 16 for BOLD maps, 16 for images;
- image <-> BOLD families ``cbip`` (contrastive BOLD encoder), ``image2bold``
  (encoding IGPT cross-attending to an image encoder) and ``bold2image`` (BOLD encoder
  conditioning an IGPT over 64 px images in 8 px patches), sizes micro, tiny, small,
  patch 10 (see :mod:`boldgpt.models.cbip`, ``image2bold``, ``bold2image``).

``igpt`` and ``beit`` name the bare classes with their configs' defaults (used for
converted checkpoints). Other modules add families with :func:`register_model`.

A preset is a config instance (:mod:`boldgpt.models.config`); ``create_model(name,
mask, **overrides)`` is ``dataclasses.replace(preset, **overrides)``, then the model's
constructor. The mask is explicit: a model over maps is built over the mask of its
data, and ``create_model`` without one raises a ConfigError that lists the ways to
give it (never a silent default that may not match the user's data); image models
need none (the full ``image_size`` square).

A model directory follows the Hugging Face convention:

- ``config.json``: the config's fields plus ``format`` / ``format_version`` (2),
  the registry ``name`` and the model ``class`` (and the model card's facts);
- ``model.safetensors``: the state dict, with the mask and the fixed patch order;
- ``README.md``: a model card (architecture, parameters, mask, data, training,
  evaluation when known).

:func:`load_model` rebuilds the exact model without executing code, from a path or a
hub id; it also reads format-1 directories (``{"name", "kwargs"}``) of earlier
versions. :func:`push_to_hub` uploads a directory through ``huggingface_hub``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from boldgpt.errors import CheckpointError, ConfigError, DataError
from boldgpt.models.config import PatchModelConfig
from boldgpt.utils.hub import is_hub_id
from boldgpt.utils.io import atomic_dir, write_json

FORMAT = "boldgpt-model"
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
META_KEYS = ("format", "format_version", "boldgpt_version", "class", "name", "card")
"""Keys of ``config.json`` that are not config fields."""

SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(embed_dim=128, depth=4, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
DEFAULT_IMAGE_SIZE = 224
CARD_KEYS = ("description", "data", "training_steps", "evaluation")
"""Facts a model card shows when known (``save_model(card=...)``)."""

Builder = Callable[..., nn.Module]
"""A model class (or factory) called as ``builder(config, mask, patch_indices=None)``."""
_REGISTRY: dict[str, tuple[Builder, PatchModelConfig]] = {}


def register_model(name: str, builder: Builder, config: PatchModelConfig) -> None:
    """Register ``name``: ``create_model(name, mask, **overrides)`` calls
    ``builder(replace(config, **overrides), mask, patch_indices=None)``."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    if not isinstance(config, PatchModelConfig):
        raise TypeError(f"register_model({name!r}): config must be a PatchModelConfig")
    _REGISTRY[name] = (builder, config)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` keeps names containing it."""
    _register_builtin()
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)


def model_config(name: str, **overrides: Any) -> PatchModelConfig:
    """The resolved config of ``name`` with ``overrides`` (``replace(preset,
    **overrides)``), without building the model: what the training engine reads
    (``input_key``, ``batch_keys``, ``image_size``) before it loads data.

    Raises ConfigError for an unknown name or field (with "did you mean") and for
    invalid values.
    """
    _register_builtin()
    return _lookup(name)[1].replace(**overrides)


def model_defaults(name: str) -> dict[str, Any]:
    """The preset of a registered name, as a JSON-able dict of config fields."""
    return model_config(name).to_dict()


def create_model(
    name: str,
    mask: Any = None,
    *,
    patch_indices: torch.Tensor | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"boldgpt_tiny_patch10"``.
        mask: the cortex mask of the data, resolved by
            :func:`boldgpt.data.masks.resolve_mask`: a bool (H, W) array or tensor,
            the path of a ``.npy`` file, or a named mask (``"sim"``: the embedded
            dataset's). Required for models over maps: without it this raises a
            ConfigError (a default could silently differ from your data; the real
            NSD-Flat mask comes from ``boldgpt.data.nsd_flat.load_mask(source)``).
            Image models need none (the full ``image_size`` square).
        patch_indices: a stored fixed patch order, replacing ``ordering`` (e.g. from
            ``MaskedPatchify(mask, p, ordering=priority_map).patch_indices``).
        **overrides: config fields replacing the preset's, e.g. ``categorical=True``,
            ``num_subjects=8``, ``depth=6`` (see :mod:`boldgpt.models.config`).

    ``model.config`` is the resolved config and ``model.registry_name`` the name, so
    ``create_model(model.registry_name, mask, **model.config.to_dict())`` rebuilds it.
    """
    config = model_config(name, **overrides)
    builder = _lookup(name)[0]
    model = builder(config, _resolve_mask(name, config, mask), patch_indices=patch_indices)
    model.registry_name = name
    return model


def describe(model: nn.Module) -> dict[str, Any]:
    """What identifies a model's architecture, JSON-able: ``name`` (registry name),
    ``class``, ``config`` (every field), ``num_patches``, ``mask_shape``,
    ``mask_pixels``, ``mask_sha256`` and ``num_parameters``. Two models with equal
    descriptions take the same state dict (training checkpoints compare it on
    resume)."""
    config = _config_of(model)
    mask = model.patchify.mask.detach().cpu().numpy().astype(bool)
    return {
        "name": _name_of(model),
        "class": type(model).__name__,
        "config": config.to_dict(),
        "num_patches": int(model.patchify.num_patches),
        "mask_shape": list(mask.shape),
        "mask_pixels": int(mask.sum()),
        "mask_sha256": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    card: Mapping[str, Any] | None = None,
    **card_fields: Any,
) -> Path:
    """Write ``model`` to the directory ``path`` (``config.json``,
    ``model.safetensors``, ``README.md``), atomically. An existing model directory
    there is replaced; any other non-empty directory is refused.

    ``card`` / ``card_fields``: facts for the model card, merged over those the model
    already carries (``model.card``, e.g. from :func:`load_model`): ``description``,
    ``data`` (what it was trained on), ``training_steps``, ``evaluation`` (a dict of
    metric -> value) or any other JSON-able key. They are also kept in
    ``config.json``.
    """
    from safetensors.torch import save_file

    from boldgpt import __version__

    path = Path(path)
    config = _config_of(model)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_model_dir(path))):
        raise ValueError(
            f"{path} exists and is not a boldgpt model directory; refusing to replace it"
        )
    facts = {**(getattr(model, "card", None) or {}), **(card or {}), **card_fields}
    try:
        json.dumps(facts)
    except TypeError as exc:
        raise ConfigError(f"model card facts are not JSON-serialisable: {exc}") from None
    fields = config.to_dict()
    clash = sorted(set(fields) & set(META_KEYS))
    if clash:  # a config field named like a format key would be lost on loading
        raise ConfigError(f"config fields {clash} collide with config.json's format keys")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "boldgpt_version": __version__,
        "class": type(model).__name__,
        "name": _name_of(model),
        **fields,
        "card": facts,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, meta)
        (tmp / CARD_FILE).write_text(model_card(model, facts))
    return path


def model_card(model: nn.Module, facts: Mapping[str, Any] | None = None) -> str:
    """The ``README.md`` of a model directory: Hugging Face front matter, then the
    architecture, parameter count, mask and patches, and the ``facts`` known (data,
    training steps, evaluation, ...)."""
    info = describe(model)
    c = info["config"]
    facts = dict(facts or {})
    if c["categorical"]:
        kind = f"token ids (k-means vocabulary of {c['vocab_size']})"
    else:
        kind = "patch values (in-mask MSE)"
    lines = [
        "---",
        "library_name: boldgpt",
        "tags:",
        "- fmri",
        "- boldgpt",
        f"- {info['name']}",
        "---",
        "",
        f"# {info['name']}",
        "",
    ]
    if facts.get("description"):
        lines += [str(facts.pop("description")), ""]
    else:
        facts.pop("description", None)
    lines += [
        "## Architecture",
        "",
        f"- class: `{info['class']}`, registry name `{info['name']}`",
        f"- transformer: width {c['embed_dim']}, depth {c['depth']}, {c['num_heads']} heads, "
        f"{c['num_registers']} registers",
        f"- parameters: {info['num_parameters']:,}",
        f"- input: `{c['input_key']}`, {c['patch_size']}x{c['patch_size']} px patches, "
        f"{info['num_patches']} patches over a {info['mask_shape'][0]}x{info['mask_shape'][1]} "
        f"mask of {info['mask_pixels']:,} pixels",
        f"- predicts: {kind}",
    ]
    if "shuffle" in c:
        lines.append(f"- order: {'shuffled per sample' if c['shuffle'] else 'fixed'}")
    lines += ["", "## Training", ""]
    lines.append(f"- data: {facts.pop('data', 'not recorded')}")
    lines.append(f"- training steps: {facts.pop('training_steps', 'not recorded')}")
    evaluation = facts.pop("evaluation", None)
    lines += ["", "## Evaluation", ""]
    if isinstance(evaluation, Mapping) and evaluation:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in evaluation.items()]
    else:
        lines.append(str(evaluation) if evaluation else "not recorded")
    if facts:
        lines += ["", "## Details", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in facts.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import boldgpt",
        'model = boldgpt.load_model("<this directory or hub id>")',
        "```",
        "",
    ]
    return "\n".join(lines)


def load_model(
    path_or_hub_id: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
) -> nn.Module:
    """Load a model saved by :func:`save_model` (format 2, or format 1 of earlier
    versions), from a directory or a Hugging Face hub id ``owner/name`` (downloaded
    only when no local path of that name exists; fails fast with a CheckpointError
    when the hub cannot be reached). A directory holding a checkpoint of the seed
    boldGPT project instead is converted on the fly.

    The model is returned in eval mode on ``device``; ``model.card`` holds the
    model card's facts.
    """
    path = Path(path_or_hub_id)
    if not path.exists():
        if not is_hub_id(path_or_hub_id):
            raise FileNotFoundError(f"no model directory at {path}")
        path = _download(str(path_or_hub_id), revision)
    if path.is_file():
        path = path.parent
    config_path = path / CONFIG_FILE
    weights_path = path / WEIGHTS_FILE
    meta = _read_config(config_path) if config_path.exists() else None
    if meta is None or meta.get("format") != FORMAT:
        model = _load_foreign(path)
    else:
        if not weights_path.exists():
            raise CheckpointError(f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        model = _build_from_state(meta, _read_safetensors(weights_path), str(path))
    return model.to(device).eval()


def push_to_hub(
    model_or_dir: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload boldgpt model",
    card: Mapping[str, Any] | None = None,
) -> str:
    """Upload a model (saved to a temporary directory first, with ``card``) or a model
    directory to the Hugging Face hub repository ``repo_id`` (created if needed),
    through ``huggingface_hub``'s ``HfApi.upload_folder``. Returns the commit URL.

    Raises CheckpointError when ``repo_id`` is not a hub id, the directory is not a
    model directory, or the hub cannot be reached (e.g. ``HF_HUB_OFFLINE=1``).
    """
    if not is_hub_id(repo_id):
        raise CheckpointError(f"push_to_hub: {repo_id!r} is not a hub id 'owner/name'")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_dir, nn.Module):
            folder = save_model(model_or_dir, Path(tmp) / "model", card=card)
        else:
            folder = Path(model_or_dir)
            if not is_model_dir(folder):
                raise CheckpointError(f"push_to_hub: {folder} is not a boldgpt model directory")
            if card:
                raise ConfigError("push_to_hub: card= applies to a model, not a saved directory")
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.constants import HF_HUB_OFFLINE

            if HF_HUB_OFFLINE:
                raise RuntimeError("HF_HUB_OFFLINE is set")
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                revision=revision,
                commit_message=commit_message,
            )
        except Exception as exc:  # offline, auth, HTTP errors: all mean "not uploaded"
            raise CheckpointError(
                f"could not push to the Hugging Face hub repository {repo_id!r} "
                f"({type(exc).__name__}: {_first_line(exc)}); the model was not uploaded"
            ) from exc
    return str(getattr(info, "commit_url", info))


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
    """Whether ``path`` is a directory written by :func:`save_model` (any format)."""
    config = Path(path) / CONFIG_FILE
    try:
        return config.exists() and json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


# ---- internals ---------------------------------------------------------------------


def _resolve_mask(name: str, config: PatchModelConfig, mask: Any) -> Any:
    """The mask array for ``create_model(name, mask)`` (None for an image model
    without one: the model uses the full square)."""
    from boldgpt.data.masks import NAMED_MASKS, resolve_mask

    if mask is None:
        if config.is_image_model:
            return None
        named = ", ".join(f"{k!r} ({v})" for k, v in NAMED_MASKS.items())
        raise ConfigError(
            f"create_model({name!r}) needs mask=: the cortex mask of the data the model "
            "will read, as a bool (H, W) array, the path of a .npy file, or a named mask: "
            f"{named}. For NSD-Flat data use boldgpt.data.nsd_flat.load_mask(source). "
            "There is no default: a model over a different mask than its data's would "
            "not fit them"
        )
    if torch.is_tensor(mask) and mask.dtype == torch.bool:
        return mask.cpu()  # already a bool tensor (e.g. from a state dict): keep it
    try:
        return resolve_mask(mask, where=f"create_model({name!r}) mask")
    except DataError as exc:
        raise ConfigError(str(exc)) from exc


def _config_of(model: nn.Module) -> PatchModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, PatchModelConfig):
        raise ValueError(
            f"{type(model).__name__} has no model config (model.config); build it with "
            "create_model() or a model class of boldgpt.models"
        )
    return config


def _name_of(model: nn.Module) -> str:
    """The registry name of a model (its class's bare name when built directly)."""
    return getattr(model, "registry_name", None) or type(model).__name__.lower()


def _build_from_state(
    meta: dict[str, Any], state: dict[str, torch.Tensor], source: str
) -> nn.Module:
    name = meta.get("name")
    if not isinstance(name, str):
        raise CheckpointError(f"{source}/{CONFIG_FILE}: needs 'name' (a registered model name)")
    for key in ("patchify.mask", "patchify.patch_indices"):
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key}")
    try:
        _register_builtin()
        builder, preset = _lookup(name)
        config = type(preset).from_dict(_config_fields(meta, source))
        model = builder(
            config, state["patchify.mask"], patch_indices=state["patchify.patch_indices"]
        )
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild model {name!r}: {exc}") from exc
    model.registry_name = name
    model.card = dict(meta.get("card") or {})
    load_state_checked(model, state, source)
    return model


def _config_fields(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The config fields of a ``config.json``, from either format."""
    version = meta.get("format_version")
    if version == 1:
        # format 1: {"name", "kwargs"} holding the constructor arguments, which are
        # the config's fields; "priority" stood for a priority-map ordering, whose
        # resulting order is stored with the weights (and wins over ``ordering``)
        kwargs = meta.get("kwargs")
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{source}/{CONFIG_FILE}: format 1 needs 'kwargs' (dict)")
        kwargs = dict(kwargs)
        if kwargs.get("ordering") == "priority":
            kwargs["ordering"] = "radial"
        return kwargs
    if version == FORMAT_VERSION:
        return {k: v for k, v in meta.items() if k not in META_KEYS}
    raise CheckpointError(
        f"{source}/{CONFIG_FILE}: format_version {version!r} is not supported by this boldgpt "
        f"(it reads 1 and {FORMAT_VERSION}); upgrade boldgpt to load it"
    )


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
    try:
        return load_original_checkpoint(files[0])
    except CheckpointError as exc:
        # most often a boldgpt model directory that lost its config.json
        raise CheckpointError(
            f"{path} is not a boldgpt model directory (no {CONFIG_FILE} with format "
            f"{FORMAT!r}), and its {files[0].name} is not an original boldGPT checkpoint "
            f"either: {exc}"
        ) from exc


def _download(hub_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            hub_id,
            revision=revision,
            allow_patterns=[CONFIG_FILE, CARD_FILE, "*.safetensors", "*.pt", "*.pth", "*.json"],
            etag_timeout=5,
        )
    except Exception as exc:  # offline, unknown repo, HTTP errors: all mean "not here"
        raise CheckpointError(
            f"could not get model {hub_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{_first_line(exc)}). Without network access, pass the path of a local model "
            "directory instead"
        ) from exc
    return Path(local)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _lookup(name: str) -> tuple[Builder, PatchModelConfig]:
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (see boldgpt list-models)")
    return _REGISTRY[name]


_BUILTIN_DONE = False


def _register_builtin() -> None:
    """Register the built-in families (lazily: keeps ``import boldgpt`` cheap and
    avoids an import cycle with the model modules)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from boldgpt.models.beit import BEiT
    from boldgpt.models.config import BEiTConfig, IGPTConfig
    from boldgpt.models.igpt import IGPT

    register_model("igpt", IGPT, IGPTConfig())
    register_model("beit", BEiT, BEiTConfig())
    for size, dims in SIZES.items():
        for patch in (10, 16):
            bold = dict(patch_size=patch, channels=1, input_key="activity", **dims)
            register_model(f"boldgpt_{size}_patch{patch}", IGPT, IGPTConfig(**bold, shuffle=True))
            register_model(f"boldbeit_{size}_patch{patch}", BEiT, BEiTConfig(**bold))
        image = dict(
            patch_size=16,
            channels=3,
            input_key="image",
            ordering="raster",
            subject_embed=False,
            image_size=DEFAULT_IMAGE_SIZE,
            **dims,
        )
        register_model(f"imagegpt_{size}_patch16", IGPT, IGPTConfig(**image, shuffle=True))
        register_model(f"imagebeit_{size}_patch16", BEiT, BEiTConfig(**image))
    _register_image_bold()


def _register_image_bold() -> None:
    """Image <-> BOLD families (maps with patch 10; stimuli of 64 px: for the frozen
    image encoder of CBIP / image2bold, by default a random ``imagebeit_micro_patch16``
    (a configuration points ``image_encoder`` at a pretrained image model's
    directory), and the pictures bold2image reconstructs)."""
    from boldgpt.models.bold2image import Bold2Image, Bold2ImageConfig
    from boldgpt.models.cbip import CBIP, CBIPConfig
    from boldgpt.models.image2bold import Image2BOLD, Image2BOLDConfig

    for size in ("micro", "tiny", "small"):
        side = dict(patch_size=10, image_size=64, **SIZES[size])
        register_model(f"cbip_{size}_patch10", CBIP, CBIPConfig(num_registers=4, **side))
        register_model(f"image2bold_{size}_patch10", Image2BOLD, Image2BOLDConfig(**side))
        register_model(f"bold2image_{size}_patch10", Bold2Image, Bold2ImageConfig(**side))

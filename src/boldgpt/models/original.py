"""Import checkpoints of the seed boldGPT project (e.g. its published
``boldgpt_small_patch10.cont`` / ``.kmq``) into :class:`~boldgpt.models.igpt.IGPT`.

The seed project's state dict (SPEC section 12) holds ``patchify.*`` (mask, patch
mask, the fixed order ``patch_indices``), ``tokenizer.vocab`` for token models, and the
transformer under ``decoder.*``. boldgpt's modules use the same block layout, so the
conversion renames ``decoder.`` to ``backbone.`` (the head moves to the model),
reshapes the subject table (S, 1, D) -> (S, D), and keeps the stored patch order
instead of recomputing it.

The architecture comes from the ``architecture`` argument, else the file's metadata
(safetensors ``architecture`` JSON), else it is inferred from the tensor shapes
(the head count cannot be: 64-wide heads are assumed, with a warning). Keys absent
from a given architecture are inferred too, then take the seed project's defaults.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from boldgpt.errors import CheckpointError, ConfigError

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

ORIGINAL_DEFAULTS: dict[str, Any] = {
    "categorical": False,
    "vocab_size": 1024,
    "shuffle": True,
    "ordering": "radial",
    "with_sub_embed": True,
    "num_subs": 1024,
    "mlp_ratio": 4.0,
    "num_registers": 0,
    "drop_rate": 0.0,
    "sub_drop_rate": 0.0,
    "proj_drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "drop_path_rate": 0.0,
}
# seed-project architecture key -> IGPTConfig field
ARCH_TO_KWARGS = {
    "patch_size": "patch_size",
    "embed_dim": "embed_dim",
    "depth": "depth",
    "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "num_subs": "num_subjects",
    "with_sub_embed": "subject_embed",
    "sub_drop_rate": "subject_dropout",
    "shuffle": "shuffle",
    "categorical": "categorical",
    "vocab_size": "vocab_size",
    "ordering": "ordering",
    "num_registers": "num_registers",
    "context_dim": "context_dim",
    "qkv_bias": "qkv_bias",
    "qk_norm": "qk_norm",
    "init_values": "layer_scale",
    "drop_rate": "head_drop",
    "proj_drop_rate": "drop",
    "attn_drop_rate": "attn_drop",
    "drop_path_rate": "drop_path",
}
# keys that only describe training or are derived from other stored tensors
IGNORED_ARCH_KEYS = {"with_cross", "is_causal", "is_masked", "with_next_pos", "num_classes"}
IGNORED_STATE_KEYS = {"patchify.order", "patchify.ranking", "decoder.mask_token"}
# (a GPT never uses the mask token some seed checkpoints carry)
ASSUMED_HEAD_DIM = 64


def load_original_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    architecture: Mapping[str, Any] | str | None = None,
) -> torch.nn.Module:
    """Build the boldgpt IGPT equivalent to a seed-project checkpoint.

    Args:
        path_or_state_dict: a ``.safetensors`` file, a ``.pt`` / ``.pth`` / ``.bin`` /
            ``.ckpt`` file (read with ``torch.load(weights_only=True)``; a training
            checkpoint with the state dict under ``model`` or ``state_dict`` works),
            or the state dict itself.
        architecture: the seed project's architecture (dict or JSON string: keys
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
            ``num_subs``, ``categorical``, ``vocab_size``, ``shuffle``,
            ``with_sub_embed``, ``num_registers``, ...). Default: the file's metadata,
            else inferred from the shapes.

    Returns:
        An :class:`~boldgpt.models.igpt.IGPT` in eval mode (registry name ``igpt``,
        so :func:`~boldgpt.models.registry.save_model` can store it).

    Raises:
        CheckpointError: unreadable file, missing / unexpected keys, or shapes that do
            not match the architecture (naming the key and both shapes).
    """
    from boldgpt.models.registry import create_model

    state, file_arch, source = _read(path_or_state_dict)
    arch = _parse_architecture(architecture, source) if architecture is not None else file_arch
    arch = _complete_architecture(arch or {}, state, source)
    kwargs = architecture_to_kwargs(arch)
    for key in ("patchify.mask", "patchify.patch_indices"):
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key} (the mask and its patch order)")
    try:
        model = create_model(
            "igpt",
            mask=state["patchify.mask"].bool(),
            patch_indices=state["patchify.patch_indices"],
            **kwargs,
        )
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{source}: architecture {arch} cannot be built: {exc}") from exc
    model.load_state_dict(convert_state_dict(state, model, arch, source))
    return model.eval()


def architecture_to_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    """IGPTConfig fields of a (complete) seed-project architecture."""
    kwargs: dict[str, Any] = {
        "legacy_registers": bool(arch.get("num_registers", 0)),
        "pos_init": "random",  # the seed project's init (the loaded weights replace it)
    }
    for key, value in arch.items():
        if key in ARCH_TO_KWARGS:
            kwargs[ARCH_TO_KWARGS[key]] = value
        elif key not in IGNORED_ARCH_KEYS:
            warnings.warn(f"ignoring unknown architecture key {key!r}", stacklevel=3)
    if not arch.get("with_cross", bool(arch.get("context_dim"))):
        kwargs["context_dim"] = None
    return kwargs


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    arch: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename and reshape a seed-project state dict to ``model``'s layout, checking
    every key and shape (CheckpointError naming the original key)."""
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if key in IGNORED_STATE_KEYS:
            continue
        new = _rename(key)
        if new is None or new not in expected:
            unexpected.append(key)
            continue
        want = tuple(expected[new].shape)
        if new == "backbone.sub_embed":
            want = (want[0], 1, want[1])  # stored as (S, 1, D)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} but the architecture "
                f"({_why(key, arch)}) expects {want}"
            )
        out[new] = value.reshape(expected[new].shape).to(expected[new].dtype)
    # the patch mask is derived from the mask and the order: recompute a missing one,
    # refuse one that disagrees (different patching rules)
    derived = expected["patchify.patch_mask"]
    stored = out.setdefault("patchify.patch_mask", derived)
    if not torch.equal(stored, derived):
        raise CheckpointError(
            f"{source}: patchify.patch_mask differs from the one its mask and patch_indices "
            f"give ({int((stored != derived).sum())} values); was it patched differently?"
        )
    if "residual_cov" in expected:  # boldgpt's own buffer: not fitted in the original
        out.setdefault("residual_cov", expected["residual_cov"])
    missing = sorted(set(expected) - set(out))
    if unexpected or missing:
        lines = [f"{source} does not match the architecture {dict(arch or {})}:"]
        lines += [f"  unexpected key {k}" for k in sorted(unexpected)[:20]]
        lines += [f"  missing key {_original_name(k)}" for k in missing[:20]]
        raise CheckpointError("\n".join(lines))
    return out


def infer_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the shapes of a seed-project state dict tell about its architecture
    (everything but ``num_heads``, ``ordering`` and dropout rates)."""
    if "decoder.group_token" not in state or "decoder.patch_embed.weight" not in state:
        raise CheckpointError(
            "not a boldGPT checkpoint: no decoder.group_token / decoder.patch_embed.weight"
        )
    D = state["decoder.group_token"].shape[-1]
    arch: dict[str, Any] = {"embed_dim": D}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))}
    arch["depth"] = len(blocks)
    in_features = state["decoder.patch_embed.weight"].shape[1]
    patch = round(in_features**0.5)
    if patch * patch == in_features:
        arch["patch_size"] = patch
    if "decoder.blocks.0.mlp.fc1.weight" in state:
        arch["mlp_ratio"] = state["decoder.blocks.0.mlp.fc1.weight"].shape[0] / D
    arch["with_sub_embed"] = "decoder.sub_embed" in state
    if arch["with_sub_embed"]:
        arch["num_subs"] = state["decoder.sub_embed"].shape[0]
    arch["shuffle"] = "decoder.next_pos_query" in state
    arch["categorical"] = "tokenizer.vocab" in state
    if arch["categorical"]:
        arch["vocab_size"] = state["tokenizer.vocab"].shape[0]
    arch["num_registers"] = (
        state["decoder.reg_embed"].shape[0] if "decoder.reg_embed" in state else 0
    )
    arch["qkv_bias"] = "decoder.blocks.0.attn.q.bias" in state
    arch["qk_norm"] = "decoder.blocks.0.attn.q_norm.weight" in state
    if "decoder.blocks.0.ls1.gamma" in state:
        arch["init_values"] = 1e-5  # any value: the loaded gammas replace it
    if "decoder.cross_embed.weight" in state:
        arch["with_cross"] = True
        arch["context_dim"] = state["decoder.cross_embed.weight"].shape[1]
    return arch


# ---- internals ---------------------------------------------------------------------


def _read(
    src: str | os.PathLike | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(state dict, architecture from the file or None, description for errors)."""
    arch = None
    if isinstance(src, Mapping):
        state, source = dict(src), "state dict"
    else:
        path = Path(src)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        if path.suffix == ".safetensors":
            state, metadata = _read_safetensors(path)
            if metadata.get("architecture"):
                arch = _parse_architecture(metadata["architecture"], source)
        else:
            from boldgpt.utils.io import load_torch_file

            state = load_torch_file(path)  # refuses pickles that would run code
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{path}: expected a state dict, got {type(state)}")
            if isinstance(state.get("architecture"), (Mapping, str)):
                arch = _parse_architecture(state["architecture"], source)
            for key in ("model", "state_dict", "model_state_dict"):
                if isinstance(state.get(key), Mapping):
                    state = state[key]
                    break
    state = _strip_prefixes(state)
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:5]}")
    return state, arch, source


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
            if any(k.startswith("state.") for k in keys):
                # parity-fixture layout: state.* beside input.* / expected.*
                keys = [k for k in keys if k.startswith("state.")]
            state = {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    return state, metadata


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop wrappers' prefixes: fixture ``state.``, DDP ``module.``, compile
    ``_orig_mod.``."""
    state = dict(state)
    for prefix in ("state.", "module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _parse_architecture(arch: Mapping[str, Any] | str, source: str) -> dict[str, Any]:
    if isinstance(arch, str):
        try:
            arch = json.loads(arch)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: architecture is not valid JSON: {exc}") from exc
    if not isinstance(arch, Mapping):
        raise CheckpointError(f"{source}: architecture must be a JSON object; got {arch!r}")
    return dict(arch)


def _complete_architecture(
    arch: dict[str, Any], state: Mapping[str, torch.Tensor], source: str
) -> dict[str, Any]:
    """Fill keys the architecture leaves out: from the shapes, then the defaults."""
    inferred = infer_architecture(state)
    full = {**ORIGINAL_DEFAULTS, **inferred, **arch}
    if "patch_size" not in full:
        raise CheckpointError(f"{source}: cannot infer patch_size; pass it in architecture")
    if "num_heads" not in full:
        D = full["embed_dim"]
        if D % ASSUMED_HEAD_DIM:
            raise CheckpointError(
                f"{source}: num_heads is not stored and embed_dim={D} is not a multiple of "
                f"{ASSUMED_HEAD_DIM}; pass architecture={{'num_heads': ...}}"
            )
        full["num_heads"] = D // ASSUMED_HEAD_DIM
        warnings.warn(
            f"{source}: num_heads not given; assuming {full['num_heads']} heads of "
            f"{ASSUMED_HEAD_DIM} (the seed project's presets). Pass architecture= if wrong.",
            stacklevel=3,
        )
    if not full.get("with_sub_embed", True):
        full.pop("num_subs", None)
    return full


def _rename(key: str) -> str | None:
    if key.startswith("decoder.head."):
        return key.replace("decoder.", "", 1)
    if key.startswith("decoder."):
        return "backbone." + key[len("decoder.") :]
    if key.startswith(("patchify.", "tokenizer.")):
        return key
    return None


def _original_name(key: str) -> str:
    if key.startswith("head."):
        return "decoder." + key
    return key.replace("backbone.", "decoder.", 1)


def _why(key: str, arch: Mapping[str, Any] | None) -> str:
    """The architecture fields that decide a key's shape, with their values."""
    arch = arch or {}
    fields = ["embed_dim"]
    if "patch_embed" in key:
        fields += ["patch_size"]
    elif "sub_embed" in key:
        fields += ["num_subs"]
    elif "head" in key or "vocab" in key:
        fields += ["categorical", "vocab_size", "patch_size"]
    elif "fc1" in key or "fc2" in key:
        fields += ["mlp_ratio"]
    elif "pos" in key or "query" in key:
        fields += ["patch_size"]
    elif "reg_embed" in key:
        fields += ["num_registers"]
    return ", ".join(f"{f}={arch.get(f)!r}" for f in fields)

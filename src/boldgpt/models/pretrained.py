"""Start a downstream model (image2bold, CBIP, ...) from a pretrained map model.

:func:`init_from` copies the tensors of a pretrained boldGPT (IGPT) or BEiT model
over BOLD maps into the BOLD side of another model, by state-dict name, and reports
exactly what happened to every tensor:

- ``loaded``: names copied (same name, same shape);
- ``new``: names of the model that kept their fresh initialisation (not in the
  source, mis-shaped, or excluded by the model's family);
- ``skipped``: names of the source that were not used, each with the reason.

The two models must read the same maps the same way: the same mask and patch size,
else a CheckpointError. A different stored patch order is fine: per-slot tensors
(position embeddings, next-position queries) are matched by the place of each slot's
patch, not by slot number. The patching buffers (mask, order) are the model's own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from boldgpt.errors import CheckpointError

log = logging.getLogger(__name__)

PER_SLOT = ("backbone.pos_embed", "backbone.next_pos_query")
"""Tensors with one row per slot, reordered when the two patch orders differ."""
OWN = ("patchify.",)
"""The model's own geometry buffers: never copied (checked equal instead)."""


@dataclass
class InitReport:
    """What :func:`init_from` did; :meth:`lines` is the text for the run log."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"init_from {self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new, "
            f"{len(self.skipped)} skipped"
        ]
        out += [f"  loaded  {k}" for k in self.loaded]
        out += [f"  new     {k}" for k in self.new]
        out += [f"  skipped {k}: {why}" for k, why in self.skipped.items()]
        return out


def init_from(model: nn.Module, source: str | os.PathLike | nn.Module) -> InitReport:
    """Copy the matching tensors of a pretrained map model into ``model``.

    Args:
        model: the model to initialise (any boldgpt model over maps); its class may
            list state-dict prefixes never to copy in ``init_skip`` (e.g. a head
            specific to its task).
        source: a model directory or hub id (:func:`~boldgpt.models.registry.
            load_model`), or a model.

    Returns:
        The :class:`InitReport` (also logged at INFO level).

    Raises:
        CheckpointError: the source reads another mask or patch size, or is an image
            model.
    """
    from boldgpt.models.registry import load_model

    name = str(source) if not isinstance(source, nn.Module) else type(source).__name__
    src = source if isinstance(source, nn.Module) else load_model(source)
    _check_geometry(model, src, name)
    report = InitReport(source=name)
    target_state = model.state_dict()
    source_state = src.state_dict()
    family_skip = tuple(getattr(model, "init_skip", ()))
    order = _slot_map(model, src)
    updates: dict[str, torch.Tensor] = {}
    for key, value in source_state.items():
        if key.startswith(OWN):
            report.skipped[key] = "patching geometry: the model's own (checked equal)"
        elif key.startswith(family_skip):
            report.skipped[key] = f"name: {type(model).__name__} does not take it from a map model"
        elif key not in target_state:
            report.skipped[key] = f"name: {type(model).__name__} has no such tensor"
        elif value.shape != target_state[key].shape:
            report.skipped[key] = (
                f"shape: source {tuple(value.shape)}, model {tuple(target_state[key].shape)}"
            )
        else:
            updates[key] = value[order] if key in PER_SLOT and order is not None else value
    with torch.no_grad():
        for key, value in updates.items():
            target_state[key].copy_(value)
    report.loaded = sorted(updates)
    report.new = sorted(k for k in target_state if k not in updates and not k.startswith(OWN))
    for line in report.lines():
        log.info(line)
    return report


def _check_geometry(model: nn.Module, src: nn.Module, name: str) -> None:
    p, q = model.patchify, getattr(src, "patchify", None)
    if q is None or getattr(src, "input_key", "activity") != "activity":
        raise CheckpointError(
            f"init_from {name}: expected a model over BOLD maps (boldgpt_* / boldbeit_*); "
            f"got {type(src).__name__} with input_key={getattr(src, 'input_key', None)!r}"
        )
    if q.patch_size != p.patch_size or q.channels != p.channels:
        raise CheckpointError(
            f"init_from {name}: the pretrained model cuts {q.patch_size} px patches "
            f"({q.channels} channel(s)); this model needs {p.patch_size} px ({p.channels})"
        )
    if q.mask.shape != p.mask.shape or not torch.equal(q.mask.cpu(), p.mask.cpu()):
        raise CheckpointError(
            f"init_from {name}: the pretrained model was built over another mask "
            f"({tuple(q.mask.shape)}, {int(q.mask.sum())} pixels); this model's mask is "
            f"{tuple(p.mask.shape)} with {int(p.mask.sum())} pixels. Build the model over "
            "the pretrained model's mask (mask=source.patchify.mask)"
        )


def _slot_map(model: nn.Module, src: nn.Module) -> torch.Tensor | None:
    """Index j(i) of the source slot holding the patch of model slot i (None: the
    orders are equal). Equal masks and patch sizes keep the same set of patches."""
    mine = model.patchify.patch_indices.cpu()
    theirs = src.patchify.patch_indices.cpu()
    if torch.equal(mine, theirs):
        return None
    where = {int(r): j for j, r in enumerate(theirs.tolist())}
    return torch.tensor([where[int(r)] for r in mine.tolist()])

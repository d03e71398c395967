"""Cortex masks: the one place where a mask given as a name, a file or an array becomes
a checked bool array.

A model over flat maps is built over the mask of its data (``create_model(name,
mask=...)``), so the mask is always explicit. It may be given as:

- an array (numpy or torch), bool or 0/1 integers;
- the path of a ``.npy`` file (bool or 0/1) or an image (nonzero = inside);
- a name from :data:`NAMED_MASKS`: ``"sim"`` is the embedded dataset's procedural
  visual-cortex mask (shipped with the package as a file, so resolving it imports
  neither the simulator nor scipy; a test checks it equals the simulator's).

The real NSD-Flat mask is not shipped (it is the dataset's, not ours): load it from
the data (``boldgpt.data.nsd_flat.load_mask(source)``) or from its ``.npy`` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from boldgpt.data import schema
from boldgpt.errors import DataError

_ASSETS = Path(__file__).parent / "assets"

NAMED_MASKS: dict[str, str] = {
    "sim": "the embedded dataset's procedural visual-cortex mask (18,590 pixels, "
    "243 touched 10x10 patches); the mask of every sim:<preset> source",
}
"""Masks that can be given by name, with what each is."""

_NAMED_FILES = {"sim": "sim_mask.npy"}  # np.packbits of the flattened (215, 200) mask


def check_mask(mask: Any, where: str = "mask", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a mask: 2-D, bool (or integers that are all 0/1), not empty, and of
    ``shape`` when given (flat maps: ``schema.MAP_SHAPE``). Returns a bool array."""
    if hasattr(mask, "detach"):  # a torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"{where}: mask has shape {mask.shape}; expected {tuple(shape)}")
    if mask.ndim != 2:
        raise DataError(f"{where}: a mask must be 2-D (H, W); got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise DataError(f"{where}: mask has dtype {mask.dtype}; expected bool (or 0/1 ints)")
        mask = mask.astype(bool)
    if not mask.any():
        raise DataError(f"{where}: mask is empty (no True pixel)")
    return mask


def named_mask(name: str) -> np.ndarray:
    """A mask from :data:`NAMED_MASKS` as a fresh bool (215, 200) array."""
    if name not in NAMED_MASKS:
        raise DataError(f"unknown mask name {name!r}; named masks: {sorted(NAMED_MASKS)}")
    packed = np.load(_ASSETS / _NAMED_FILES[name], allow_pickle=False)
    size = schema.MAP_SHAPE[0] * schema.MAP_SHAPE[1]
    return np.unpackbits(packed, count=size).astype(bool).reshape(schema.MAP_SHAPE)


def read_mask_file(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask from a ``.npy`` file (bool or 0/1) or an image file (nonzero = inside)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"mask file {path} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as img:
                arr = np.asarray(img.convert("L")) > 0
    except Exception as exc:
        raise DataError(f"{path}: cannot read a mask ({exc})") from exc
    return check_mask(arr, str(path), shape)


def resolve_mask(
    spec: Any, shape: tuple[int, int] | None = None, where: str = "mask"
) -> np.ndarray:
    """A checked bool mask from an array, a file path or a name (see the module
    docstring). ``shape``: the shape it must have, if any."""
    if spec is None:
        raise DataError(
            f"{where}: no mask given; pass a bool array, a .npy file or one of the named "
            f"masks {sorted(NAMED_MASKS)} (e.g. boldgpt.data.nsd_flat.load_mask(source) for "
            "the mask of your data)"
        )
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in NAMED_MASKS:
            return check_mask(named_mask(text), f"{where} {text!r}", shape)
        if not Path(text).expanduser().exists() and os.sep not in text and "." not in text:
            raise DataError(
                f"{where}: {text!r} is neither a named mask ({sorted(NAMED_MASKS)}) nor a file"
            )
        return read_mask_file(text, shape)
    return check_mask(spec, where, shape)

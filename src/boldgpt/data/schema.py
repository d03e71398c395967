"""The NSD-Flat format: canvas geometry, the uint8 activity code and the row schema.

Everything that reads or writes NSD-Flat rows (the hub dataset, a local copy, the
embedded simulator) goes through the constants and functions here, so the format is
defined in exactly one place. The full Hugging Face ``datasets`` row schema, which only
a writer of rows needs, is ``boldgpt.sim.writer.FEATURES`` (kept there so that reading
data never imports ``datasets``, ~1 s).
"""

from __future__ import annotations

import numpy as np

HEIGHT = 215
"""Rows of a flat map (y from 95 mm at the top to -120 mm at the bottom, 1 mm pixels)."""
WIDTH = 200
"""Columns of a flat map (x from -100 mm to 100 mm, 1 mm pixels)."""
MAP_SHAPE = (HEIGHT, WIDTH)
MAP_RECT_MM = (-100.0, 100.0, -120.0, 95.0)
"""Flat-map bounding box in mm: (left, right, bottom, top)."""
VMAX = 2.5
"""Activity z-values are clipped to [-VMAX, VMAX] before quantization."""
NUM_NSD_IMAGES = 73_000
NUM_NSD_SUBJECTS = 8

HUB_ID = "clane9/NSD-Flat"


def quantize(z: np.ndarray) -> np.ndarray:
    """Encode z-scored activity as uint8 the way NSD-Flat does.

    ``u = floor(255 * (clip(z, -2.5, 2.5) + 2.5) / 5)``: the original generator casts
    with ``astype(uint8)``, which truncates, so 0 maps to 127.
    """
    z = np.clip(np.asarray(z, dtype=np.float32), -VMAX, VMAX)
    return (255.0 * (z + VMAX) / (2 * VMAX)).astype(np.uint8)


DEQUANT_SCALE = np.float32(2 * VMAX / 255.0)


def dequantize(u: np.ndarray) -> np.ndarray:
    """Decode uint8 activity to z-values: ``z = 5 * u / 255 - 2.5`` (float32)."""
    z = np.array(u, dtype=np.float32)  # a fresh array, then in place: one allocation
    np.multiply(z, DEQUANT_SCALE, out=z)
    np.subtract(z, np.float32(VMAX), out=z)
    return z


def subject_name(subject_id: int) -> str:
    """``0 -> "subj01"``: NSD's 1-based subject names."""
    return f"subj{subject_id + 1:02d}"


REQUIRED_COLUMNS: dict[str, str] = {
    "subject_id": "int64",
    "trial_id": "int64",
    "session_id": "int64",
    "nsd_id": "int64",
    "activity": "image (PNG, grayscale uint8, 215x200)",
    "shared1000": "bool",
}
"""Columns every source must have for boldgpt to use it (name -> what is expected)."""

SPLIT_FILES = {"train": "data/train-*.parquet", "test": "data/test-*.parquet"}
"""The hub's file layout: parquet shards per hub split."""

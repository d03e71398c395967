"""A tiny dataset with exactly the NSD-Flat columns (``boldgpt.sim.writer.FEATURES``), in
the hub's file layout, for tests: ``data/train-0000k-of-0000K.parquet`` and
``data/test-00000-of-00001.parquet`` with real PNG encodings, written with ``datasets``.

The builder keeps what it wrote (maps, images, metadata), so tests compare the loader's
output with values that did not go through the code under test.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from boldgpt.data import schema
from boldgpt.sim.writer import FEATURES


def tiny_mask() -> np.ndarray:
    """Two ellipses, one per hemisphere: bool (215, 200)."""
    yy, xx = np.mgrid[: schema.HEIGHT, : schema.WIDTH]
    left = ((xx - 60) / 35.0) ** 2 + ((yy - 140) / 45.0) ** 2 <= 1
    right = ((xx - 140) / 35.0) ** 2 + ((yy - 140) / 45.0) ** 2 <= 1
    return left | right


def png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class TinyNSD:
    """What was written: ``rows[hub_split]`` are the row dicts (the parquet content, in
    file order); ``maps[hub_split]`` the uint8 (N, 215, 200) maps; ``images`` nsd_id ->
    RGB uint8 (S, S, 3)."""

    root: Path
    mask: np.ndarray
    rows: dict[str, list[dict[str, Any]]]
    maps: dict[str, np.ndarray]
    images: dict[int, np.ndarray] = field(default_factory=dict)

    def column(self, hub_split: str, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows[hub_split]])


def make_rows(
    subjects: Sequence[int] = (0, 1, 2),
    sessions: int = 3,
    test_sessions: int = 1,
    trials_per_session: int = 8,
    n_shared: int = 4,
    image_size: int = 24,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, np.ndarray], dict[int, np.ndarray]]:
    """NSD-like rows: every subject sees ``n_shared`` shared images (flagged shared1000)
    and its own images, each shown twice; its last ``test_sessions`` sessions are test."""
    rng = np.random.default_rng(seed)
    mask = tiny_mask() if mask is None else mask
    shared_ids = [100 * (k + 1) for k in range(n_shared)]
    total = sessions * trials_per_session
    images: dict[int, np.ndarray] = {}
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    maps: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for sub in subjects:
        own = [10_000 + 1000 * sub + k for k in range((total + 1) // 2 - n_shared)]
        schedule = np.array((shared_ids + own) * 2)[:total]
        rng.shuffle(schedule)
        for trial, nsd_id in enumerate(schedule.tolist()):
            if nsd_id not in images:
                images[nsd_id] = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            act = np.full(schema.MAP_SHAPE, 127, dtype=np.uint8)
            act[mask] = rng.integers(0, 256, int(mask.sum()), dtype=np.uint8)
            session = trial // trials_per_session
            hub_split = "test" if session >= sessions - test_sessions else "train"
            reps = {f"subject{s}_rep{r}": 0 for s in range(1, 9) for r in range(3)}
            reps[f"subject{sub + 1}_rep0"] = trial + 1
            rows[hub_split].append(
                {
                    "subject_id": sub,
                    "trial_id": trial,
                    "session_id": session + 1,
                    "nsd_id": nsd_id,
                    "image": {"bytes": png(images[nsd_id], "RGB"), "path": None},
                    "activity": {"bytes": png(act, "L"), "path": None},
                    "subject": schema.subject_name(sub),
                    "flagged": False,
                    "BOLD5000": nsd_id % 7 == 0,
                    "shared1000": nsd_id in shared_ids,
                    "coco_split": "train2017",
                    "coco_id": 500_000 + nsd_id,
                    "objects": {
                        "area": [120],
                        "bbox": [[1.0, 2.0, 10.0, 12.0]],
                        "category": ["dog"],
                        "iscrowd": [0],
                        "segmentation": [
                            {"counts": "", "poly": [[1.0, 2.0, 11.0, 2.0, 11.0, 14.0]], "size": []}
                        ],
                        "supercategory": ["animal"],
                        "target": [18],
                    },
                    "captions": [f"a dog, image {nsd_id}", "an animal on grass"],
                    "repetitions": reps,
                }
            )
            maps[hub_split].append(act)
    stacked = {k: np.stack(v) for k, v in maps.items()}
    return rows, stacked, images


def write_hub_layout(
    root: Path,
    rows: dict[str, list[dict[str, Any]]],
    *,
    train_shards: int = 1,
    drop_columns: Sequence[str] = (),
    mask: np.ndarray | None = None,
) -> Path:
    """Write rows as ``root/data/{split}-0000k-of-0000K.parquet`` with ``FEATURES``
    (minus ``drop_columns``); ``mask`` is saved as ``root/mask.npy`` when given."""
    features = datasets.Features({k: v for k, v in FEATURES.items() if k not in drop_columns})
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        shards = train_shards if split == "train" else 1
        bounds = np.linspace(0, len(split_rows), shards + 1).astype(int)
        for k in range(shards):
            part = [
                {c: v for c, v in r.items() if c not in drop_columns}
                for r in split_rows[bounds[k] : bounds[k + 1]]
            ]
            ds = datasets.Dataset.from_list(part, features=features)
            datasets.disable_progress_bars()
            try:
                ds.to_parquet(str(root / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet"))
            finally:
                datasets.enable_progress_bars()
    if mask is not None:
        np.save(root / "mask.npy", mask)
    return root


def build_tiny_nsd(
    root: Path, *, train_shards: int = 2, with_mask: bool = False, **kwargs
) -> TinyNSD:
    """Make and write a tiny NSD-Flat copy under ``root``; see :func:`make_rows`."""
    mask = kwargs.pop("mask", None)
    mask = tiny_mask() if mask is None else mask
    rows, maps, images = make_rows(mask=mask, **kwargs)
    write_hub_layout(root, rows, train_shards=train_shards, mask=mask if with_mask else None)
    return TinyNSD(root=root, mask=mask, rows=rows, maps=maps, images=images)

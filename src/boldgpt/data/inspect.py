"""What ``boldgpt data inspect`` reports about a source: subjects, trials per split, the
mask, and a few example maps with their stimuli. Reads only the
metadata columns and a handful of maps, so it is quick even for the full dataset."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from boldgpt.data import schema
from boldgpt.data.nsd_flat import (
    SPLITS,
    SplitIndex,
    decode_activity,
    decode_image,
    index_split,
    load_mask,
    read_rows,
)
from boldgpt.data.sources import Source, resolve_source


@dataclass
class SourceSummary:
    """Counts and mask statistics of a source.

    ``trials[split][subject_id]`` and ``stimuli[split]`` (unique ``nsd_id``) count rows
    of each split present; ``mask`` (bool (215, 200)) came from ``mask_from``.
    """

    source: Source
    indexes: dict[str, SplitIndex]
    subjects: list[int]
    trials: dict[str, dict[int, int]]
    stimuli: dict[str, int]
    mask: np.ndarray
    mask_from: str


def inspect_source(
    source: str | os.PathLike | Source,
    *,
    subjects: int | str | Sequence[int | str] | None = None,
    mask_file: str | os.PathLike | None = None,
    progress: bool = True,
) -> SourceSummary:
    """Summarize a source (see :class:`SourceSummary`)."""
    src = resolve_source(source, progress=progress)
    indexes = {
        split: index_split(src, split, subjects)
        for split in SPLITS
        if src.files["train" if split != "test" else "test"]
    }
    sids = sorted({int(s) for ix in indexes.values() for s in np.unique(ix.meta["subject_id"])})
    trials = {
        split: {s: int((ix.meta["subject_id"] == s).sum()) for s in sids}
        for split, ix in indexes.items()
    }
    stimuli = {split: int(len(np.unique(ix.meta["nsd_id"]))) for split, ix in indexes.items()}
    if mask_file is not None:
        mask_from = str(mask_file)
    elif (src.root / "mask.npy").exists():
        mask_from = str(src.root / "mask.npy")
    else:
        mask_from = "the maps (estimated: pixels that are not constant background)"
    mask = load_mask(src, mask_file, progress=progress)
    return SourceSummary(
        source=src,
        indexes=indexes,
        subjects=sids,
        trials=trials,
        stimuli=stimuli,
        mask=mask,
        mask_from=mask_from,
    )


@dataclass
class Examples:
    """Example trials of one split: maps (K, 215, 200) float32 z-values, their stimuli
    (RGB uint8 arrays, or None where the source has no images) and titles."""

    split: str
    maps: np.ndarray
    images: list[np.ndarray | None]
    titles: list[str]


def example_maps(summary: SourceSummary, count: int) -> Examples | None:
    """``count`` trials spread evenly over the first non-empty split (val first: shared
    stimuli, seen by every subject); None when there is none."""
    indexes = summary.indexes
    split = next((s for s in ("val", "train", "test") if s in indexes and len(indexes[s])), None)
    if split is None or count < 1:
        return None
    index = indexes[split]
    positions = np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).astype(int))
    maps, images, titles = [], [], []
    for i in positions.tolist():
        path, row = index.locate(i)
        has_image = "image" in pq.read_schema(path).names
        values = read_rows(path, [row], ["activity", "image"] if has_image else ["activity"])
        act = decode_activity(values["activity"][0], f"{path} row {row} column 'activity'")
        maps.append(schema.dequantize(act))
        where = f"{Path(path)} row {row} column 'image'"
        images.append(decode_image(values["image"][0], where) if has_image else None)
        sid, nsd = int(index.meta["subject_id"][i]), int(index.meta["nsd_id"][i])
        titles.append(f"{schema.subject_name(sid)} nsd {nsd}")
    return Examples(split, np.stack(maps), images, titles)

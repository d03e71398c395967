"""Reading the ground truth stored beside a simulated dataset (``OUT_DIR/truth/``).

Only compact inputs are stored: per stimulus its contrast features and category
drives, per subject its model (``forward.SubjectModel``). Noiseless maps are recomputed
from them on request, exactly as the generator computed them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boldgpt.errors import DataError
from boldgpt.sim.forward import SubjectModel

TRUTH_DIR = "truth"


@dataclass
class StimulusTruth:
    """Per-stimulus ground truth of a dataset, rows sorted by ``nsd_id``.

    Attributes:
        nsd_id: (n,) int64.
        features: (n, 3, 32, 32) float16 contrast features (memory-mapped).
        drives: (n, NUM_DRIVES) float32 category drives.
        label: (n,) contiguous COCO class index (0..79) of the main object.
        scene: (n,) index into ``scenes``.
        scenes: scene type names.
    """

    nsd_id: np.ndarray
    features: np.ndarray
    drives: np.ndarray
    label: np.ndarray
    scene: np.ndarray
    scenes: list[str]

    def positions(self, nsd_ids: Any) -> np.ndarray:
        """Row of each nsd id; a clear error for ids that are not in the dataset."""
        ids = np.asarray(nsd_ids, dtype=np.int64).ravel()
        pos = np.searchsorted(self.nsd_id, ids).clip(0, len(self.nsd_id) - 1)
        bad = self.nsd_id[pos] != ids
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} nsd_id(s) are not stimuli of this dataset, e.g. "
                f"{ids[bad][:5].tolist()}"
            )
        return pos


def _check_root(out_dir: str | os.PathLike) -> Path:
    root = Path(out_dir)
    if not (root / "simulation.json").exists():
        raise DataError(
            f"{root} is not a complete simulated dataset: simulation.json is missing "
            "(generate one with `boldgpt data simulate`)"
        )
    if not (root / TRUTH_DIR).is_dir():
        raise DataError(f"{root} has no {TRUTH_DIR}/ directory with the ground truth")
    return root


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        raise DataError(f"ground-truth file {path} is missing") from None


def load_stimulus_truth(out_dir: str | os.PathLike) -> StimulusTruth:
    """The per-stimulus ground truth of simulated dataset ``out_dir``."""
    root = _check_root(out_dir)
    path = root / TRUTH_DIR / "stimuli.npz"
    return _stimulus_truth(str(path.resolve()), _stamp(path))


@functools.lru_cache(maxsize=4)
def _stimulus_truth(path: str, stamp: int) -> StimulusTruth:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        features = np.load(Path(path).with_name("features.npy"), mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the stimulus ground truth beside {path}: {exc}") from exc
    meta = json.loads((Path(path).parents[1] / "simulation.json").read_text())
    if len(features) != len(data["nsd_id"]):
        raise DataError(f"{path}: features.npy and stimuli.npz have different numbers of rows")
    return StimulusTruth(
        nsd_id=data["nsd_id"],
        features=features,
        drives=data["drives"],
        label=data["label"],
        scene=data["scene"],
        scenes=list(meta.get("scenes", [])),
    )


def load_subject_model(out_dir: str | os.PathLike, subject_id: int) -> SubjectModel:
    """Subject ``subject_id``'s ground-truth model (atlas, receptive fields, gains)."""
    root = _check_root(out_dir)
    path = root / TRUTH_DIR / f"subject{int(subject_id):02d}.npz"
    if not path.exists():
        have = sorted(int(p.stem[7:]) for p in (root / TRUTH_DIR).glob("subject*.npz"))
        raise ValueError(f"subject {subject_id} is not simulated in {root}; subjects: {have}")
    return _subject_model(str(path.resolve()), _stamp(path))


@functools.lru_cache(maxsize=8)
def _subject_model(path: str, stamp: int) -> SubjectModel:
    return SubjectModel.load(path)


def load_ground_truth(
    out_dir: str | os.PathLike, subject_id: int, nsd_ids: Any, chunk: int = 512
) -> np.ndarray:
    """Noiseless maps of a subject for stimuli, in the z units of the data.

    Args:
        out_dir: a directory written by :func:`simulate_dataset`.
        subject_id: 0-based subject.
        nsd_ids: stimuli (any stimulus of the dataset, seen by this subject or not).

    Returns:
        (n, 215, 200) float32, zero outside the mask. A measured map of the dataset is
        this plus noise of variance ``1 / std**2`` per pixel (see ``SubjectModel``),
        up to the per-session z-scoring and uint8 quantization.
    """
    model = load_subject_model(out_dir, subject_id)
    stim = load_stimulus_truth(out_dir)
    pos = stim.positions(nsd_ids)
    out = []
    for start in range(0, len(pos), chunk):
        p = pos[start : start + chunk]
        feats = np.asarray(stim.features[p], dtype=np.float32)
        out.append(model.to_canvas(model.truth_z(feats, stim.drives[p])))
    if not out:
        return np.zeros(
            (0, *model.to_canvas(np.zeros((1, model.num_pixels))).shape[1:]), np.float32
        )
    return np.concatenate(out).astype(np.float32)

"""Rendering every stimulus of a dataset once, with bounded memory.

Each picture is drawn and PNG-encoded once (its repeats reuse the bytes), the PNG
bytes go to a scratch file (73,000 pictures would not fit in memory), annotations are
kept as compact arrow arrays and the ground-truth features and drives are written to
``truth/``. Large datasets are drawn by worker processes: drawing is Python-heavy and
holds the GIL.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from boldgpt.sim import categories as cats
from boldgpt.sim import scenes
from boldgpt.sim.features import (
    GRID,
    NUM_DRIVES,
    contrast_features,
    drive_vector,
    reduce_image,
)
from boldgpt.sim.stimuli import render_stimulus
from boldgpt.sim.writer import FEATURES, encode_png

CHUNK = 128
"""Stimuli per batch of the contrast front-end."""
MIN_PARALLEL = 600
"""Fewer stimuli than this are drawn in-process (starting workers would not pay)."""


def _render_one(args: tuple[int, int, int]) -> tuple:
    """Worker: draw one stimulus; return its PNG, the 128 px picture the front-end
    needs and its annotations (no BLAS or torch here: safe in a forked worker)."""
    nsd_id, seed, size = args
    s = render_stimulus(nsd_id, seed, size)
    meta = (s.objects, s.captions, s.coco_split, s.coco_id, s.flagged, s.bold5000)
    return encode_png(s.image), reduce_image(s.image), s.label, s.scene, s.place, meta


def _ignore_sigint() -> None:
    # Ctrl-C is the parent's to handle: it terminates the pool. A worker dying of it
    # mid-task would leave the pool unable to shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _workers(n_stimuli: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A pool of forked drawing processes, or None (small jobs, one core, no fork)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if n_stimuli < MIN_PARALLEL or (cpus or 1) < 2 or sys.platform != "linux":
        yield None
        return
    for name in (*scenes.GRAY_TEXTURES, *scenes.PHOTOS):
        scenes.texture(name)  # loaded once here, shared with the forked workers
    with warnings.catch_warnings():
        # Workers only draw (numpy, Pillow, zlib), never touch the parent's threads.
        warnings.filterwarnings("ignore", message=".*use of fork.*", category=DeprecationWarning)
        pool = multiprocessing.get_context("fork").Pool(min(cpus, 4), initializer=_ignore_sigint)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


class StimulusStore:
    """The rendered stimuli of a dataset (``ids`` sorted), stored under ``root``."""

    def __init__(self, root: Path, ids: np.ndarray, truth_dir: str):
        self.root = Path(root)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.truth = self.root / truth_dir
        n = len(self.ids)
        self.features = np.lib.format.open_memmap(
            self.truth / "features.npy", mode="w+", dtype=np.float16, shape=(n, 3, GRID, GRID)
        )
        self.drives = np.zeros((n, NUM_DRIVES), np.float32)
        self.label = np.zeros(n, np.int16)
        self.scene = np.zeros(n, np.int16)
        self.offsets = np.zeros(n + 1, np.int64)
        self.scratch_path = self.root / ".stimuli.bin"
        self.meta: pa.Table | None = None

    def render_all(self, seed: int, size: int, progress: bool) -> None:
        """Draw, encode and describe every stimulus (in order of ``ids``)."""
        objects_type = FEATURES.arrow_schema.field("objects").type
        chunks = [self.ids[i : i + CHUNK] for i in range(0, len(self.ids), CHUNK)]
        parts = []
        bar = tqdm(total=len(self.ids), desc="stimuli", unit="img", disable=not progress)
        with _workers(len(self.ids)) as pool, open(self.scratch_path, "wb") as scratch:

            def submit(chunk):
                jobs = [(int(i), seed, size) for i in chunk]
                if pool is None:
                    return [_render_one(j) for j in jobs]
                return pool.imap(_render_one, jobs, chunksize=8)

            # Keep the workers one chunk ahead of the front-end below.
            pending = deque(submit(c) for c in chunks[:2])
            start = 0
            for k in range(len(chunks)):
                results = list(pending.popleft())
                if k + 2 < len(chunks):
                    pending.append(submit(chunks[k + 2]))
                sl = slice(start, start + len(results))
                pngs, small, labels, scenes, places, metas = zip(*results)
                self.features[sl] = contrast_features(np.stack(small)).astype(np.float16)
                self.drives[sl] = [drive_vector(m[0], p, size) for m, p in zip(metas, places)]
                self.label[sl] = labels
                self.scene[sl] = [cats.SCENES.index(s) for s in scenes]
                for j, png in enumerate(pngs):
                    scratch.write(png)
                    self.offsets[start + j + 1] = self.offsets[start + j] + len(png)
                objects, captions, splits, coco_ids, flagged, bold = zip(*metas)
                parts.append(
                    pa.table(
                        {
                            "objects": pa.array(list(objects), type=objects_type),
                            "captions": pa.array(list(captions), pa.list_(pa.string())),
                            "coco_split": pa.array(list(splits), pa.string()),
                            "coco_id": pa.array(list(coco_ids), pa.int64()),
                            "flagged": pa.array(list(flagged), pa.bool_()),
                            "BOLD5000": pa.array(list(bold), pa.bool_()),
                        }
                    )
                )
                start += len(results)
                bar.update(len(results))
        bar.close()
        self.features.flush()
        self.meta = pa.concat_tables(parts).combine_chunks()

    def positions(self, nsd_ids: np.ndarray) -> np.ndarray:
        """Row of each nsd id (all must be stimuli of the store)."""
        return np.searchsorted(self.ids, nsd_ids)

    def image_bytes(self, pos: np.ndarray) -> list[bytes]:
        """The PNG bytes of stimuli rows ``pos``."""
        out = []
        with open(self.scratch_path, "rb") as f:
            for p in pos:
                f.seek(int(self.offsets[p]))
                out.append(f.read(int(self.offsets[p + 1] - self.offsets[p])))
        return out

    def finish(self) -> None:
        """Drop the scratch file and write ``truth/stimuli.npz``."""
        self.scratch_path.unlink()
        del self.features  # closes the memmap
        np.savez(
            self.truth / "stimuli.npz",
            nsd_id=self.ids,
            drives=self.drives,
            label=self.label,
            scene=self.scene,
        )

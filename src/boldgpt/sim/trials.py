"""Writing a subject's trials: noiseless maps, noise, z-scoring, PNG, parquet rows.

Trials are processed in z-scoring blocks (a session, or several short ones), so memory
is bounded by a block whatever the dataset size; a block's maps are PNG-encoded by a
thread pool while the next block is computed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from boldgpt.data import schema
from boldgpt.sim import forward, noise
from boldgpt.sim.design import Design
from boldgpt.sim.store import StimulusStore
from boldgpt.sim.writer import SplitWriter, encode_png, rows_table

SIGNAL_CACHE_BYTES = 256 << 20
"""A subject's noiseless signals are computed once per stimulus when they fit in this
many bytes (``demo``), else once per block (``full``: 10,000 stimuli x 18,600 pixels)."""


def write_subject(
    model: forward.SubjectModel,
    trials: pd.DataFrame,
    sched: Design,
    stimuli: StimulusStore,
    writers: dict[str, SplitWriter],
    pool: ThreadPoolExecutor,
    seed: int,
    mask: np.ndarray,
    bar: tqdm,
) -> None:
    """All maps of one subject, z-scoring block by block. A block's maps are PNG-encoded
    by the thread pool while the next block is computed."""
    noise_model = noise.NoiseModel(seed, model.subject_id, mask)
    pos_all = stimuli.positions(trials["nsd_id"].to_numpy())
    unique = np.unique(pos_all)
    cache = None
    if len(unique) * model.num_pixels * 4 <= SIGNAL_CACHE_BYTES:
        cache = _signals(model, stimuli, unique)
    blocks = noise.zscore_blocks(trials["session_id"].to_numpy())
    pending = None
    for b in np.unique(blocks):
        sel = blocks == b
        rows, pos = trials[sel], pos_all[sel]
        if cache is not None:
            signal = cache[np.searchsorted(unique, pos)]
        else:
            u, inv = np.unique(pos, return_inverse=True)
            signal = _signals(model, stimuli, u)[inv]
        sessions = rows["session_id"].to_numpy()
        raw = signal + noise_model.sample(len(rows), int(sessions[0]))
        for s in np.unique(sessions):
            offset, gain = noise_model.session_effects(int(s))
            raw[sessions == s] = gain * raw[sessions == s] + offset
        maps = noise.encode_maps(noise.zscore(raw), model.pixels)
        if pending is not None:
            _emit(*pending, sched, stimuli, writers, bar)
        pending = (rows, pos, pool.map(encode_png, maps))
    if pending is not None:
        _emit(*pending, sched, stimuli, writers, bar)


def _emit(
    rows: pd.DataFrame,
    pos: np.ndarray,
    activity,
    sched: Design,
    stimuli: StimulusStore,
    writers: dict[str, SplitWriter],
    bar: tqdm,
) -> None:
    """Append a block's rows (NSD-Flat columns) to the writers of their splits."""
    meta = stimuli.meta.take(pa.array(pos))
    nsd = rows["nsd_id"].to_numpy()
    table = rows_table(
        {
            "subject_id": rows["subject_id"].to_numpy(),
            "trial_id": rows["trial_id"].to_numpy(),
            "session_id": rows["session_id"].to_numpy(),
            "nsd_id": nsd,
            "image": stimuli.image_bytes(pos),
            "activity": list(activity),
            "subject": [schema.subject_name(int(s)) for s in rows["subject_id"]],
            "flagged": meta["flagged"],
            "BOLD5000": meta["BOLD5000"],
            "shared1000": rows["shared1000"].to_numpy(),
            "coco_split": meta["coco_split"],
            "coco_id": meta["coco_id"],
            "objects": meta["objects"],
            "captions": meta["captions"],
            "repetitions": sched.repetitions_of(nsd),
        }
    )
    split = rows["split"].to_numpy()
    for s, writer in writers.items():
        idx = np.flatnonzero(split == s)
        if len(idx):
            writer.write(table.take(pa.array(idx)))
    bar.update(len(rows))


def _signals(model: forward.SubjectModel, stimuli: StimulusStore, pos: np.ndarray) -> np.ndarray:
    """Noiseless signals (len(pos), P) of stimuli rows ``pos`` (sorted, unique)."""
    out = np.empty((len(pos), model.num_pixels), np.float32)
    for start in range(0, len(pos), 512):
        p = pos[start : start + 512]
        feats = np.asarray(stimuli.features[p], dtype=np.float32)
        out[start : start + len(p)] = model.signal(feats, stimuli.drives[p])
    return out

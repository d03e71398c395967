"""``simulate_dataset``: generate nsd-flat-sim end to end, streamed and atomic.

Stages: (1) render every stimulus of the design once (PNG-encode it into a scratch file,
store its features); (2) per subject, draw and calibrate its brain, then, z-scoring
block by block (a session, or several short ones), compute noiseless maps, add noise
and session effects, z-score, quantize, PNG-encode and append the rows to the split's
current parquet shard. Everything is written into a temporary directory beside
``out_dir`` that replaces it only when complete, so a killed run never leaves a
directory that looks finished.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import boldgpt
from boldgpt.data import schema
from boldgpt.errors import ConfigError, DataError
from boldgpt.sim import categories as cats
from boldgpt.sim import forward, noise
from boldgpt.sim.design import Design, generate_design, load_design
from boldgpt.sim.features import (
    category_drives,
    contrast_features,
    reduce_image,
)
from boldgpt.sim.geometry import default_mask
from boldgpt.sim.presets import (
    PRESETS,
    VERSION,
    Preset,
    existing_identity,
    generated_design_id,
)
from boldgpt.sim.stimuli import DEFAULT_IMAGE_SIZE, render_stimulus
from boldgpt.sim.store import StimulusStore
from boldgpt.sim.trials import write_subject
from boldgpt.sim.truth import TRUTH_DIR
from boldgpt.sim.writer import SplitWriter, dataset_card
from boldgpt.utils.io import atomic_dir, file_lock, write_json
from boldgpt.utils.threads import cpu_threads

DEFAULT_SNR = 0.5
"""Default mean single-trial SNR (signal variance / noise variance) over mask pixels:
a repeat-to-repeat correlation of about 0.3, within NSD's range for visual cortex
(single-trial noise ceilings of 0.2-0.6 in its best voxels) and enough for a small model
to learn in minutes."""
NUM_CALIBRATION = 256
_CALIBRATION_BASE = 10_000_000  # stimulus ids of the calibration set (not NSD ids)


def resolve_mask(mask: np.ndarray | str | os.PathLike | None) -> tuple[np.ndarray, dict]:
    """A bool (215, 200) mask and a description of where it came from."""
    if mask is None:
        m = default_mask()
        return m, {"source": "procedural", "pixels": int(m.sum()), "sha256": _sha(m)}
    source = "array"
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        source = str(path)
        if not path.exists():
            raise FileNotFoundError(f"mask file {path} does not exist")
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"mask file {path} is not a readable .npy array (expected bool (215, 200)): {exc}"
            ) from exc
    arr = np.asarray(mask)
    if arr.shape != schema.MAP_SHAPE:
        raise DataError(f"mask {source}: expected shape (215, 200), got {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise DataError(f"mask {source}: expected bool (or 0/1) values, got dtype {arr.dtype}")
        arr = arr.astype(bool)
    if arr.sum() < 100:
        raise DataError(
            f"mask {source}: only {int(arr.sum())} pixels; expected a cortex mask of at least 100"
        )
    return arr.copy(), {"source": source, "pixels": int(arr.sum()), "sha256": _sha(arr)}


def _sha(obj: Any) -> str:
    h = hashlib.sha256()
    if isinstance(obj, np.ndarray):
        h.update(str((obj.dtype, obj.shape)).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, pd.DataFrame):
        h.update(pd.util.hash_pandas_object(obj, index=False).to_numpy().tobytes())
    else:
        with open(obj, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _check_args(preset: str, snr, seed, image_size) -> tuple[Preset, float, int, int]:
    if preset not in PRESETS:
        raise ConfigError(f"unknown simulator preset {preset!r}; expected one of {sorted(PRESETS)}")
    snr = DEFAULT_SNR if snr is None else snr
    try:
        snr = float(snr)
    except (TypeError, ValueError):
        raise ConfigError(f"snr must be a positive number; got {snr!r}") from None
    if not np.isfinite(snr) or snr <= 0:
        raise ConfigError(f"snr must be a positive number; got {snr}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 1024:
        raise ConfigError(
            f"image_size must be an integer number of pixels in 32..1024; got {image_size!r}"
        )
    return PRESETS[preset], snr, int(seed), int(size)


def _subjects(subjects, preset: Preset) -> list[int] | int:
    if subjects is None:
        return preset.subjects
    if isinstance(subjects, (int, np.integer)) and not isinstance(subjects, bool):
        if not 1 <= subjects <= schema.NUM_NSD_SUBJECTS:
            raise ConfigError(
                f"subjects: expected a count in 1..8 or a list of ids; got {subjects}"
            )
        return int(subjects)
    try:
        ids = sorted({int(s) for s in subjects})
    except (TypeError, ValueError):
        raise ConfigError(
            f"subjects: expected a count or a list of 0-based ids; got {subjects!r}"
        ) from None
    if not ids or ids[0] < 0 or ids[-1] >= schema.NUM_NSD_SUBJECTS:
        raise ConfigError(f"subjects: expected 0-based ids in 0..7; got {list(subjects)}")
    return ids


def simulate_dataset(
    out_dir: str | os.PathLike,
    preset: str = "demo",
    *,
    mask: np.ndarray | str | os.PathLike | None = None,
    design: str | os.PathLike | pd.DataFrame | None = None,
    subjects: int | Sequence[int] | None = None,
    snr: float | None = None,
    seed: int = 0,
    image_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a simulated dataset in NSD-Flat's format and hub layout to ``out_dir``.

    Args:
        out_dir: output directory (see docs/DESIGN.md for its layout).
        preset: ``"ci"``, ``"demo"`` or ``"full"`` (see ``PRESETS``).
        mask: bool (215, 200) array or a ``.npy`` file (default: ``default_mask()``).
        design: a schedule table (parquet / csv path or DataFrame) like NSD's
            ``nsd_trial_metadata.parquet``; subsampled to the preset's size (all of it
            for ``full``). Default: the preset's generated NSD-like schedule.
        subjects: how many subjects (the first ones) or which 0-based ids.
        snr: mean single-trial signal-to-noise variance ratio over mask pixels
            (default ``DEFAULT_SNR``).
        seed: everything (stimuli, brains, noise, schedule) follows from it.
        image_size: side of the stimulus pictures in pixels (default 256).
        overwrite: replace an existing dataset with other parameters.
        progress: show progress bars.

    Returns:
        ``out_dir``. If it already holds a complete dataset with the same parameters, it
        is returned as is.
    """
    spec, snr, seed, size = _check_args(preset, snr, seed, image_size)
    mask_arr, mask_info = resolve_mask(mask)
    subj = _subjects(subjects, spec)
    if design is None:
        ids = list(range(subj)) if isinstance(subj, int) else subj
        sched = generate_design(spec.design, ids, seed)
        design_info = {"source": "generated", **asdict(spec.design)}
        design_id = generated_design_id(spec.design)
    else:
        sched = load_design(design, subjects=subj, max_trials=spec.max_trials, seed=seed)
        design_info = {
            "source": sched.source,
            "sha256": _sha(design),
            "max_trials": spec.max_trials,
        }
        design_id = design_info["sha256"]
    identity = {
        "version": VERSION,
        "preset": spec.name,
        "seed": seed,
        "snr": snr,
        "subjects": sched.subjects,
        "image_size": size,
        "mask": mask_info["sha256"],
        "design": design_id,
    }
    out = Path(out_dir)
    with file_lock(out.with_name(f".{out.name}.simulating.lock")):
        existing = existing_identity(out)
        if existing is None and out.exists() and any(out.iterdir()):
            raise ConfigError(
                f"refusing to write to {out}: it is not empty and is not a simulated dataset "
                "(no simulation.json); choose another directory"
            )
        if existing is not None and not overwrite:
            if existing == identity:
                return out
            diff = sorted(k for k in identity if existing.get(k) != identity[k])
            raise ConfigError(
                f"{out} holds a simulated dataset with other parameters ({', '.join(diff)}); "
                "pass overwrite=True (--overwrite) to replace it"
            )
        info = {
            "generator": "boldgpt.sim",
            "boldgpt_version": boldgpt.__version__,
            "identity": identity,
            **{k: v for k, v in identity.items() if k not in ("mask", "design")},
            "mask": mask_info,
            "design": design_info,
            "test_sessions": spec.design.test_sessions if design is None else 3,
        }
        # torch on one thread: the other cores draw (worker processes) or PNG-encode
        # (threads); oversubscribed, generation ran 2x slower on 2 cores
        with atomic_dir(out) as tmp, cpu_threads(1):
            _generate(tmp, sched, mask_arr, info, spec.rows_per_shard, progress)
    return out


@functools.lru_cache(maxsize=2)
def calibration_set(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (rounded like the stored ones) and drives of the calibration stimuli:
    ``NUM_CALIBRATION`` pictures that are not in any dataset, fixed by the seed, on which
    every subject's scales and SNR are set (cached: it does not depend on the design)."""
    cal = [render_stimulus(_CALIBRATION_BASE + j, seed, size) for j in range(NUM_CALIBRATION)]
    features = contrast_features(np.stack([reduce_image(s.image) for s in cal]))
    features = features.astype(np.float16).astype(np.float32)
    drives = category_drives(cal)
    return features, drives


def _generate(
    root: Path, sched: Design, mask: np.ndarray, info: dict, rows_per_shard: int, progress: bool
) -> None:
    t0 = time.perf_counter()
    seed, size, snr = info["seed"], info["image_size"], info["snr"]
    workers = max(1, min(4, os.cpu_count() or 1))
    (root / TRUTH_DIR).mkdir()
    timing = {}
    # Drawing first, before this process starts any thread: it may fork workers.
    stimuli = StimulusStore(root, np.unique(sched.trials["nsd_id"].to_numpy()), TRUTH_DIR)
    stimuli.render_all(seed, size, progress)
    timing["stimuli"] = time.perf_counter() - t0
    with ThreadPoolExecutor(workers) as pool:
        t1 = time.perf_counter()
        cal_features, cal_drives = calibration_set(seed, size)
        timing["calibration"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        sizes = sched.split_sizes()
        writers = {s: SplitWriter(root, s, n, rows_per_shard) for s, n in sizes.items()}
        bar = tqdm(total=len(sched.trials), desc="maps", unit="map", disable=not progress)
        for subject in sched.subjects:
            model = forward.build_subject(seed, subject, mask)
            model.calibrate(cal_features, cal_drives, snr)
            model.save(root / TRUTH_DIR / f"subject{subject:02d}.npz")
            trials = sched.trials[sched.trials["subject_id"] == subject]
            write_subject(model, trials, sched, stimuli, writers, pool, seed, mask, bar)
        bar.close()
        for w in writers.values():
            w.close()
        timing["maps"] = time.perf_counter() - t2
    stimuli.finish()
    np.save(root / "mask.npy", mask)
    trials = sched.trials
    info.update(
        splits=sizes,
        val_rows=int((trials["shared1000"] & (trials["split"] == "train")).sum()),
        num_stimuli=len(stimuli.ids),
        shards={s: len(w.names) for s, w in writers.items()},
        scenes=list(cats.SCENES),
        categories=[
            {"name": c.name, "coco_id": c.coco_id, "index": c.index} for c in cats.CATEGORIES
        ],
        calibration_stimuli=NUM_CALIBRATION,
        noise={
            "shares": noise.NOISE_SHARES,
            "smooth_sigma_mm": noise.SMOOTH_SIGMA_MM,
            "broad_sigma_mm": noise.BROAD_SIGMA_MM,
            "modes": noise.NUM_MODES,
            "min_zscore_block_trials": noise.MIN_BLOCK_TRIALS,
        },  # fmt: skip
        warp_mm=forward.WARP_MM,
        gain_sd=forward.GAIN_SD,
        pattern_weight=forward.PATTERN_WEIGHT,
        early_norm_power=forward.EARLY_NORM_POWER,
        seconds={k: round(v, 2) for k, v in timing.items()},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    info["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    (root / "README.md").write_text(dataset_card(info))
    write_json(root / "simulation.json", info)  # last: marks the directory complete

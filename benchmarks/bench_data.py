"""Maps per second: PNG decoding through ``datasets`` (how a naive training loop reads
NSD-Flat) vs the memory-mapped cache path (DataLoader batches of 256 random maps).

The benchmark writes its own NSD-Flat-format shards (the real NSD mask from ../shared when
present; smooth signal plus noise, quantized as NSD-Flat does, so PNGs compress like real
maps) into a temporary directory, so it needs no network and no simulator.
Targets: the cache path >= 20x the datasets path and >= 50,000 maps/s.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row  # noqa: E402

BATCH = 256
SHARED_MASK = HERE.parent.parent / "shared" / "nsd" / "nsd_flat_mask.npy"


def _mask() -> tuple[np.ndarray, str]:
    if SHARED_MASK.exists():
        return np.load(SHARED_MASK), "real NSD mask"
    yy, xx = np.mgrid[:215, :200]
    mask = (((xx - 55) / 40) ** 2 + ((yy - 130) / 75) ** 2 <= 1) | (
        ((xx - 145) / 40) ** 2 + ((yy - 130) / 75) ** 2 <= 1
    )
    return mask, "procedural mask"


def write_dataset(root: Path, n: int, seed: int = 0) -> str:
    """``n`` train maps in the hub layout (required columns only, 4 shards)."""
    import datasets
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from boldgpt.data import schema

    mask, mask_kind = _mask()
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "subject_id": datasets.Value("int64"),
            "trial_id": datasets.Value("int64"),
            "session_id": datasets.Value("int64"),
            "nsd_id": datasets.Value("int64"),
            "activity": datasets.Image(),
            "shared1000": datasets.Value("bool"),
        }
    )
    # A few smooth "activation patterns" mixed per trial, plus white noise: PNG sizes
    # (~25-30 kB) in the range of real maps.
    bases = np.stack([gaussian_filter(rng.standard_normal((215, 200)), 4) * 8 for _ in range(16)])
    (root / "data").mkdir(parents=True, exist_ok=True)
    shards = 4
    datasets.disable_progress_bars()
    for k, part in enumerate(np.array_split(np.arange(n), shards)):
        rows = []
        for i in part.tolist():
            z = np.tensordot(rng.standard_normal(16) / 4, bases, 1) + rng.standard_normal(
                (215, 200)
            )
            u = schema.quantize(np.where(mask, z, 0.0))
            buf = io.BytesIO()
            Image.fromarray(u, "L").save(buf, format="PNG")
            rows.append(
                {
                    "subject_id": i % 8,
                    "trial_id": i,
                    "session_id": i // 750 + 1,
                    "nsd_id": int(rng.integers(0, 73_000)),
                    "activity": {"bytes": buf.getvalue(), "path": None},
                    "shared1000": False,
                }
            )
        ds = datasets.Dataset.from_list(rows, features=features)
        ds.to_parquet(str(root / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"))
    datasets.enable_progress_bars()
    np.save(root / "mask.npy", mask)
    return mask_kind


def _rate(fn, min_time: float) -> float:
    """Maps per second of ``fn`` (returns maps done per call), run for ``min_time`` s."""
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        done += fn()
    return done / (time.perf_counter() - start)


def run(quick: bool) -> list[Row]:
    import torch

    from boldgpt.data.cache import CachedNSDFlat, build_cache, make_dataloader
    from boldgpt.data.nsd_flat import load_nsd_flat
    from boldgpt.data.transforms import prepare_batch

    n = 2000 if quick else 10_000
    min_time = 2.0 if quick else 5.0
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp) / "nsd"
        t0 = time.perf_counter()
        mask_kind = write_dataset(root, n)
        write_s = time.perf_counter() - t0
        png_kb = sum(p.stat().st_size for p in (root / "data").glob("*.parquet")) / n / 1e3

        ds = load_nsd_flat(root, "train", cache_dir=Path(tmp) / "hf", progress=False)

        def per_row() -> int:
            for i in rng.integers(0, n, 64).tolist():
                np.asarray(ds[i]["activity"])
            return 64

        def batched() -> int:
            rows = ds[rng.integers(0, n, BATCH).tolist()]["activity"]
            np.stack([np.asarray(im) for im in rows])
            return BATCH

        base_row = _rate(per_row, min_time)
        base_batch = _rate(batched, min_time)
        baseline = max(base_row, base_batch)
        base_name = "datasets per-row" if base_row >= base_batch else "datasets batched"

        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        t0 = time.perf_counter()
        cache_dir = build_cache(
            root, splits=["train"], cache_root=Path(tmp) / "cache", num_workers=workers,
            progress=False,
        )  # fmt: skip
        build_rate = n / (time.perf_counter() - t0)

        cached = CachedNSDFlat(cache_dir, "train")
        loader = make_dataloader(cached, BATCH, seed=0, drop_last=True)
        it = iter(loader)

        def next_batch():
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader)
                return next(it)

        def cache_u8() -> int:
            return len(next_batch()["activity"])

        def cache_f32() -> int:
            return len(prepare_batch(next_batch(), "cpu")["activity"])

        u8 = _rate(cache_u8, min_time)
        f32 = _rate(cache_f32, min_time)

    extra = {
        "maps": n,
        "mask": mask_kind,
        "png_kb_per_map": round(png_kb, 1),
        "write_dataset_s": round(write_s, 1),
        "torch_threads": torch.get_num_threads(),
        "note": "shared 2-core machine: timings are noisy",
    }
    rows = [
        Row("data", "datasets ds[i] decode (per row)", base_row, "maps/s", extra=extra),
        Row("data", f"datasets ds[{BATCH} rows] decode", base_batch, "maps/s", extra=extra),
        Row(
            "data", f"cache build (PNG decode, {workers} procs)", build_rate, "maps/s",
            baseline=base_name, ratio=build_rate / baseline, extra=extra,
        ),
        Row(
            "data", f"cache DataLoader uint8 (B={BATCH}, random)", u8, "maps/s",
            baseline=base_name, ratio=u8 / baseline, target=">= 20x and >= 50,000 maps/s",
            met=u8 / baseline >= 20 and u8 >= 50_000, extra=extra,
        ),
        Row(
            "data", f"cache DataLoader + dequantize f32 (B={BATCH})", f32, "maps/s",
            baseline=base_name, ratio=f32 / baseline, extra=extra,
        ),
    ]  # fmt: skip
    return rows

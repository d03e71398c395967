"""The training data path, end to end: maps/s from a map cache to model-ready batches.

A synthetic cache in the real format (random quantized maps inside the benchmark mask,
written to a temporary directory: no source, no simulator) is read the way training
reads it: ``make_dataloader`` over ``CachedNSDFlat`` (random order; each batch is one
fancy-indexing copy from the memory map), then ``prepare_batch`` (uint8 -> float32
z-values on the device). Cases (``--only datapath.maps`` / ``datapath.images``):

- ``maps``: at batch 16 (the demo's) and 256; target >= 50,000 maps/s at 256. On the
  CPU the B=256 row also gives the ratio to the conversion before issue 8 (numpy into a
  fresh array per batch), measured in the same run, and each batch size gets a floor
  row: the same path with the conversion replaced by a plain fill of the float32 batch
  (the same reused buffers and threads), i.e. reading the uint8 batch and writing the
  model-ready one at the speed this machine writes memory, with no arithmetic.
- ``images``: stimuli (B, 256, 256, 3) uint8 through ``prepare_batch`` with an
  ``ImageAugment`` random resized crop to 224 (bilinear) and colour jitter.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common import Context, Row, load_mask, write_synthetic_cache

TARGET_MAPS_PER_S = 50_000


def _mask_array() -> tuple[np.ndarray, str]:
    mask, source = load_mask()
    if isinstance(mask, str):
        from boldgpt.data.masks import named_mask

        mask = named_mask(mask)
    return np.asarray(mask, dtype=bool), source


def _throughput(loader: object, prepare: Callable, device: torch.device, min_items: int) -> float:
    """Items/s of iterating ``loader`` and preparing each batch until ``min_items``."""
    items, t0 = 0, time.perf_counter()
    while items < min_items:
        for raw in loader:  # type: ignore[attr-defined]
            batch = prepare(raw, device)
            items += len(batch["subject_id"])
            if items >= min_items:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return items / (time.perf_counter() - t0)


def _prepare_fresh(raw: dict, device: torch.device) -> dict:
    """``prepare_batch`` as it was before the reused CPU buffers: numpy dequantization
    into a fresh array per batch (the same values)."""
    from boldgpt.data import schema

    activity = torch.from_numpy(schema.dequantize(raw["activity"].numpy()))
    return {**{k: v.to(device) for k, v in raw.items() if k != "activity"}, "activity": activity}


def _fill_span(src: np.ndarray, dst: np.ndarray, start: int, stop: int) -> None:
    dst[start:stop].fill(0.0)


def _prepare_write_only(raw: dict, device: torch.device) -> dict:
    """``prepare_batch`` on the CPU without the arithmetic: the float32 batch is filled
    with zeros in the same buffers by the same threads (the data path's floor)."""
    from boldgpt.data.transforms import _dequantize_cpu

    return {**raw, "activity": _dequantize_cpu(raw["activity"], span=_fill_span)}


def maps(ctx: Context) -> list[Row]:
    from boldgpt.data.cache import CachedNSDFlat
    from boldgpt.data.loader import make_dataloader
    from boldgpt.data.transforms import prepare_batch

    mask, source = _mask_array()
    n = 2048 if ctx.quick else 8192
    rows = []
    with tempfile.TemporaryDirectory(prefix="boldgpt-bench-") as tmp:
        dataset = CachedNSDFlat(write_synthetic_cache(Path(tmp) / "cache", n, mask), "train")
        for B in (16, 256):
            loader = make_dataloader(dataset, B, shuffle=True, seed=0, drop_last=True)
            _throughput(loader, prepare_batch, ctx.device, 4 * B)  # warm the page cache
            rate = _throughput(loader, prepare_batch, ctx.device, 2 * n)
            target = B == 256
            extra = {"maps_in_cache": n, "mask": source, "device": str(ctx.device)}
            baseline, ratio = "", None
            if target and ctx.device.type == "cpu":
                # the conversion before issue 8, in the same run: numpy into fresh memory
                before = _throughput(loader, _prepare_fresh, ctx.device, 2 * n)
                baseline, ratio = "fresh-memory dequantize (before)", rate / before
                extra["before_maps_per_s"] = round(before)
            rows.append(
                Row(
                    "datapath",
                    f"cache -> z-values -> model batch, B={B}",
                    rate,
                    "maps/s",
                    baseline=baseline,
                    ratio=ratio,
                    target=f">= {TARGET_MAPS_PER_S:,}" if target else "",
                    met=rate >= TARGET_MAPS_PER_S if target else None,
                    extra=extra,
                )
            )
            if ctx.device.type == "cpu":
                floor = _throughput(loader, _prepare_write_only, ctx.device, 2 * n)
                loader_only = _throughput(loader, lambda raw, device: raw, ctx.device, 2 * n)
                rows.append(
                    Row(
                        "datapath",
                        f"cache -> model batch, B={B}: floor (uint8 batch in, float32 batch "
                        "written, no arithmetic)",
                        floor,
                        "maps/s",
                        baseline="measured / floor",
                        ratio=rate / floor,
                        extra={"uint8_loader_only_maps_per_s": round(loader_only), **extra},
                    )
                )
    return rows


def images(ctx: Context) -> list[Row]:
    from boldgpt.data.cache import CachedNSDFlat
    from boldgpt.data.loader import make_dataloader
    from boldgpt.data.transforms import ImageAugment, prepare_batch

    mask, _ = _mask_array()
    n, size, out = (256, 256, 224) if ctx.quick else (1024, 256, 224)
    augment = ImageAugment(size=out)
    generator = torch.Generator().manual_seed(0)

    def prepare(raw: dict, device: torch.device) -> dict:
        return prepare_batch(raw, device, augment=augment, generator=generator)

    with tempfile.TemporaryDirectory(prefix="boldgpt-bench-") as tmp:
        root = write_synthetic_cache(Path(tmp) / "cache", n, mask, image_size=size)
        dataset = CachedNSDFlat(root, "train", images=True)
        loader = make_dataloader(dataset, 64, shuffle=True, seed=0, drop_last=True)
        _throughput(loader, prepare, ctx.device, 64)
        rate = _throughput(loader, prepare, ctx.device, n)
    return [
        Row(
            "datapath",
            f"stimuli {size}px -> random resized crop {out}px + jitter, B=64",
            rate,
            "images/s",
            extra={"device": str(ctx.device)},
        )
    ]


CASES = [("maps", maps), ("images", images)]

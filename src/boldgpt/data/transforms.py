"""From raw loader batches to model inputs: device transfer, uint8 activity -> z-values,
stimulus normalization and optional image augmentation, all in plain torch.

Raw batches (see docs/DESIGN.md) stay uint8 until they reach the device (4x less to
copy); :func:`prepare_batch` converts them there.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from boldgpt.data import schema
from boldgpt.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dequantize(activity: torch.Tensor) -> torch.Tensor:
    """uint8 activity (any shape) -> float32 z-values ``5 * u / 255 - 2.5``, bit-identical
    to :func:`boldgpt.data.schema.dequantize`.

    On the CPU the result lies in a reused buffer (see :class:`_CpuBuffers`): a batch
    still referenced anywhere is never overwritten, but the memory of a dropped one is
    taken again, so a training loop pays no page faults for fresh memory each step.
    """
    if activity.dtype != torch.uint8:
        raise ValueError(f"dequantize expects uint8 activity; got {activity.dtype}")
    if activity.device.type == "cpu":
        return _dequantize_cpu(activity)
    return dequantize_torch(activity)


_CPU_CHUNK_NUMEL = 1 << 18
"""Values converted per pass on the CPU: 1 MB of float32, so the three passes of the
conversion (cast, scale, shift) run in cache and only one reaches memory. Measured in
one process under load (batches of 256 / 16 maps, the old fresh-array conversion
13.1-16.7 ms / 0.41-0.51 ms): numpy chunks of 2^17-2^18 values 5.0-8.4 ms / 0.39-0.46
ms; torch chunks (on one thread) 6.9-9.7 ms / 0.57-0.64 ms."""


class _CpuBuffers:
    """A few reusable float32 buffers for CPU batches.

    A fresh 44 MB batch (256 maps) costs ~10 page faults per map on first touch, more
    than the conversion itself. The pool keeps only the storages; a storage whose use
    count is 1 (the pool's own reference) is referenced by no tensor and can be reused.
    Holds at most ``size`` buffers (3: the batch in use, the one being prepared, and one
    spare); beyond that, or without the use-count query, buffers are allocated afresh.
    """

    def __init__(self, size: int = 3):
        self.size = size
        self._storages: list[torch.UntypedStorage] = []
        self._lock = threading.Lock()

    def empty(self, shape: torch.Size) -> torch.Tensor:
        numel = math.prod(shape)
        nbytes = numel * 4
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        with self._lock:
            storage = None
            if use_count is not None:
                free = [s for s in self._storages if use_count(s._cdata) == 1]
                storage = next((s for s in free if s.nbytes() == nbytes), None)
                if storage is None:
                    storage = torch.empty(numel, dtype=torch.float32).untyped_storage()
                    if len(self._storages) >= self.size and free:
                        self._storages.remove(free[0])  # a free buffer of another size
                    if len(self._storages) < self.size:
                        self._storages.append(storage)
            if storage is None:
                return torch.empty(shape, dtype=torch.float32)
            return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


_CPU_BUFFERS = _CpuBuffers()


_CPU_PARALLEL_MIN_NUMEL = 1 << 21
"""Batches of at least this many values (49 maps) are converted by two threads: each
pass is memory-bound, and a second core brings its own bandwidth. Smaller ones (the
demo's 16 maps) stay on the calling thread, where a hand-off would cost more than it
saves."""
_CPU_POOL: ThreadPoolExecutor | None = None
_CPU_POOL_LOCK = threading.Lock()


def _conversion_pool() -> ThreadPoolExecutor | None:
    """Two worker threads for large CPU batches (None on a one-core machine)."""
    global _CPU_POOL
    with _CPU_POOL_LOCK:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if _CPU_POOL is None and (cores or 1) >= 2:
            _CPU_POOL = ThreadPoolExecutor(2, thread_name_prefix="boldgpt-dequantize")
        return _CPU_POOL


def _dequantize_span(src: np.ndarray, dst: np.ndarray, start: int, stop: int) -> None:
    # numpy, the same operations as schema.dequantize; it releases the GIL in each pass,
    # and a worker is a plain thread, not an OpenMP one: on a busy core it waits its
    # turn instead of spinning (torch's threaded conversion slowed several-fold there).
    for lo in range(start, stop, _CPU_CHUNK_NUMEL):
        hi = min(lo + _CPU_CHUNK_NUMEL, stop)
        chunk = dst[lo:hi]
        np.copyto(chunk, src[lo:hi], casting="unsafe")
        np.multiply(chunk, schema.DEQUANT_SCALE, out=chunk)
        np.subtract(chunk, np.float32(schema.VMAX), out=chunk)


def _dequantize_cpu(activity: torch.Tensor, span: Callable = _dequantize_span) -> torch.Tensor:
    # (``span`` converts src[start:stop] into dst[start:stop]; the benchmarks swap in a
    # plain fill to measure the path's floor: the same buffers and threads, no arithmetic)
    out = _CPU_BUFFERS.empty(activity.shape)
    src = activity.contiguous().numpy().reshape(-1)
    dst = out.numpy().reshape(-1)
    pool = _conversion_pool() if src.size >= _CPU_PARALLEL_MIN_NUMEL else None
    if pool is None:
        span(src, dst, 0, src.size)
        return out
    # 8 spans taken in turn by 2 workers: when one core is busy with another process,
    # the worker on the free core takes most of the spans (no worse than one thread).
    step = -(-src.size // (8 * _CPU_CHUNK_NUMEL)) * _CPU_CHUNK_NUMEL
    spans = [(lo, min(lo + step, src.size)) for lo in range(0, src.size, step)]
    for f in [pool.submit(span, src, dst, lo, hi) for lo, hi in spans]:
        f.result()
    return out


def dequantize_torch(activity: torch.Tensor) -> torch.Tensor:
    """The torch form of :func:`dequantize`, run on ``activity``'s own device (the path
    of GPU batches); bit-identical to the numpy form and testable on the CPU."""
    z = activity.to(torch.float32).mul_(float(schema.DEQUANT_SCALE))
    return z.sub_(schema.VMAX)


def prepare_batch(
    batch: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    augment: ImageAugment | None = None,
    generator: torch.Generator | None = None,
    non_blocking: bool = True,
) -> dict[str, torch.Tensor]:
    """Move a raw batch to ``device`` and convert it for models.

    - ``activity``: (B, 215, 200) uint8 -> float32 z-values (:func:`dequantize`); float
      activity is taken as already prepared.
    - ``image``: (B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1], optionally
      augmented (``augment``, random parameters from ``generator``), then normalized by
      ``image_mean`` / ``image_std`` (default ImageNet's).
    - every other tensor (ids) is moved as is; non-tensors are kept.
    """
    device = torch.device(device)
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        if key == "activity":
            out[key] = _prepare_activity(value, device, non_blocking)
        elif key == "image":
            out[key] = prepare_images(
                value.to(device, non_blocking=non_blocking),
                mean=image_mean,
                std=image_std,
                augment=augment,
                generator=generator,
            )
        else:
            out[key] = value.to(device, non_blocking=non_blocking)
    return out


def _prepare_activity(
    activity: torch.Tensor, device: torch.device, non_blocking: bool
) -> torch.Tensor:
    if activity.shape[-2:] != schema.MAP_SHAPE:
        raise ValueError(
            f"activity has shape {tuple(activity.shape)}; "
            f"expected (B, {schema.HEIGHT}, {schema.WIDTH})"
        )
    if activity.dtype == torch.uint8:
        # Copy uint8 (4x fewer bytes), convert on the device.
        return dequantize(activity.to(device, non_blocking=non_blocking))
    if activity.is_floating_point():
        if activity.device.type == "cpu":  # free on the host; on a GPU it would sync
            bad = ~torch.isfinite(activity)
            if bool(bad.any()):
                where = bad.reshape(-1, *schema.MAP_SHAPE).flatten(1).any(1).nonzero()
                raise DataError(
                    f"activity map {int(where[0])} (of {len(where)} bad maps) holds "
                    f"{int(bad.sum())} NaN/Inf values; expected finite z-values "
                    "(set pixels outside the mask or unobserved ones to 0)"
                )
        return activity.to(device, non_blocking=non_blocking)
    raise ValueError(f"activity must be uint8 (raw) or float (z-values); got {activity.dtype}")


def prepare_images(
    images: torch.Tensor,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: ImageAugment | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, S, S, 3) (or (B, 3, S, S)) stimuli -> normalized float32 (B, 3, S', S')."""
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(f"images must be (B, S, S, 3) or (B, 3, S, S); got {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)
    elif images.is_floating_point():
        x = images.to(torch.float32)
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1]; got {images.dtype}")
    if augment is not None:
        x = augment(x, generator=generator)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------- augmentation


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def random_resized_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes ``(x0, y0, w, h)`` in pixels, (B, 4) float: area a uniform
    fraction ``scale`` of the image, aspect ratio log-uniform in ``ratio``; after
    ``attempts`` draws that do not fit, the largest centred crop of a clamped ratio."""
    area = height * width
    fracs = _uniform(batch_size * attempts, *scale, generator).view(batch_size, attempts)
    log_r = _uniform(batch_size * attempts, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = log_r.exp().view(batch_size, attempts)
    w = (fracs * area * aspect).sqrt()
    h = (fracs * area / aspect).sqrt()
    fits = (w <= width) & (h <= height) & (w >= 1) & (h >= 1)
    # Fallback: the whole image with the aspect ratio clamped into ``ratio``, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    ok = fits.any(1)
    first = fits.float().argmax(1)  # the first draw that fits
    rows = torch.arange(batch_size)
    w = torch.where(ok, w[rows, first], torch.tensor(fw))
    h = torch.where(ok, h[rows, first], torch.tensor(fh))
    x0 = torch.rand(batch_size, generator=generator) * (width - w)
    y0 = torch.rand(batch_size, generator=generator) * (height - h)
    x0 = torch.where(ok, x0, (width - w) / 2)
    y0 = torch.where(ok, y0, (height - h) / 2)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops: (B, C, H, W) float and boxes (B, 4) ``(x0, y0, w, h)`` pixels ->
    (B, C, size, size)."""
    b, _, height, width = images.shape
    boxes = boxes.to(images.device, images.dtype)
    x0, y0, w, h = boxes.unbind(1)
    # Affine map from output coordinates in [-1, 1] to input ones (align_corners=False).
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample random brightness, contrast and saturation factors in ``[1-v, 1+v]`` and
    a hue rotation in ``[-hue, hue]`` turns (in YIQ space) of (B, 3, H, W) floats in [0, 1]."""
    b = x.shape[0]

    def factor(v: float) -> torch.Tensor:
        return _uniform(b, max(0.0, 1 - v), 1 + v, generator).to(x.device, x.dtype).view(b, 1, 1, 1)

    if brightness:
        x = (x * factor(brightness)).clamp_(0, 1)
    if contrast:
        mean = _gray(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * factor(contrast) + mean).clamp_(0, 1)
    if saturation:
        gray = _gray(x)
        x = ((x - gray) * factor(saturation) + gray).clamp_(0, 1)
    if hue:
        angle = _uniform(b, -hue, hue, generator).to(x.device, x.dtype) * 2 * math.pi
        x = _rotate_hue(x, angle).clamp_(0, 1)
    return x


_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq = _RGB2YIQ.to(x.device, x.dtype)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


@dataclass
class ImageAugment:
    """Random resized crop then colour jitter, per sample, for stimuli (B, 3, S, S) in [0, 1].

    No horizontal flip by default: mirroring a stimulus swaps visual hemifields, which
    the brain maps to opposite hemispheres, so it breaks the image-BOLD pairing.
    Defaults are mild for the same reason (the whole scene should stay in view).
    """

    size: int | None = None
    """Output side (default: the input side)."""
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    flip_p: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"ImageAugment expects float (B, 3, H, W); got {x.dtype} {tuple(x.shape)}"
            )
        b, _, height, width = x.shape
        size = self.size or height
        if self.crop_scale != (1.0, 1.0) or size != height or height != width:
            boxes = random_resized_crop_boxes(
                b, height, width, self.crop_scale, self.crop_ratio, generator
            )
            x = crop_and_resize(x, boxes, size)
        if self.flip_p > 0:
            flip = (torch.rand(b, generator=generator) < self.flip_p).to(x.device)
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        return color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, generator)

"""Batch preparation and image augmentation (plain torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boldgpt.data import schema
from boldgpt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageAugment,
    color_jitter,
    crop_and_resize,
    dequantize,
    prepare_batch,
    random_resized_crop_boxes,
)


def _raw_batch(b=3, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "activity": torch.randint(0, 256, (b, 215, 200), dtype=torch.uint8, generator=g),
        "subject_id": torch.tensor([0, 3, 7][:b]),
        "nsd_id": torch.arange(b) + 100,
        "image": torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g),
    }


def test_activity_matches_schema_dequantize_exactly():
    raw = _raw_batch()
    out = prepare_batch(raw, "cpu")
    assert out["activity"].dtype == torch.float32
    np.testing.assert_array_equal(
        out["activity"].numpy(), schema.dequantize(raw["activity"].numpy())
    )
    # every uint8 code, including the ends of the range
    codes = torch.arange(256, dtype=torch.uint8)
    expected = schema.dequantize(np.arange(256, dtype=np.uint8))
    np.testing.assert_array_equal(dequantize(codes).numpy(), expected)
    assert expected[0] == -2.5 and expected[255] == 2.5


def test_cpu_dequantize_never_overwrites_a_batch_still_held():
    # CPU batches reuse the memory of dropped ones: a held batch (or a view or numpy
    # array of it) must keep its values while later batches are prepared.
    g = torch.Generator().manual_seed(1)
    first_raw = torch.randint(0, 256, (3, 215, 200), dtype=torch.uint8, generator=g)
    first = dequantize(first_raw)
    view = first[1:]
    arr = first.numpy()
    expected = schema.dequantize(first_raw.numpy())
    for _ in range(5):  # more batches than the pool holds buffers
        other = dequantize(torch.randint(0, 256, (3, 215, 200), dtype=torch.uint8, generator=g))
        assert not np.shares_memory(other.numpy(), arr)
    np.testing.assert_array_equal(first.numpy(), expected)
    np.testing.assert_array_equal(view.numpy(), expected[1:])
    del first, view, arr
    # the memory of dropped batches is used again
    pointers = {dequantize(first_raw).data_ptr() for _ in range(4)}
    assert len(pointers) == 1


def test_cpu_dequantize_exact_when_split_over_threads(monkeypatch):
    # large batches are converted in spans by two threads: every value is written once,
    # with the right value, whatever the span and chunk boundaries
    import boldgpt.data.transforms as transforms

    if transforms._conversion_pool() is None:
        pytest.skip("one CPU core: no conversion threads")
    monkeypatch.setattr(transforms, "_CPU_CHUNK_NUMEL", 5)
    monkeypatch.setattr(transforms, "_CPU_PARALLEL_MIN_NUMEL", 100)
    g = torch.Generator().manual_seed(3)
    for n in (100, 101, 997):  # spans of 15 and 65 values: a short last span
        codes = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
        out = dequantize(codes)
        np.testing.assert_array_equal(out.numpy(), schema.dequantize(codes.numpy()))


def test_cpu_dequantize_exact_across_conversion_chunks(monkeypatch):
    # a chunk boundary inside a map (7 values a pass) must not change any value
    import boldgpt.data.transforms as transforms

    monkeypatch.setattr(transforms, "_CPU_CHUNK_NUMEL", 7)
    codes = torch.arange(256, dtype=torch.uint8).repeat(3)[:701].reshape(1, 701)
    expected = schema.dequantize(codes.numpy())
    np.testing.assert_array_equal(dequantize(codes).numpy(), expected)
    # a non-contiguous input (every other map) converts the same
    maps = torch.randint(0, 256, (4, 215, 200), dtype=torch.uint8)
    np.testing.assert_array_equal(
        dequantize(maps[::2]).numpy(), schema.dequantize(maps[::2].numpy())
    )


def test_images_become_normalized_channels_first():
    raw = _raw_batch()
    out = prepare_batch(raw, "cpu", image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0))
    u = raw["image"].numpy().astype(np.float64) / 255
    expected = (u.transpose(0, 3, 1, 2) - 0.5) / np.array([0.25, 0.5, 1.0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-6)
    default = prepare_batch(raw, "cpu")["image"]
    m, s = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    expected = (u.transpose(0, 3, 1, 2) - m.reshape(1, 3, 1, 1)) / s.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(default.numpy(), expected, atol=1e-5)


def test_ids_kept_and_bad_activity_rejected():
    raw = _raw_batch()
    out = prepare_batch(raw, "cpu")
    assert torch.equal(out["subject_id"], raw["subject_id"]) and out["nsd_id"].dtype == torch.int64
    z = torch.randn(2, 215, 200)
    assert prepare_batch({"activity": z})["activity"] is not None
    torch.testing.assert_close(prepare_batch({"activity": z})["activity"], z)
    with pytest.raises(ValueError, match="uint8 .raw. or float"):
        prepare_batch({"activity": torch.zeros(2, 215, 200, dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"expected \(B, 215, 200\)"):
        prepare_batch({"activity": torch.zeros(2, 200, 215, dtype=torch.uint8)})


def test_crop_of_a_pixel_aligned_box_is_exact():
    x = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[8.0, 4.0, 8.0, 8.0], [0.0, 0.0, 32.0, 32.0]])
    out = crop_and_resize(x, boxes, 8)
    torch.testing.assert_close(out[0], x[0, :, 4:12, 8:16])
    full = crop_and_resize(x, boxes[1:].repeat(2, 1), 32)
    torch.testing.assert_close(full, x)  # identity box, same size


def test_crop_boxes_respect_scale_ratio_and_bounds():
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(500, 40, 60, (0.3, 0.9), (0.5, 2.0), generator=g)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 60 + 1e-4).all() and (y0 + h <= 40 + 1e-4).all()
    frac, aspect = w * h / (40 * 60), w / h
    # after 10 draws that do not fit, the whole image (as torchvision does): rare here
    fallback = frac == 1.0
    assert fallback.float().mean() < 0.05
    frac, aspect = frac[~fallback], aspect[~fallback]
    assert frac.min() >= 0.3 - 1e-4 and frac.max() <= 0.9 + 1e-4
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2.0 + 1e-4
    # an impossible request falls back to the whole image, centred
    boxes = random_resized_crop_boxes(4, 10, 100, (1.0, 1.0), (1.0, 1.0), generator=g)
    torch.testing.assert_close(boxes, torch.tensor([[45.0, 0.0, 10.0, 10.0]] * 4))


def test_color_jitter_keeps_gray_gray_and_range():
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(4, 1, 16, 16).expand(4, 3, 16, 16).contiguous()
    out = color_jitter(gray, saturation=0.8, hue=0.4, generator=g)
    torch.testing.assert_close(out, gray, atol=1e-5, rtol=0)  # no colour to change
    x = torch.rand(4, 3, 16, 16)
    out = color_jitter(x, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2, generator=g)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    # brightness alone scales every pixel of a sample by one factor in [0.5, 1.5]
    dark = x * 0.5
    ratio = color_jitter(dark, brightness=0.5, generator=g) / dark
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-5)
    assert per_sample.min() >= 0.5 - 1e-5 and per_sample.max() <= 1.5 + 1e-5


def test_image_augment_in_prepare_batch_is_seeded():
    raw = _raw_batch(s=16)
    aug = ImageAugment(size=12, hue=0.05)
    a = prepare_batch(raw, augment=aug, generator=torch.Generator().manual_seed(1))["image"]
    b = prepare_batch(raw, augment=aug, generator=torch.Generator().manual_seed(1))["image"]
    c = prepare_batch(raw, augment=aug, generator=torch.Generator().manual_seed(2))["image"]
    assert a.shape == (3, 3, 12, 12) and torch.equal(a, b) and not torch.equal(a, c)
    plain = ImageAugment(crop_scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), x)  # no-op settings leave images unchanged
    assert not math.isnan(float(a.mean()))

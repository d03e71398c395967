"""Tests that pin what a plausible wrong change would break silently: patch orders,
ids from the cached loader, the PCA baseline's scores, gradient clipping, the GPU
dequantization formula. Every expected value is computed here, independently of the
code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boldgpt.data import schema
from boldgpt.patching import MaskedPatchify

# ---------------------------------------------------------------------- patch orders


def expected_order(mask: np.ndarray, p: int, kind: str) -> list[int]:
    """The fixed patch order, from its definition: pad the canvas to multiples of p
    (odd pixel at the bottom / right), keep the patches that touch the mask, sort them
    (stable, raster order on ties) by

    - ``radial``: the distance from the mask centroid to the patch centre;
    - ``reverse_radial``: minus that distance;
    - ``radial_original``: the mean distance over the patch's p x p pixels, with the
      padding pixels counting as 0 (the original boldGPT).

    Returns raster indices into the padded patch grid."""
    H, W = mask.shape
    pad_h, pad_w = (-H) % p, (-W) % p
    top, left = pad_h // 2, pad_w // 2
    padded = np.pad(mask, ((top, pad_h - top), (left, pad_w - left)))
    gh, gw = padded.shape[0] // p, padded.shape[1] // p
    blocks = padded.reshape(gh, p, gw, p).transpose(0, 2, 1, 3)
    touched = [(r, c) for r in range(gh) for c in range(gw) if blocks[r, c].any()]
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()  # in canvas pixels (row, column)

    def key(rc: tuple[int, int]) -> float:
        r, c = rc
        if kind == "radial_original":
            iy, ix = np.mgrid[r * p : (r + 1) * p, c * p : (c + 1) * p]  # padded coords
            on_canvas = (iy >= top) & (iy < top + H) & (ix >= left) & (ix < left + W)
            return float(np.where(on_canvas, np.hypot(iy - top - cy, ix - left - cx), 0).mean())
        d = math.hypot(r * p + (p - 1) / 2 - top - cy, c * p + (p - 1) / 2 - left - cx)
        return -d if kind == "reverse_radial" else d

    ranked = sorted(range(len(touched)), key=lambda i: key(touched[i]))
    return [touched[i][0] * gw + touched[i][1] for i in ranked]


def small_padded_mask() -> np.ndarray:
    """13 x 14 with 4 px patches: 1 row of padding on top, 2 below, 1 column each side;
    two blocks, so the centroid sits off the grid's centre."""
    mask = np.zeros((13, 14), bool)
    mask[1:12, 2:9] = True
    mask[6:13, 9:13] = True
    return mask


KINDS = ["radial", "reverse_radial", "radial_original"]


@pytest.mark.parametrize("kind", KINDS)
def test_radial_orders_on_a_small_mask_with_top_padding(kind):
    mask = small_padded_mask()
    patchify = MaskedPatchify(mask, 4, ordering=kind)
    assert patchify.padding[2] == 1  # top padding, so its sign matters
    assert patchify.patch_indices.tolist() == expected_order(mask, 4, kind)


def test_small_mask_orders_written_out():
    """The same orders spelled out (grid 4 x 4 patches, raster indices)."""
    mask = small_padded_mask()
    assert MaskedPatchify(mask, 4, ordering="radial").patch_indices.tolist() == [
        9, 10, 5, 6, 13, 14, 8, 11, 4, 7, 1, 2, 12, 15, 0,
    ]  # fmt: skip
    assert MaskedPatchify(mask, 4, ordering="radial_original").patch_indices.tolist() == [
        13, 14, 12, 15, 9, 10, 5, 6, 8, 11, 0, 4, 7, 1, 2,
    ]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_radial_orders_on_the_real_nsd_mask(nsd_mask, kind):
    patchify = MaskedPatchify(nsd_mask, 10, ordering=kind)
    assert patchify.padding == (0, 0, 2, 3)
    assert patchify.num_patches == 253
    assert patchify.patch_indices.tolist() == expected_order(nsd_mask, 10, kind)


def test_radial_original_differs_from_radial_where_documented(nsd_mask):
    radial = MaskedPatchify(nsd_mask, 10, ordering="radial").patch_indices
    original = MaskedPatchify(nsd_mask, 10, ordering="radial_original").patch_indices
    assert int((radial != original).sum()) == 46
    assert sorted(radial.tolist()) == sorted(original.tolist())


# ------------------------------------------------------------------ cached loader ids


def test_cached_loader_batches_carry_the_ids_of_their_source_rows(tmp_path):
    from boldgpt.data.cache import CachedNSDFlat, build_cache, make_dataloader
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "src", train_shards=2, subjects=(0, 1, 2), sessions=3)
    ds = CachedNSDFlat(
        build_cache(tiny.root, splits=["train"], cache_root=tmp_path / "c", progress=False), "train"
    )
    # every source map is random, so a map identifies its source row
    rows = {m.tobytes(): r for m, r in zip(tiny.maps["train"], tiny.rows["train"])}
    assert len(rows) == len(tiny.rows["train"])
    seen = 0
    for batch in make_dataloader(ds, batch_size=5, shuffle=True, seed=1):
        for j in range(len(batch["activity"])):
            row = rows[batch["activity"][j].numpy().tobytes()]
            for name in ("subject_id", "session_id", "trial_id", "nsd_id"):
                assert int(batch[name][j]) == row[name], name
            seen += 1
    assert seen == len(ds)
    # the ids differ between columns, so a column swap cannot pass by accident
    assert not np.array_equal(ds.subject_ids, ds.session_ids)


# -------------------------------------------------------------- PCA baseline scores


def test_pca_next_patch_scores_match_a_direct_computation():
    """Masked MSE / R^2 computed here in map space: each patch's prediction painted back
    into its place (patchify.inverse), errors summed over mask pixels only."""
    from boldgpt.evaluate.metrics import make_orders, pca_next_patch_scores
    from boldgpt.models.pca import MaskedPCA
    from boldgpt.patching import unpermute

    mask = small_padded_mask()
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(40, 3, 13, 14, generator=g).sum(1) * torch.from_numpy(mask)
    pca = MaskedPCA(mask, n_components=5).fit(maps[:30])
    patchify = MaskedPatchify(mask, 4, ordering="radial")
    test = maps[30:]
    orders = make_orders("random", len(test), patchify.num_patches, seed=3, batch_size=4)
    assert not torch.equal(orders[0][0], torch.arange(patchify.num_patches))
    scores = pca_next_patch_scores(pca, test, patchify, orders, batch_size=4)

    sse, values = 0.0, []
    m = torch.from_numpy(mask)
    for i, start in enumerate(range(0, len(test), 4)):
        x, order = test[start : start + 4], orders[i]
        pred = pca.next_patch_predictions(x, patchify, order=order)  # in sequence order
        painted = patchify.inverse(unpermute(pred, order))  # back in map space
        sse += float(((painted - x)[:, m].double() ** 2).sum())
        values.append(x[:, m].double())
    y = torch.cat(values)
    mse = sse / y.numel()
    r2 = 1 - sse / float(((y - y.mean()) ** 2).sum())
    assert scores["mse"] == pytest.approx(mse, rel=1e-5)
    assert scores["r2"] == pytest.approx(r2, rel=1e-5)


# ------------------------------------------------------------------ gradient clipping


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(tmp_path, monkeypatch):
    from boldgpt.engine.train import train
    from test_faults import Tiny, config, tiny_data

    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [
            p.grad for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    from boldgpt.engine.logs import read_log

    for clip in (0.05, None):
        seen.clear()
        out = tmp_path / str(clip)
        train(
            config(out, optim={"grad_clip": clip}, train={"max_steps": 4}),
            model=Tiny(),
            data=tiny_data(),
        )
        logged = [r["grad_norm"] for r in read_log(out) if r["split"] == "train"]
        assert len(seen) == len(logged) == 4
        for before, after in zip(logged, seen):
            if clip is None:
                assert after == pytest.approx(before, rel=1e-5)
            else:
                assert before > 2 * clip  # the clip was active
                assert after == pytest.approx(clip, rel=1e-4)


# ------------------------------------------------------------------- dequantization


def test_torch_dequantization_the_gpu_path_runs_on_cpu_and_matches_the_formula():
    from boldgpt.data.transforms import dequantize, dequantize_torch

    u = torch.arange(256, dtype=torch.uint8)
    exact = 5.0 * np.arange(256, dtype=np.float64) / 255.0 - 2.5
    got = dequantize_torch(u)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), exact, rtol=0, atol=1e-6)
    assert torch.equal(got, dequantize(u))  # the numpy (CPU) path, bit for bit
    assert torch.equal(got, torch.from_numpy(schema.dequantize(u.numpy())))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_dequantize_on_the_gpu_equals_the_cpu():
    from boldgpt.data.transforms import dequantize

    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(dequantize(u.cuda()).cpu(), dequantize(u))


def test_quantize_truncates_like_nsd_flat():
    # the NSD-Flat generator casts with astype(uint8): 0 -> 127, not 128; clipped at 2.5
    z = np.array([-3.0, -2.5, 0.0, 0.005, 0.01, 2.5, 9.0], np.float32)
    assert schema.quantize(z).tolist() == [0, 0, 127, 127, 128, 255, 255]

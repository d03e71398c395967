"""The CUDA paths: bf16 training steps (eager and torch.compile), KV-cache decoding and
batch preparation on the GPU. Skipped on machines without a CUDA device."""

import numpy as np
import pytest
import torch

from boldgpt.data import schema
from boldgpt.data.transforms import prepare_batch
from boldgpt.generate import sample
from boldgpt.models.layers import Block, KVCache
from boldgpt.models.registry import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model("boldgpt_micro_patch10", mask="sim", **kwargs)


def _batch(model, device, batch_size=4):
    g = torch.Generator().manual_seed(0)
    m = model.patchify.mask
    activity = (torch.randn(batch_size, *m.shape, generator=g) * m).clamp(-2.5, 2.5)
    return {"activity": activity.to(device), "subject_id": torch.arange(batch_size, device=device)}


def test_cuda_forward_matches_cpu():
    model = _model().eval()
    batch = _batch(model, "cpu")
    with torch.no_grad():
        cpu = model(batch, order="fixed").output
        gpu = model.to(CUDA)(_batch(model, CUDA), order="fixed").output
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_training_steps_lower_the_loss_on_cuda(compiled):
    model = _model().to(CUDA).train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _batch(model, CUDA, 8)
    losses = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = forward(batch, order="fixed")
        # autocast really ran the products in bf16; the loss is reduced in fp32
        assert out.output.dtype == torch.bfloat16
        loss = out.loss.float()
        loss.backward()
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # the same batch 8 times: it must be fitting it


def test_kv_cache_decoding_equals_uncached_on_cuda():
    model = _model().to(CUDA).eval()
    cached = sample(model, 3, subject_id=1, use_cache=True)
    uncached = sample(model, 3, subject_id=1, use_cache=False)
    assert cached.device.type == "cuda"
    assert torch.allclose(cached, uncached, atol=1e-4)


def test_block_cache_buffers_live_on_cuda_in_bf16():
    torch.manual_seed(0)
    block = Block(32, 4).to(CUDA).eval()
    x = torch.randn(2, 8, 32, device=CUDA)
    cache = KVCache(8)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = block(x, causal=True)
        parts = []
        for t in range(8):
            parts.append(block(x[:, t : t + 1], causal=True, cache=cache, layer=0))
            cache.advance(1)
    assert cache.keys[0].device.type == "cuda" and cache.keys[0].dtype == torch.bfloat16
    assert torch.allclose(torch.cat(parts, 1).float(), full.float(), atol=3e-2)


def test_prepare_batch_on_cuda_equals_cpu_dequantize():
    rng = np.random.default_rng(0)
    raw = {
        "activity": torch.from_numpy(rng.integers(0, 256, (4, *schema.MAP_SHAPE), dtype=np.uint8)),
        "subject_id": torch.arange(4),
    }
    out = prepare_batch(raw, CUDA)
    assert out["activity"].device.type == "cuda" and out["activity"].dtype == torch.float32
    assert out["subject_id"].device.type == "cuda"
    expected = torch.from_numpy(schema.dequantize(raw["activity"].numpy()))
    assert torch.equal(out["activity"].cpu(), expected)

import math

import pytest
import torch
from torch import nn

from boldgpt.models.config import PatchModelConfig
from boldgpt.models.layers import (
    Attention,
    Block,
    CrossAttention,
    DropPath,
    KVCache,
    LayerScale,
    param_groups,
)
from boldgpt.models.transformer import Transformer


def reference_attention(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Attention written out by hand: kv output = [keys | values], heads split."""
    B, T, D = x.shape
    H, d = attn.num_heads, attn.head_dim
    q = (x @ attn.q.weight.T).view(B, T, H, d).transpose(1, 2)
    kv = x @ attn.kv.weight.T
    k = kv[..., :D].reshape(B, T, H, d).transpose(1, 2)
    v = kv[..., D:].reshape(B, T, H, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    return y @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_written_out_reference(causal):
    torch.manual_seed(0)
    attn = Attention(24, 3).eval()
    nn.init.normal_(attn.proj.bias)
    x = torch.randn(2, 7, 24)
    expected = reference_attention(attn, x, causal)
    assert torch.allclose(attn(x, causal=causal), expected, atol=1e-5)


def test_causal_attention_ignores_later_tokens():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(1, 9, 16)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 4, 16)
    a, b = attn(x, causal=True), attn(y, causal=True)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_cache_in_chunks_equals_full_pass(qk_norm):
    torch.manual_seed(0)
    block = Block(32, 4, qk_norm=qk_norm, layer_scale=0.5).eval()
    x = torch.randn(3, 12, 32)
    full = block(x, causal=True)
    cache = KVCache(12)
    # a 4-token prompt, a 3-token chunk (needs the offset causal mask), then single tokens
    chunks = [(0, 4), (4, 7)] + [(t, t + 1) for t in range(7, 12)]
    parts = []
    for a, b in chunks:
        parts.append(block(x[:, a:b], causal=True, cache=cache, layer=0))
        cache.advance(b - a)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_cross_attention_cache_reuses_context():
    torch.manual_seed(0)
    block = Block(16, 2, cross_attn=True).eval()
    x, context = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    full = block(x, context, causal=True)
    cache = KVCache(6)
    first = block(x[:, :3], context, causal=True, cache=cache, layer=0)
    cache.advance(3)
    # later steps need no context: the cached keys/values are used
    rest = []
    for t in range(3, 6):
        rest.append(block(x[:, t : t + 1], None, causal=True, cache=cache, layer=0))
        cache.advance(1)
    assert torch.allclose(torch.cat([first, *rest], 1), full, atol=1e-5)
    other = block(x, torch.randn(2, 5, 16), causal=True)
    assert not torch.allclose(other, full, atol=1e-3)


def test_cross_attention_without_context_raises():
    attn = CrossAttention(8, 2)
    with pytest.raises(ValueError, match="context"):
        attn(torch.randn(1, 2, 8), None)


def test_cache_overflow_and_batch_mismatch_raise():
    attn = Attention(8, 2)
    cache = KVCache(3)
    attn(torch.randn(2, 3, 8), causal=True, cache=cache)
    cache.advance(3)
    with pytest.raises(ValueError, match="overflow"):
        attn(torch.randn(2, 1, 8), causal=True, cache=cache)
    cache = KVCache(4)
    attn(torch.randn(2, 1, 8), cache=cache)
    cache.advance(1)
    with pytest.raises(ValueError, match="batch"):
        attn(torch.randn(3, 1, 8), cache=cache)


def test_drop_path_drops_whole_samples():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.ones(400, 3, 4)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    per_sample = y.flatten(1)
    # every sample is either dropped entirely or kept and scaled by 1 / (1 - p)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert 0.4 < kept < 0.6


def test_layer_scale_scales_channels():
    ls = LayerScale(4, 0.1)
    assert torch.allclose(ls(torch.ones(2, 4)), torch.full((2, 4), 0.1))


def test_param_groups_decay_only_linear_weights():
    config = PatchModelConfig(embed_dim=16, depth=2, num_heads=2, num_registers=2, layer_scale=0.1)
    model = Transformer(5, 6, config, mask_token=True)
    model.blocks[1].mlp.fc2.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & plain
    assert "blocks.1.mlp.fc2.weight" not in decayed | plain  # frozen: left out
    for n in decayed:
        assert n.endswith(".weight") and "norm" not in n
    for n in (
        "pos_embed",
        "group_token",
        "sub_embed",
        "next_pos_query",
        "eos_query",
        "reg_embed",
        "mask_token",
        "blocks.0.norm1.weight",
        "blocks.0.attn.proj.bias",
        "blocks.0.ls1.gamma",
    ):
        assert n in plain, n
    assert "blocks.0.attn.q.weight" in decayed and "patch_embed.weight" in decayed


def test_param_groups_work_for_any_module_by_type():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4)
            self.embed = nn.Embedding(10, 8)
            self.norm = nn.BatchNorm2d(8)
            self.attn = nn.MultiheadAttention(8, 2)
            self.cls_token = nn.Parameter(torch.zeros(1, 8))
            self.fc = nn.Linear(8, 4)
            self.tied = self.fc  # a shared module: its parameters count once

    model = Encoder()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    plain = sorted(names[id(p)] for p in no_decay["params"])
    assert decayed == ["attn.in_proj_weight", "attn.out_proj.weight", "conv.weight", "fc.weight"]
    assert plain == [
        "attn.in_proj_bias",
        "attn.out_proj.bias",
        "cls_token",
        "conv.bias",
        "embed.weight",
        "fc.bias",
        "norm.bias",
        "norm.weight",
    ]


def test_fused_qkv_gradients_reach_the_stored_q_and_kv_weights():
    # One fused product runs, but the parameters (and checkpoint keys) stay q and kv:
    # their gradients must equal those of the written-out reference.
    torch.manual_seed(0)
    attn = Attention(24, 3, qkv_bias=True).train()
    nn.init.normal_(attn.q.bias)
    nn.init.normal_(attn.kv.bias)
    x = torch.randn(2, 7, 24)
    attn(x, causal=True).square().sum().backward()
    fused = [p.grad.clone() for p in (attn.q.weight, attn.kv.weight, attn.q.bias, attn.kv.bias)]
    attn.zero_grad()
    B, T, D = x.shape
    H, d = attn.num_heads, attn.head_dim
    q = (x @ attn.q.weight.T + attn.q.bias).view(B, T, H, d).transpose(1, 2)
    kv = x @ attn.kv.weight.T + attn.kv.bias
    k = kv[..., :D].reshape(B, T, H, d).transpose(1, 2)
    v = kv[..., D:].reshape(B, T, H, d).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(
        torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
    )
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D) @ attn.proj.weight.T
    (y + attn.proj.bias).square().sum().backward()
    expected = [attn.q.weight.grad, attn.kv.weight.grad, attn.q.bias.grad, attn.kv.bias.grad]
    for got, want in zip(fused, expected):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    keys = set(attn.state_dict())
    assert {"q.weight", "kv.weight", "q.bias", "kv.bias"} <= keys
    assert not any(k.startswith("qkv") for k in keys)


def test_inference_fused_weights_follow_weight_updates():
    # Without autograd the fused [q | kv] product must use the weights as they are now:
    # after an in-place update (also one that leaves the version counters alone, as
    # fused AdamW and writes through .data do), load_state_dict or a cast.
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        before = attn(x, causal=True)
        assert torch.allclose(before, reference_attention(attn, x, True), atol=1e-5)
        attn.q.weight.mul_(2.0)
        attn.kv.weight.add_(0.1)
        after = attn(x, causal=True)
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, reference_attention(attn, x, True), atol=1e-5)
    for p in attn.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in attn.parameters()]
    torch.optim.AdamW(attn.parameters(), lr=0.1, fused=True).step()
    assert [p._version for p in attn.parameters()] == versions  # why a cache went stale
    with torch.no_grad():
        stepped = attn(x, causal=True)
        assert torch.allclose(stepped, reference_attention(attn, x, True), atol=1e-5)
        attn.kv.weight.data.mul_(-1.0)
        flipped = attn(x, causal=True)
    assert not torch.allclose(flipped, stepped, atol=1e-3)
    assert torch.allclose(flipped, reference_attention(attn, x, True), atol=1e-5)
    other = Attention(16, 2)
    with torch.no_grad():
        attn.load_state_dict(other.state_dict())
        loaded = attn(x, causal=True)
    assert torch.allclose(loaded, reference_attention(other, x, True), atol=1e-5)
    with torch.no_grad():
        doubled = attn.double()(x.double(), causal=True)
    assert doubled.dtype == torch.float64
    assert torch.allclose(doubled.float(), loaded, atol=1e-5)


def test_kv_cache_is_written_in_place():
    # Decoding must not reallocate (or concatenate) the cache per step: the buffers
    # keep their storage, and the cached prefix is left untouched by later writes.
    torch.manual_seed(0)
    block = Block(16, 2).eval()
    x = torch.randn(2, 6, 16)
    cache = KVCache(6)
    with torch.no_grad():
        block(x[:, :2], causal=True, cache=cache, layer=0)
        cache.advance(2)
        storage = (cache.keys[0].data_ptr(), cache.values[0].data_ptr())
        prefix = cache.keys[0][:, :, :2].clone()
        for t in range(2, 6):
            block(x[:, t : t + 1], causal=True, cache=cache, layer=0)
            cache.advance(1)
            assert (cache.keys[0].data_ptr(), cache.values[0].data_ptr()) == storage
    assert cache.keys[0].shape[2] == 6 and cache.length == 6
    assert torch.equal(cache.keys[0][:, :, :2], prefix)

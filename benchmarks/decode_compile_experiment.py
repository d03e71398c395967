"""Experiment (not a benchmark case): is ``torch.compile`` of one decoding step worth it?

    python benchmarks/decode_compile_experiment.py [--model boldgpt_tiny_patch10] [--batch 1 4]

A decoding step of the backbone written as one pure, fixed-shape function: the new
token attends to a preallocated cache of all ``max_len`` positions (those not yet
written masked out) and to itself, and the step returns its keys and values, which the
caller writes into the cache (in place, outside the graph). So one compiled graph serves
every step of a batch size. A first version that wrote the cache inside the graph was
3.9x slower than eager at batch 4: functionalization copies the whole cache of every
layer each step.

Prints, per batch size, the compile time and the seconds for a full map (N steps) eager
and compiled (1 thread, best of 2, interleaved), after checking that the step equals the
backbone's own KV-cache decoding to 1e-4. The step handles plain pre-norm blocks only
(no LayerScale, DropPath, qk-norm, biases on q/kv, cross-attention), which is what the
registry's boldgpt models use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_mask  # noqa: E402

Step = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


def make_step(backbone: torch.nn.Module, max_len: int) -> Step:
    """The pure step ``(x (B, 1, D), keys, values (depth, B, H, max_len, d), pos 0-d long)
    -> (hidden (B, 1, D), new keys, new values (depth, B, H, 1, d))``; ``keys`` / ``values``
    hold the positions before ``pos``."""
    H, D = backbone.num_heads, backbone.embed_dim
    d = D // H
    for block in backbone.blocks:
        a = block.attn
        plain = block._plain_residual and block.cross is None and a.q.bias is None
        if not plain or not isinstance(a.q_norm, torch.nn.Identity):
            raise ValueError("the experiment's step handles plain pre-norm blocks only")

    def step(
        x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = x.shape[0]
        before = (torch.arange(max_len, device=x.device) < pos).view(1, 1, 1, max_len)
        new_k, new_v = [], []
        for i, block in enumerate(backbone.blocks):
            a = block.attn
            weight = torch.cat([a.q.weight, a.kv.weight])
            qkv = F.linear(block.norm1(x), weight).view(B, 1, 3, H, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q = q * d**-0.5
            cached = (q @ keys[i].transpose(-1, -2)).masked_fill(~before, float("-inf"))
            itself = (q * k).sum(-1, keepdim=True)
            p = torch.cat([cached, itself], -1).softmax(-1)
            y = p[..., :max_len] @ values[i] + p[..., max_len:] * v
            x = x + a.proj(y.transpose(1, 2).reshape(B, 1, D))
            x = x + block.mlp(block.norm3(x))
            new_k.append(k)
            new_v.append(v)
        return backbone.norm(x), torch.stack(new_k), torch.stack(new_v)

    return step


def decode(step: Step, tokens: torch.Tensor, depth: int, heads: int, max_len: int) -> torch.Tensor:
    """Run ``step`` over tokens (B, T, D) one at a time; hidden states (B, T, D)."""
    B, T, D = tokens.shape
    keys = torch.zeros(depth, B, heads, max_len, D // heads)
    values = torch.zeros_like(keys)
    outs = []
    for t in range(T):
        h, k, v = step(tokens[:, t : t + 1], keys, values, torch.tensor(t))
        keys[:, :, :, t : t + 1] = k
        values[:, :, :, t : t + 1] = v
        outs.append(h)
    return torch.cat(outs, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="boldgpt_tiny_patch10")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    from boldgpt.models.registry import create_model

    torch.set_num_threads(1)
    mask, source = load_mask()
    torch.manual_seed(0)
    model = create_model(args.model, mask=mask).eval()
    b = model.backbone
    depth, heads = len(b.blocks), b.num_heads
    max_len = b.num_prefix + model.num_patches
    step = make_step(b, max_len)
    compiled = torch.compile(step, dynamic=False)
    print(f"{args.model}, mask {source}, {max_len} steps, load {os.getloadavg()}")
    with torch.no_grad():
        tokens = torch.randn(2, 8, b.embed_dim)
        cache = b.init_cache(max_len)
        reference = torch.cat([b(tokens[:, t : t + 1], cache=cache) for t in range(8)], 1)
        error = (decode(step, tokens, depth, heads, max_len) - reference).abs().max().item()
        if error > 1e-4:
            raise AssertionError(f"the pure step differs from KV-cache decoding by {error}")
        for B in args.batch:
            tokens = torch.randn(B, max_len, b.embed_dim)
            t0 = time.perf_counter()
            decode(compiled, tokens[:, :2], depth, heads, max_len)
            compile_s = time.perf_counter() - t0
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(2):
                for name, fn in (("eager", step), ("compiled", compiled)):
                    t0 = time.perf_counter()
                    decode(fn, tokens, depth, heads, max_len)
                    times[name].append(time.perf_counter() - t0)
            e, c = min(times["eager"]), min(times["compiled"])
            print(
                f"B={B}: compile {compile_s:.1f} s; full map eager {e:.2f} s, compiled "
                f"{c:.2f} s ({e / c:.2f}x)",
                flush=True,
            )
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Model speed against the machine's limits.

Cases (``--only`` matches their names, e.g. ``--only train``, ``--only sample``):

- ``train``: samples/s of a full AdamW step (forward, backward, update) at batch 16
  over the real NSD-Flat mask (253 patches), fp32 and bf16 autocast, for
  ``boldgpt_tiny_patch10``, ``boldgpt_small_patch10`` (continuous and tokens),
  ``boldbeit_small_patch10``, ``cbip_small_patch10`` and ``image2bold_small_patch10``
  (64 px pictures; their frozen image encoder's outputs are cached per stimulus, as in
  training, so it does not run in the timed steps); model FLOP/s as a fraction of the
  measured matmul peak of the dtype the products run in (model FLOPs per sample: 6 x
  non-embedding parameters x tokens + 12 x layers x tokens^2 x width, tokens = patches
  + 1, each parameter counted by the tokens it multiplies: see :mod:`flops`). Beside
  each fp32 step, its products alone (:func:`products_step`): the step's matrix
  products, forward and backward, as plain ``mm`` / ``bmm`` calls with nothing else,
  i.e. the fraction of the peak an eager step could reach if norms, activations,
  softmax, copies and the optimizer were free.
- ``compile``: the same step of ``boldgpt_tiny_patch10`` under ``torch.compile``: compile
  time (first steps) and samples/s against eager in the same run.
- ``sample``: ``boldgpt_tiny_patch10`` drawing full maps with the KV cache at batch 1, 4
  and 64 (seconds per batch, maps/s, tokens/s), and batch 4 without the cache; decoding
  runs on one CPU thread, as ``boldgpt generate`` does by default (its small products
  lose much from more threads when the cores are shared), and batch 4 and 64 again on all
  threads (``--threads``: what they buy on an idle machine).
- ``create``: seconds to build ``boldgpt_small_patch10``.

``--quick`` uses ``boldgpt_micro_patch10`` (and ``image2bold_micro_patch10`` for training)
and fewer repeats (a smoke run).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from boldgpt.generate import sample
from boldgpt.models.registry import create_model
from boldgpt.utils.threads import cpu_threads
from common import NO_BF16, Context, Row, load_mask, skipped_row, synced, timeit
from flops import Census, census, non_embedding_params, sequence_tokens

BATCH = 16
TARGETS = {  # (model, variant, dtype) -> minimum fraction of that dtype's matmul peak
    ("boldgpt_small_patch10", "continuous", "float32"): 0.90,
    ("boldgpt_small_patch10", "continuous", "bfloat16"): 0.75,
    ("boldgpt_tiny_patch10", "continuous", "float32"): 0.80,
}


def _autocast(device: torch.device, dtype: str) -> Any:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _batch(model: Any, device: torch.device, batch: int) -> dict[str, torch.Tensor]:
    """Maps inside the model's mask and subject ids; models that also read pictures get
    normalised pictures (B, 3, S, S) and one stimulus id per sample (``nsd_id``)."""
    m = model.patchify.mask.to(device)
    torch.manual_seed(0)
    activity = (torch.randn(batch, *m.shape, device=device) * m).clamp(-2.5, 2.5)
    out = {"activity": activity, "subject_id": torch.arange(batch, device=device) % 8}
    if "image" in model.config.batch_keys:
        S = model.config.image_size
        out["image"] = torch.randn(batch, 3, S, S, device=device)
        out["nsd_id"] = torch.arange(batch, device=device)
    return out


def _build(name: str, variant: str, mask: Any, device: torch.device) -> Any:
    torch.manual_seed(0)
    kwargs = {"categorical": True} if variant == "tokens" else {}
    model = create_model(name, mask=mask, **kwargs).to(device).train()
    if variant == "tokens":
        # any non-zero vocabulary will do for speed; fitting k-means is not measured
        with torch.no_grad():
            model.tokenizer.vocab.copy_(torch.randn_like(model.tokenizer.vocab))
    return model


def _train_step(model: Any, batch: dict, device: torch.device, dtype: str) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = model(batch).loss
        loss.float().backward()
        optimizer.step()

    return synced(step, device)


def _train_row(
    ctx: Context,
    model: Any,
    products: Census,
    name: str,
    variant: str,
    dtype: str,
    seconds: float,
    *,
    products_alone: bool = False,
    **extra: Any,
) -> Row:
    """The row of a training step that took ``seconds`` (``products``: its census, for
    the model FLOPs), or with ``products_alone`` of its products alone
    (:func:`products_step`; no target: a bound, not a goal)."""
    per_sample = products.flops_per_sample()
    flops = per_sample * BATCH / seconds / 1e9
    peak = ctx.peak_gflops.get(dtype)
    ratio = flops / peak if peak else None
    case = f"train {name} {variant} B={BATCH} {dtype}"
    if products_alone:
        case += ": products alone"
        baseline, target = "fp32 matmul peak (the step's products, nothing else)", None
    else:
        baseline, target = f"{dtype} matmul peak (MFU)", TARGETS.get((name, variant, dtype))
    return Row(
        bench="models",
        case=case,
        value=BATCH / seconds,
        unit="samples/s",
        baseline=baseline,
        ratio=ratio,
        target=f">= {target:.2f}" if target else "",
        met=None if target is None or ratio is None else ratio >= target,
        extra={
            "step_seconds": round(seconds, 4),
            "model_gflops_per_s": round(flops, 1),
            "peak_gflops": round(peak, 1) if peak else None,
            "peak_dtype": dtype,  # run.py rescales to the run's best peak of this dtype
            "target_ratio": target,
            "tokens": sequence_tokens(model),
            "non_embedding_params_m": round(non_embedding_params(model) / 1e6, 3),
            "gflops_per_sample": round(per_sample / 1e9, 3),
            "device": str(ctx.device),
            **extra,
        },
    )


def products_step(products: Census, device: torch.device) -> Callable[[], None]:
    """The matrix products of one training step, and nothing else, from the census of
    its forward: per linear map call (out, in) over its rows, the forward (rows, in) x
    (in, out), the input gradient (rows, out) x (out, in) and the weight gradient
    (out, rows) x (rows, in); per attention call, the forward Q K^T and P V and the
    backward's four products of the same sizes, as batched products over batch x heads.
    Their FLOPs (:meth:`Census.product_flops`) are the model FLOPs
    (:meth:`Census.flops_per_sample` x batch) up to biases and norms, so its time against
    the peak bounds what an eager step can reach. Every call gets its own weight (cold,
    as in a real step)."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=g)

    linears = [(o, i, rows) for o, i, rows, _ in products.linears]
    weights = [randn(o, i) for o, i, _ in linears]
    x = {(rows, i): randn(rows, i) for _, i, rows in linears}
    dy = {(rows, o): randn(rows, o) for o, _, rows in linears}
    # per shape: q and the output gradient (BH, tq, d), k and v (BH, tk, d), P (BH, tq, tk)
    attention = {
        (bh, tq, tk, d): (randn(bh, tq, d), randn(bh, tk, d), randn(bh, tk, d), randn(bh, tq, d))
        for bh, tq, tk, d in products.attention
    }
    probs = {(bh, tq, tk): randn(bh, tq, tk) for bh, tq, tk, _ in products.attention}

    def step() -> None:
        for (o, i, rows), w in zip(linears, weights):
            torch.mm(x[rows, i], w.t())  # forward
            torch.mm(dy[rows, o], w)  # input gradient
            torch.mm(dy[rows, o].t(), x[rows, i])  # weight gradient
        for bh, tq, tk, d in products.attention:
            q, k, v, do = attention[bh, tq, tk, d]
            p = probs[bh, tq, tk]
            torch.bmm(q, k.transpose(1, 2))  # scores
            torch.bmm(p, v)  # output
            torch.bmm(do, v.transpose(1, 2))  # score gradient
            torch.bmm(p.transpose(1, 2), do)  # value gradient
            torch.bmm(p, k)  # query gradient
            torch.bmm(p.transpose(1, 2), q)  # key gradient

    return synced(step, device)


def _skipped_train_row(name: str, variant: str, dtype: str) -> Row:
    target = TARGETS.get((name, variant, dtype))
    case = f"train {name} {variant} B={BATCH} {dtype}"
    return skipped_row("models", case, NO_BF16, f">= {target:.2f}" if target else "")


def train(ctx: Context) -> list[Row]:
    mask, source = load_mask()
    if ctx.quick:
        models = [
            ("boldgpt_micro_patch10", "continuous"),
            ("image2bold_micro_patch10", "continuous"),
        ]
    else:
        models = [
            ("boldgpt_tiny_patch10", "continuous"),
            ("boldgpt_small_patch10", "continuous"),
            ("boldgpt_small_patch10", "tokens"),
            ("boldbeit_small_patch10", "continuous"),
            ("cbip_small_patch10", "continuous"),
            ("image2bold_small_patch10", "continuous"),
        ]
    rows = []
    for name, variant in models:
        model = _build(name, variant, mask, ctx.device)
        batch = _batch(model, ctx.device, BATCH)
        products = census(model, batch)  # (also fills a frozen image encoder's cache)
        extra: dict[str, Any] = {"mask": source}
        if "image" in batch:
            extra["image_encoder"] = "frozen; outputs cached per stimulus (not run in the steps)"
        for dtype in ("float32", "bfloat16"):
            if dtype == "bfloat16" and not ctx.fast_bf16:
                rows.append(_skipped_train_row(name, variant, dtype))
                continue
            step = _train_step(model, batch, ctx.device, dtype)
            repeat = 2 if ctx.quick else 5
            # row(seconds, **extra): this case's row of a step that took ``seconds``
            row = functools.partial(_train_row, ctx, model, products, name, variant, dtype)
            if dtype != "float32":
                rows.append(row(timeit(step, repeat=repeat, warmup=1), **extra))
                continue
            # the step and its products alone, alternated: the host's speed drifts over
            # minutes, and their ratio is what says how much of a step is not products
            alone_step = products_step(products, ctx.device)
            step()  # warm-up of both
            alone_step()
            pairs = [(timeit(step, 1, 0), timeit(alone_step, 1, 0)) for _ in range(repeat)]
            seconds = statistics.median(s for s, _ in pairs)
            rows.append(row(seconds, **extra))
            rows.append(
                row(
                    statistics.median(p for _, p in pairs),
                    products_alone=True,
                    step_seconds_whole=round(seconds, 4),
                    step_time_in_products=round(statistics.median(p / s for s, p in pairs), 3),
                    product_gflops_per_sample=round(products.product_flops() / BATCH / 1e9, 3),
                    **extra,
                )
            )
    return rows


def compile_train(ctx: Context) -> list[Row]:
    """torch.compile of the training step: compile time and speed-up over eager."""
    mask, source = load_mask()
    name = "boldgpt_micro_patch10" if ctx.quick else "boldgpt_tiny_patch10"
    rows = []
    for dtype in ("float32", "bfloat16"):
        if dtype == "bfloat16" and not ctx.fast_bf16:
            row = _skipped_train_row(name, "continuous", dtype)
            row.case += " torch.compile"
            rows.append(row)
            continue
        model = _build(name, "continuous", mask, ctx.device)
        batch = _batch(model, ctx.device, BATCH)
        products = census(model, batch)
        eager = timeit(_train_step(model, batch, ctx.device, dtype), repeat=3, warmup=1)
        compiled = torch.compile(model)
        step = _train_step(compiled, batch, ctx.device, dtype)
        t0 = time.perf_counter()
        step()  # compiles the forward and the backward
        step()  # a recompilation would show here
        compile_seconds = time.perf_counter() - t0
        seconds = timeit(step, repeat=3, warmup=0)
        row = _train_row(
            ctx,
            model,
            products,
            name,
            "continuous",
            dtype,
            seconds,
            mask=source,
            compile_seconds=round(compile_seconds, 1),
            eager_step_seconds=round(eager, 4),
            speedup_over_eager=round(eager / seconds, 3),
        )
        row.case = f"train {name} continuous B={BATCH} {dtype} torch.compile"
        rows.append(row)
        torch._dynamo.reset()
    return rows


def sampling(ctx: Context) -> list[Row]:
    mask, source = load_mask()
    name = "boldgpt_micro_patch10" if ctx.quick else "boldgpt_tiny_patch10"
    torch.manual_seed(0)
    model = create_model(name, mask=mask).to(ctx.device).eval()
    N = model.num_patches
    threads = 1 if ctx.device.type == "cpu" else None
    rows, per_map, floors = [], {}, {}
    with cpu_threads(threads):
        for B in (1, 4, 64):
            repeat = 1 if (ctx.quick or B == 64) else 3
            seconds = timeit(
                synced(lambda B=B: sample(model, B, use_cache=True), ctx.device), repeat=repeat
            )
            per_map[B] = seconds / B
            floors[B] = decoding_floor(model, B, ctx, threads or torch.get_num_threads())
            rows.append(
                Row(
                    "models",
                    f"sample {name} B={B} with KV cache",
                    seconds,
                    "s",
                    baseline="maps/s vs B=1" if B > 1 else "",
                    ratio=per_map[1] / per_map[B] if B > 1 else None,
                    target={4: "<= 0.5 s", 64: ">= 20x"}.get(B, ""),
                    met={4: seconds <= 0.5, 64: per_map[1] / per_map[B] >= 20}.get(B),
                    extra={
                        "maps_per_s": round(B / seconds, 2),
                        "tokens_per_s": round(B * N / seconds, 1),
                        "num_patches": N,
                        "threads": threads,
                        "device": str(ctx.device),
                        "mask": source,
                    },
                )
            )
        uncached = timeit(
            synced(lambda: sample(model, 4, use_cache=False), ctx.device), repeat=1, warmup=0
        )
    if threads is not None and ctx.threads > 1:
        # what `boldgpt generate --threads` buys when nothing else uses the cores
        for B in (4, 64):
            seconds = timeit(
                synced(lambda B=B: sample(model, B, use_cache=True), ctx.device),
                repeat=1 if (ctx.quick or B == 64) else 3,
                warmup=0 if B == 64 else 1,
            )
            rows.append(
                Row(
                    "models",
                    f"sample {name} B={B} with KV cache, {ctx.threads} threads",
                    seconds,
                    "s",
                    baseline="speed-up over 1 thread",
                    ratio=per_map[B] * B / seconds,
                    extra={"maps_per_s": round(B / seconds, 2), "threads": ctx.threads},
                )
            )
    for B, floor in floors.items():
        if floor is None:
            continue
        seconds = per_map[B] * B
        rows.append(
            Row(
                "models",
                f"sample {name} B={B}: floor (memory traffic / matmul peak)",
                floor["seconds"],
                "s",
                baseline="floor / measured time",
                ratio=floor["seconds"] / seconds,
                extra={k: v for k, v in floor.items() if k != "seconds"},
            )
        )
    cached4 = per_map[4] * 4
    rows.append(
        Row(
            "models",
            f"sample {name} B=4 without cache",
            uncached,
            "s",
            baseline="KV cache speed-up",
            ratio=uncached / cached4,
            extra={"threads": threads, "device": str(ctx.device), "mask": source},
        )
    )
    return rows


def decoding_floor(model: Any, batch: int, ctx: Context, threads: int) -> dict | None:
    """The least time a full KV-cache sample of ``batch`` maps can take on this machine:
    each step reads every weight and the keys / values of every cached position (fp32),
    and multiplies the new tokens by the weights; per step the larger of bytes / the
    memory bandwidth measured on ``threads`` threads and FLOPs / the fp32 matmul peak
    scaled to ``threads``. None without the CPU measurements (on a GPU)."""
    gbps = ctx.read_gbps.get(threads)
    peak = ctx.peak_gflops.get("float32")
    if not gbps or not peak:
        return None
    b = model.backbone
    P, N, depth, D = b.num_prefix, model.num_patches, len(b.blocks), b.embed_dim
    weights = non_embedding_params(model)
    peak_here = peak * threads / max(ctx.threads, threads)
    memory_s = compute_s = 0.0
    for cached in range(P, P + N):  # the prompt (the prefix), then one token per step
        kv_bytes = 2 * depth * batch * cached * D * 4
        memory_s += (4 * weights + kv_bytes) / (gbps * 1e9)
        flops = 2 * weights * batch + 4 * depth * batch * cached * D
        compute_s += flops / (peak_here * 1e9)
    return {
        "seconds": max(memory_s, compute_s),
        "memory_seconds": round(memory_s, 4),
        "compute_seconds": round(compute_s, 4),
        "read_gb_per_s": round(gbps, 2),
        "threads": threads,
    }


def creation(ctx: Context) -> list[Row]:
    mask, source = load_mask()
    name = "boldgpt_micro_patch10" if ctx.quick else "boldgpt_small_patch10"
    seconds = timeit(lambda: create_model(name, mask=mask), repeat=3, warmup=1)
    return [Row("models", f"create {name}", seconds, "s", extra={"mask": source})]


CASES: list[tuple[str, Callable[[Context], list[Row]]]] = [
    ("create", creation),
    ("sample", sampling),
    ("train", train),
    ("compile", compile_train),
]

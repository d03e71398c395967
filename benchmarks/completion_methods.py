"""Experiment (not a benchmark case): one-pass against autoregressive completion.

    python benchmarks/completion_methods.py MODEL_DIR [MODEL_DIR ...] [--out results.json]

For each model, on the demo's maps and prompts (``boldgpt.evaluate.demo``: the first
128 of its 512 validation maps, the left-hemisphere and central-30% prompts, its seed):
hidden-pixel R² of one-pass completion (prompt in the fixed order; averaged over 8 and
16 random prompt orders) and of autoregressive completion (fixed order; prompt in a
random order), with the seconds each took; and next-patch MSE in the fixed and in random
orders on all 512 maps. The demo's own numbers are the "query x8" and "autoregressive"
columns. For a model with a completion head (``completion_head``), whose one pass
averages the head's map with the per-slot queries, also the two parts alone, 8 prompt
orders each. Made the README's "one pass against autoregressive completion" tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from boldgpt.data.maps import load_split_maps
from boldgpt.data.sources import DEFAULT_SOURCE
from boldgpt.evaluate import metrics, tasks
from boldgpt.evaluate.demo import EVAL_SEED, PROMPT_FRACTION, PROMPTS
from boldgpt.models.registry import load_model

METHODS = {
    "query, fixed prompt": dict(method="query"),
    "query x8": dict(method="query", prompt_order="random", num_orders=8),
    "query x16": dict(method="query", prompt_order="random", num_orders=16),
    "autoregressive": dict(method="autoregressive"),
    "autoregressive, random prompt": dict(method="autoregressive", prompt_order="random"),
}


def score(model_dir: str, source: str) -> dict:
    model = load_model(model_dir).eval()
    maps, sids, _ = load_split_maps(source, "val", 512, seed=EVAL_SEED)
    m, s = maps[:128], sids[:128]  # the demo completes the first 128
    p = model.patchify
    mask = p.mask.cpu()
    out: dict = {"model": model_dir, "completion_r2": {}, "seconds": {}, "next_patch": {}}
    for how in PROMPTS:
        observed = tasks.observed_patches(p, len(m), how, PROMPT_FRACTION, EVAL_SEED)
        observed_px = tasks.observed_pixels(p, observed)
        for name, kwargs in METHODS.items():
            kwargs = dict(kwargs)
            method = kwargs.pop("method")
            gen = torch.Generator().manual_seed(EVAL_SEED)
            start = time.perf_counter()
            done = tasks.model_completions(model, m, s, observed, method, generator=gen, **kwargs)
            r2 = tasks.hidden_r2(done, m, observed_px, mask)
            out["completion_r2"].setdefault(how, {})[name] = round(r2, 4)
            out["seconds"].setdefault(how, {})[name] = round(time.perf_counter() - start, 1)
            if name == "query x8" and getattr(model, "completion", None) is not None:
                parts = _head_parts(model, m, s, observed, done, **kwargs)
                for part, pred in parts.items():
                    r2 = tasks.hidden_r2(pred, m, observed_px, mask)
                    out["completion_r2"][how][part] = round(r2, 4)
    for kind in ("fixed", "random"):
        orders = metrics.make_orders(kind, len(maps), p.num_patches, seed=EVAL_SEED)
        scores = metrics.model_next_patch_scores(model, maps, sids, orders)
        out["next_patch"][kind] = round(metrics.summarize(scores)["mse"], 4)
    return out


def _head_parts(model, maps, sids, observed, both, **kwargs) -> dict:
    """The per-slot queries alone (the head switched off) and the completion head alone
    (the one pass is their mean, so the head's part is 2 x both - queries)."""
    head, model.completion = model.completion, None
    try:
        gen = torch.Generator().manual_seed(EVAL_SEED)
        queries = tasks.model_completions(
            model, maps, sids, observed, "query", generator=gen, **kwargs
        )
    finally:
        model.completion = head
    return {"query x8, queries alone": queries, "query x8, head alone": 2 * both - queries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model directories")
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="data source (default: the demo's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for model_dir in args.models:
        r = score(model_dir, args.source)
        results.append(r)
        print(f"{model_dir}: next-patch fixed / random {r['next_patch']}")
        for how, row in r["completion_r2"].items():
            secs = r["seconds"][how]
            cells = ", ".join(
                f"{k} {v:+.4f}" + (f" ({secs[k]} s)" if k in secs else "") for k, v in row.items()
            )
            print(f"  {PROMPTS[how]}: {cells}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""``boldgpt demo OUT_DIR``: the README demo, end to end and offline.

1. data: simulate the embedded NSD-Flat-format dataset (``sim:demo``) and cache it;
2. train a micro shuffled-order boldGPT (continuous patches) for a few minutes;
3. baselines: the training mean map and a MaskedPCA fitted on training maps;
4. evaluate on validation maps: next-patch loss (in-mask MSE) of the model in the
   fixed order and in random orders, beside the mean-map and the MaskedPCA
   next-patch baselines (same maps, same orders);
5. generate samples (fixed and random order) and completions of held-out maps;
6. write ``OUT_DIR/report.md`` and ``report.html`` (figures embedded) and
   ``summary.json``.

Running it again reuses the cached data and the trained model (training resumes if
it was interrupted).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from pathlib import Path
from typing import Any

DEMO_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "sim:demo", "batch_size": 16},
    "model": {"name": "boldgpt_micro_patch10", "kwargs": {}},
    "optim": {"lr": 8.0e-3, "min_lr": 1.0e-4, "weight_decay": 0.05, "warmup_steps": 100},
    "train": {"max_steps": 1200, "eval_every": 200, "eval_batches": 16, "precision": "fp32"},
    "log": {"every": 10, "figures_every": 600, "tensorboard": True},
    "checkpoint": {"every": 200, "keep": 2},
}
"""The demo's training config (also in configs/boldgpt_cont_demo.yaml; a test keeps
the two equal)."""

EVAL_SEED = 1234
DEFAULT_TRAIN_MINUTES = 6.0
MIN_STEPS, MAX_STEPS = 60, 3000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the README demo: simulate data, train a small boldGPT, evaluate, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path("runs/demo"),
        metavar="OUT_DIR",
        help="where the report, figures, model and logs go (default runs/demo)",
    )
    p.add_argument("--source", default="sim:demo", help="data source (default sim:demo)")
    p.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_TRAIN_MINUTES,
        help=(
            "training time budget: the number of steps is set from the measured speed of "
            f"a few steps on this machine (default {DEFAULT_TRAIN_MINUTES:g})"
        ),
    )
    p.add_argument(
        "--steps", type=int, default=None, help="train exactly this many steps (no budget)"
    )
    p.add_argument("--eval-maps", type=int, default=512, help="validation maps to score")
    p.add_argument("--pca-maps", type=int, default=4000, help="training maps to fit PCA on")
    p.add_argument("--components", type=int, default=128, help="PCA components")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    run_demo(
        args.out_dir,
        source=args.source,
        steps=args.steps,
        minutes=args.minutes,
        eval_maps=args.eval_maps,
        pca_maps=args.pca_maps,
        components=args.components,
        device=args.device,
    )
    return 0


def demo_config(
    out_dir: Path,
    source: str = "sim:demo",
    steps: int | None = None,
    device: str = "auto",
    threads: int | None = None,
):
    """The demo's :class:`TrainConfig` (training output in ``out_dir``); with ``steps``,
    warmup, evaluation, checkpoints and logging are spread over that length."""
    from boldgpt.engine.config import config_from_dict

    raw = copy.deepcopy(DEMO_CONFIG)
    raw["out_dir"] = str(out_dir)
    raw["data"]["source"] = source
    raw["train"]["device"] = device
    if threads is not None:
        raw["train"]["threads"] = threads
    if steps is not None:
        raw["train"]["max_steps"] = steps
        raw["optim"]["warmup_steps"] = min(raw["optim"]["warmup_steps"], max(steps // 10, 1))
        raw["train"]["eval_every"] = max(steps // 6, 1)
        raw["checkpoint"]["every"] = max(steps // 6, 1)
        raw["log"]["figures_every"] = steps  # one figure, at the end (sampling is slow)
        raw["log"]["every"] = min(raw["log"]["every"], max(steps // 20, 1))
    return config_from_dict(raw, where="demo config")


def calibrate_steps(config: Any, cache_dir: Path, minutes: float) -> tuple[int, float, int]:
    """Training steps that fit in ``minutes`` here: time a few steps of the demo model on
    real batches, with torch's default thread count and with one thread (much faster
    when other processes contend for the cores). Returns (steps, seconds per step,
    threads)."""
    import numpy as np
    import torch

    from boldgpt.data.cache import CachedNSDFlat
    from boldgpt.data.transforms import prepare_batch
    from boldgpt.engine.distributed import resolve_device
    from boldgpt.engine.train import build_model, make_optimizer
    from boldgpt.utils.threads import cpu_threads

    dev = resolve_device(config.train.device)
    data = CachedNSDFlat(cache_dir, config.data.train_split, images=False)
    torch.manual_seed(0)
    model = build_model(config, data.mask).to(dev).train()
    optimizer = make_optimizer(model, config, dev)
    b = config.data.batch_size
    batch = prepare_batch(data.__getitems__(np.arange(b) % len(data)), dev)

    def seconds_per_step(n: int = 3) -> float:
        times = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            model(batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))  # the first step pays one-time costs

    candidates = [torch.get_num_threads()]
    if dev.type == "cpu" and candidates[0] > 1:
        candidates.append(1)
    timings = {}
    for threads in candidates:
        with cpu_threads(threads):
            timings[threads] = seconds_per_step()
    threads = min(timings, key=timings.get)
    per_step = timings[threads]
    # about a tenth of the budget goes to evaluation passes and checkpoints
    steps = int(0.9 * minutes * 60 / per_step)
    return int(np.clip(steps, MIN_STEPS, MAX_STEPS)), per_step, threads


class _Steps:
    """Numbered, timed progress lines."""

    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.i += 1
        elapsed = time.perf_counter() - self.t0
        print(f"\n[{self.i}/{self.total}] {text}  (t={elapsed:.0f}s)", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    source: str = "sim:demo",
    steps: int | None = None,
    minutes: float = DEFAULT_TRAIN_MINUTES,
    eval_maps: int = 512,
    pca_maps: int = 4000,
    components: int = 128,
    device: str = "auto",
    num_examples: int = 6,
) -> dict[str, Any]:
    """Run the whole demo (see the module docstring); returns the summary it writes to
    ``OUT_DIR/summary.json``."""
    import numpy as np
    import torch

    from boldgpt.cli.generate import load_split_maps
    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from boldgpt.data.transforms import dequantize
    from boldgpt.engine.checkpoint import CheckpointManager, load_checkpoint
    from boldgpt.engine.distributed import resolve_device
    from boldgpt.engine.logs import read_log
    from boldgpt.engine.train import train
    from boldgpt.evaluate import metrics
    from boldgpt.models.pca import MaskedPCA, save_pca
    from boldgpt.models.registry import load_model
    from boldgpt.utils.io import write_json
    from boldgpt.utils.threads import cpu_threads
    from boldgpt.viz import train as viz

    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    step = _Steps(6)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. data ------------------------------------------------------------------------
    step(f"data: simulating (first run only) and caching {source}")
    t0 = time.perf_counter()
    cache_dir = build_cache(source, splits=["train", "val"])
    timings["data_s"] = time.perf_counter() - t0
    step.note(f"cache: {cache_dir}")

    # 2. training --------------------------------------------------------------------
    train_dir = out_dir / "train"
    model_dir = train_dir / "model"
    t0 = time.perf_counter()
    previous = _previous_steps(train_dir)
    threads = None
    if steps is not None:
        note = f"{steps} steps"
    elif previous is not None:  # continue (or reuse) the earlier run in this folder
        steps, note = previous, f"{previous} steps, as the earlier run in {train_dir}"
    else:
        steps, per_step, threads = calibrate_steps(
            demo_config(train_dir, source, device=device), cache_dir, minutes
        )
        note = (
            f"{per_step:.2f} s/step measured here ({threads} thread{'s' * (threads > 1)}) -> "
            f"{steps} steps in about {minutes:g} min"
        )
    config = demo_config(train_dir, source, steps, device, threads)
    step(f"training {config.model.name} (shuffled order, continuous patches): {note}")
    latest = CheckpointManager(train_dir / "checkpoints").latest()
    if model_dir.exists() and latest and load_checkpoint(latest)["step"] >= steps:
        step.note(f"already trained: reusing {model_dir} (delete {train_dir} to retrain)")
    else:
        result = train(config)
        if result.status == "interrupted":
            raise KeyboardInterrupt
    step.note(f"model: {model_dir}; logs: {train_dir / 'log.jsonl'}, {train_dir / 'tb'}")
    timings["train_s"] = time.perf_counter() - t0
    dev = resolve_device(device)
    model = load_model(model_dir, device=dev)
    records = read_log(config.out_dir)
    train_records = [r for r in records if r.get("split") == "train"]
    trained_steps = max((r["step"] for r in train_records), default=0)

    # 3. baselines -------------------------------------------------------------------
    step(f"baselines: training mean map and MaskedPCA ({components} components)")
    t0 = time.perf_counter()
    train_set = CachedNSDFlat(cache_dir, "train", images=False)
    mask, n_train = train_set.mask, len(train_set)
    # chunks of the uint8 memory map: the float maps of the whole split need not fit
    mean_map = metrics.mean_map(
        dequantize(torch.from_numpy(np.array(train_set.activity[i : i + 1024])))
        for i in range(0, n_train, 1024)
    )
    fit_maps, _, _ = load_split_maps(source, "train", pca_maps, seed=0)
    n_fit = len(fit_maps)
    pca = MaskedPCA(mask, min(components, n_fit - 1)).fit(fit_maps, seed=0)
    save_pca(pca, out_dir / "pca.safetensors")
    del fit_maps
    timings["baselines_s"] = time.perf_counter() - t0
    step.note(f"PCA fitted on {n_fit} of {n_train} training maps: {out_dir / 'pca.safetensors'}")

    # 4. evaluation ------------------------------------------------------------------
    val_maps, val_sids, _ = load_split_maps(source, "val", eval_maps, seed=EVAL_SEED)
    step(f"evaluating next-patch prediction on {len(val_maps)} validation maps")
    t0 = time.perf_counter()
    p = copy.deepcopy(model.patchify).cpu()  # the baselines run on the CPU
    mean_scores = metrics.mean_map_scores(mean_map, val_maps, p)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("fixed", "random"):
        orders = metrics.make_orders(kind, len(val_maps), p.num_patches, seed=EVAL_SEED)
        m = metrics.model_next_patch_scores(model, val_maps, val_sids, orders)
        pc = metrics.pca_next_patch_scores(pca, val_maps, p, orders)
        results[kind] = {"model": m, "mean map": mean_scores, "MaskedPCA": pc}
        step.note(
            f"{kind:6s} order: "
            + metrics.format_comparison({k: v for k, v in results[kind].items()})
        )
    timings["eval_s"] = time.perf_counter() - t0

    # 5. generation ------------------------------------------------------------------
    step("generating samples and completions")
    t0 = time.perf_counter()
    fig_dir.mkdir(parents=True, exist_ok=True)
    n = min(num_examples, len(val_maps))
    with cpu_threads(1 if dev.type == "cpu" else None):
        completion_r2 = _samples_and_completions(
            model, pca, val_maps[:n], val_sids[:n], mask, fig_dir
        )
    baselines = {
        "mean map": mean_scores["loss"],
        "MaskedPCA (fixed)": results["fixed"]["MaskedPCA"]["loss"],
    }
    viz.save(
        viz.loss_curves_figure(
            records, baselines, title="Training of the demo model", ylabel="masked MSE"
        ),
        fig_dir / "loss.png",
    )
    viz.save(viz.pca_figure(pca, title="MaskedPCA baseline"), fig_dir / "pca.png")
    example_figs = sorted((Path(config.out_dir) / "figures").glob("examples-step*.png"))
    timings["generate_s"] = time.perf_counter() - t0

    # 6. report ----------------------------------------------------------------------
    step("writing the report")
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "source": source,
        "model": config.model.name,
        "num_parameters": sum(t.numel() for t in model.parameters()),
        "trained_steps": trained_steps,
        "global_batch_size": config.data.batch_size,
        "num_train_maps": n_train,
        "num_eval_maps": len(val_maps),
        "pca_components": pca.n_components,
        "pca_fit_maps": n_fit,
        "next_patch": {
            k: {m: metrics.summarize(v) for m, v in r.items()} for k, r in results.items()
        },
        "completion_r2": completion_r2,
        "final_train_loss": train_records[-1]["loss"] if train_records else None,
        "maps_per_s": _median([r.get("maps_per_s") for r in train_records]),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": config.train.threads or torch.get_num_threads(),
            "device": str(dev),
        },
    }
    write_json(out_dir / "summary.json", summary)
    md, page = _write_report(out_dir, summary, example_figs)
    fixed, rand = results["fixed"], results["random"]
    print(
        "\nvalidation next-patch loss (in-mask MSE, lower is better):\n"
        f"  model, fixed order     {fixed['model']['loss']:.4f}\n"
        f"  model, random orders   {rand['model']['loss']:.4f}\n"
        f"  mean-map baseline      {fixed['mean map']['loss']:.4f}\n"
        f"  MaskedPCA next-patch   {fixed['MaskedPCA']['loss']:.4f} (fixed), "
        f"{rand['MaskedPCA']['loss']:.4f} (random)\n"
        f"report: {md}\n        {page}\nfigures: {fig_dir}\nmodel: {model_dir}\n"
        f"total time {timings['total_s'] / 60:.1f} min",
        flush=True,
    )
    return summary


def _samples_and_completions(
    model: Any,
    pca: Any,
    real: Any,
    subject_ids: Any,
    mask: Any,
    fig_dir: Path,
) -> dict[str, dict[str, float]]:
    """Sample maps (fixed and random order) and complete ``real`` (B, H, W) from its
    left hemisphere and from its central patches; draw both beside the real maps (and
    PCA's completions). Returns the R² of the hidden pixels per prompt and method.

    A continuous model trained with MSE predicts the conditional mean. Feeding back the
    means shows the structure the model generates (smooth and faint); drawing each
    patch from N(mean, residual covariance), the predictive distribution fitted at the
    end of training, gives samples with the texture of real maps. Completions use the
    means (the best guess, scored by R²)."""
    import torch

    from boldgpt import generate
    from boldgpt.cli.generate import observed_patches
    from boldgpt.viz import train as viz

    dev = model.device
    p = model.patchify
    n = len(real)
    gen = torch.Generator(device=dev).manual_seed(0)
    sids = subject_ids.to(dev)
    draw = dict(subject_id=sids, generator=gen)
    samples = {
        "fixed order, means": generate.sample(model, n, **draw),
        "fixed order, sampled": generate.sample(model, n, noise="residual", **draw),
        "random order, sampled": generate.sample(
            model, n, order="random", noise="residual", **draw
        ),
    }
    viz.save(
        viz.samples_figure(
            real, samples, mask, cols=n, title="Real validation maps (top) and model samples"
        ),
        fig_dir / "samples.png",
    )
    real_patched = p.inverse(p(real.to(dev))).cpu()
    scores = {}
    for how in ("left", "prefix"):
        observed = observed_patches(p, n, how, 0.3, seed=0)
        done = generate.complete(
            model, p(real.to(dev)), observed.to(dev), subject_id=sids, generator=gen
        )
        comp = p.inverse(done).cpu()
        observed_px = (p.inverse_values(observed.float().to(dev)) > 0.5).cpu()
        pca_comp = torch.where(
            observed_px, real_patched, pca.decode(pca.encode_partial(real, observed_px))
        )
        label = "left hemisphere observed" if how == "left" else "central 30% observed"
        viz.save(
            viz.completions_figure(
                real_patched,
                observed_px,
                comp,
                mask,
                pca=pca_comp,
                title=f"Completions ({label}); R² on the hidden pixels",
            ),
            fig_dir / f"completions_{how}.png",
        )
        scores[how] = {
            "model": _hidden_r2(comp, real, observed_px, mask),
            "MaskedPCA": _hidden_r2(pca_comp, real, observed_px, mask),
        }
    return scores


def _previous_steps(train_dir: Path) -> int | None:
    """max_steps of an earlier demo run in this folder, if any."""
    import yaml

    path = train_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        return int(yaml.safe_load(path.read_text())["train"]["max_steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _median(values: list[Any]) -> float | None:
    vals = sorted(v for v in values if isinstance(v, int | float) and math.isfinite(v))
    return vals[len(vals) // 2] if vals else None


def _hidden_r2(pred, real, observed, mask) -> float:
    """R^2 over the in-mask pixels that were not observed, pooled over maps."""
    import torch

    from boldgpt.evaluate.metrics import Sums

    hidden = (~observed) & torch.as_tensor(mask)
    s = Sums()
    s.add(pred.float(), real.float(), hidden.expand_as(real))
    return round(s.r2, 4)


def _write_report(out_dir: Path, s: dict[str, Any], example_figs: list[Path]) -> tuple[Path, Path]:
    from boldgpt.evaluate.report import Report

    fig = out_dir / "figures"
    np_ = s["next_patch"]
    fixed_model = np_["fixed"]["model"]["loss"]
    fixed_mean = np_["fixed"]["mean map"]["loss"]
    fixed_pca = np_["fixed"]["MaskedPCA"]["loss"]
    rand_model = np_["random"]["model"]["loss"]
    rand_pca = np_["random"]["MaskedPCA"]["loss"]

    r = Report("boldgpt demo: a micro boldGPT on simulated NSD-Flat maps")
    r.text(
        f"A `{s['model']}` ({s['num_parameters'] / 1e6:.2f}M parameters; shuffled-order "
        f"autoregressive next-patch prediction of continuous 10x10 patches) trained for "
        f"{s['trained_steps']} steps of {s['global_batch_size']} maps on "
        f"{s['num_train_maps']:,} training maps of `{s['source']}` (the embedded simulator, "
        f"NSD-Flat format), in {s['timings_s'].get('train_s', 0) / 60:.1f} min on "
        f"{s['machine']['device']} ({s['machine']['threads']} thread(s)). Scores are on "
        f"{s['num_eval_maps']} held-out validation maps (the shared-stimulus trials)."
    )
    r.heading("Next-patch prediction")
    r.comparison(
        "Validation next-patch loss: in-mask MSE of each patch predicted from the patches "
        "before it (z-score units², lower is better); the last columns give baseline / model",
        {
            "fixed (radial) order": {
                "model": fixed_model,
                "mean map": fixed_mean,
                f"MaskedPCA ({s['pca_components']})": fixed_pca,
            },
            "random orders": {
                "model": rand_model,
                "mean map": np_["random"]["mean map"]["loss"],
                f"MaskedPCA ({s['pca_components']})": rand_pca,
            },
        },
        reference="model",
    )
    r.comparison(
        "The same predictions as in-mask R² (higher is better; 0 = predicting the mean value)",
        {
            f"{kind} order{'s' if kind == 'random' else ''}": {
                "model": np_[kind]["model"]["r2"],
                "mean map": np_[kind]["mean map"]["r2"],
                f"MaskedPCA ({s['pca_components']})": np_[kind]["MaskedPCA"]["r2"],
            }
            for kind in ("fixed", "random")
        },
        reference="model",
        relation="difference",
    )
    r.text(_verdict(fixed_model, fixed_mean, fixed_pca, rand_model, rand_pca))
    r.bullets(
        [
            "**mean map**: every patch predicted by the mean training map (what a model "
            "knows without looking at the map).",
            f"**MaskedPCA**: PCA ({s['pca_components']} components, fitted on "
            f"{s['pca_fit_maps']:,} training maps); each next patch is predicted from the "
            "patches before it by ridge regression on the components (a Gaussian prior whose "
            "strength is calibrated on held-out training maps), in "
            "the same orders as the model.",
            "Both baselines are measured in this run on the same maps.",
        ]
    )
    r.figure(fig / "loss.png", "Training and validation loss, with the baselines")
    r.heading("Samples and completions")
    r.figure(
        fig / "samples.png",
        "Real validation maps (top) and maps sampled by the model, patch by patch, in its "
        "fixed and in a random order. 'means': each patch is the model's prediction given "
        "the patches before it (the structure it has learned, smoother than real maps); "
        "'sampled': each patch drawn from the model's predictive distribution, N(prediction, "
        "residual covariance), the Gaussian that MSE training implies (its covariance "
        "fitted on training maps at the end of training)",
    )
    r.table(
        ["prompt", "model R² (hidden pixels)", "MaskedPCA R² (hidden pixels)"],
        [
            [how, v["model"], v["MaskedPCA"]]
            for how, v in (
                ("left hemisphere observed", s["completion_r2"]["left"]),
                ("central 30% of patches observed", s["completion_r2"]["prefix"]),
            )
        ],
        caption="Completions of held-out maps",
    )
    r.figure(fig / "completions_left.png", "Completing the right hemisphere from the left one")
    r.figure(fig / "completions_prefix.png", "Completing the map from its central patches")
    if example_figs:
        r.figure(
            example_figs[-1],
            "During training: activity, target, next-patch prediction (random order), "
            "sample, and the order the patches were fed in",
        )
    r.figure(fig / "pca.png", "The MaskedPCA baseline: mean map and leading components")
    r.heading("Reproduce")
    r.text(
        "`boldgpt demo runs/demo` (this report). Then e.g. `boldgpt generate "
        "runs/demo/train/model --num 8 --order random`, or train longer with `boldgpt train "
        "configs/boldgpt_cont_demo.yaml train.max_steps=3000`."
    )
    t = s["timings_s"]
    r.text(
        "Time: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in t.items())
        + f". Training throughput {s['maps_per_s'] or 0:.0f} maps/s."
    )
    return r.write(out_dir)


def _verdict(
    fixed_model: float, fixed_mean: float, fixed_pca: float, rand_model: float, rand_pca: float
) -> str:
    """One paragraph saying how the model compares with both baselines (and why PCA
    wins, when it does)."""
    text = (
        f"In the fixed order the model's loss is {1 - fixed_model / fixed_mean:.0%} below the "
        f"mean-map baseline ({fixed_model:.3f} vs {fixed_mean:.3f})"
    )
    if fixed_model <= fixed_pca:
        text += f" and {1 - fixed_model / fixed_pca:.0%} below MaskedPCA ({fixed_pca:.3f})."
    else:
        text += (
            f", but MaskedPCA's is {1 - fixed_pca / fixed_model:.0%} lower still "
            f"({fixed_pca:.3f}). Why: PCA's conditional prediction of a patch from the patches "
            "seen so far is exact linear algebra (ridge regression on 128 components fitted on "
            "thousands of maps), and these maps are dominated by smooth, largely linear-Gaussian "
            "structure (global gain, retinotopic and category patterns). The transformer has "
            "to learn that conditional from data, one mini-batch at a time; a micro model "
            "trained for a few minutes on a CPU has learned the mean map and part of the "
            "spatial structure, not yet all of it. Longer training (`boldgpt train "
            "configs/boldgpt_cont_demo.yaml`) narrows the gap."
        )
    text += (
        f" In random orders: model {rand_model:.3f} vs MaskedPCA {rand_pca:.3f}"
        f" ({'model better' if rand_model <= rand_pca else 'PCA better'})."
    )
    return text

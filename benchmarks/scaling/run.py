"""Scaling study of the continuous shuffled-order boldGPT (issue 9): next-patch loss and
one-pass completion R² against training compute, on two simulated datasets, beside
MaskedPCA and the mean map.

Two studies (``--study``), each with its own results folder and figure:

- ``recipe`` (default; ``benchmarks/scaling/results-recipe``,
  ``docs/figures/scaling_recipe.png``): the demo's final recipe (micro, 50% structured
  order mix, completion head, lr 6e-3, warmup-stable-decay) on today's data, annealed at
  1/4, 1/2, 1, 2 and 4 times the demo's compute (300 ... 4,800 steps of 16 maps); its
  1,200-step branch is the demo's own training run;
- ``sizes-and-orders`` (``benchmarks/scaling/results``, ``docs/figures/scaling.png``):
  three model sizes, order mixes and regularisation on the earlier 10,000-map
  ``sim:demo`` with the learning rates of then (described below).

Reproduce the committed results and figures (about an hour for ``recipe``, hours for
the other, on 2 CPU cores; one thread per run, at most ``--jobs`` runs at a time;
finished runs in ``OUT/runs`` are reused)::

    python benchmarks/scaling/run.py                       # the recipe study
    python benchmarks/scaling/run.py --study sizes-and-orders
    python benchmarks/scaling/run.py --study sizes-and-orders --only demo-micro-struct-1400
    python benchmarks/scaling/run.py --report              # refit and redraw only

Datasets: ``demo`` is the embedded ``sim:demo`` (the README demo's
data); ``nsdmask`` is simulated by ``boldgpt data simulate`` at the demo's size with the
real NSD-Flat mask and trial schedule from ``../shared/nsd`` when present (else the
procedural mask and a generated schedule), 4 subjects, SNR 0.3.

The sizes-and-orders runs (in launch order): the micro model (128 wide, 4 deep) trained with
the demo's own cosine schedule for 1,400 steps of 16 maps (the demo's compute; this run
IS the recipe, so the table comes from it), evaluated midway at 350 and 700 steps too
(flagged not annealed); nano (64 / 3) and mini (192 / 6) trained once each with a
warmup-stable-decay schedule whose decay branches (the last 20% of each budget, linear
to ``min_lr``, forked from the constant-rate trunk and thrown away after evaluation)
give an annealed model at every budget for ~1.15x the cost of the longest run; order
mixes and regularisation at the demo's compute or a quarter of it. The committed
results hold the runs the 2-core machine had time for (see the README section).
Compute is model FLOPs (``model.estimate_flops()`` x 3 for forward + backward, x maps).

At every budget: next-patch masked MSE in the fixed and in random orders on 512
validation maps, and hidden-pixel R² of one-pass completions (``generate.complete(
method="query")``) from the left-hemisphere and central-30% prompts on 128 of them: the
demo's evaluation (:mod:`boldgpt.evaluate.demo`), same maps, orders and seeds.

Outputs in ``--out``: ``runs/<name>.json`` (one per run), ``baselines_<dataset>.json``,
``scaling.json`` (everything plus the fitted curves L(C) = a (C / C0)^-b + c and where
each crosses MaskedPCA), ``table.md`` and the figure (``--figure``, default: the study's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The recipe study is the demo's own run, scored the demo's way: its constants, not copies
# (importing the demo module brings torch: ~3 s before --help)
from boldgpt.evaluate.demo import DEFAULT_STEPS as RECIPE_STEPS
from boldgpt.evaluate.demo import DEMO_CONFIG, EVAL_SEED, PROMPT_FRACTION, QUERY_ORDERS

REPO = Path(__file__).resolve().parents[2]
SHARED_NSD = REPO.parent / "shared" / "nsd"
WORK = REPO / "runs" / "scaling" / "work"  # training outputs and logs (not committed)

EVAL_MAPS, COMPLETION_MAPS, PCA_MAPS, PCA_COMPONENTS = 512, 128, 4000, 128
BATCH = 16
DEMO_STEPS = 1400  # the demo's steps when the sizes-and-orders study ran
RECIPE_LR = DEMO_CONFIG["optim"]["lr"]  # the recipe study's (the demo's today)
STRUCT_MIX = {"random": 0.5, "outward": 0.25, "hemisphere": 0.25}
MILD_MIX = {"random": 0.75, "outward": 0.125, "hemisphere": 0.125}
MIN_LR = 1e-4  # the final learning rate of every run
WSD_DECAY = 0.2  # wsd runs: the share of each budget spent decaying
HEAD = {"completion_head": 128, "completion_weight": 0.25}  # the demo's completion head

SIZES: dict[str, dict[str, int]] = {
    "nano": {"embed_dim": 64, "depth": 3, "num_heads": 2},
    "micro": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "mini": {"embed_dim": 192, "depth": 6, "num_heads": 6},
}
# Peak learning rates: the demo's 8e-3 of the study's time for micro (tuned on the earlier
# 10,000-map sim:demo), scaled ~1/width for the others (an assumption, not measured
# here). The demo now trains at 6e-3 (wsd): on the 12,000-map sim:demo a seed-0 run at
# 8e-3 stayed on the early plateau; a rerun of this study should revisit these.
LR = {"nano": 1.2e-2, "micro": 8e-3, "mini": 5e-3}


@dataclass(frozen=True)
class Run:
    """One training run and the budgets (optimizer steps) it is evaluated at."""

    name: str
    dataset: str
    size: str
    budgets: tuple[int, ...]
    schedule: str = "cosine"  # "cosine": the Trainer's (one budget); "wsd": decay branches
    order_mix: dict[str, float] = field(default_factory=lambda: dict(STRUCT_MIX))
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    warmup: int = 100
    seed: int = 0
    autoregressive: bool = False  # also score autoregressive completion at the last budget
    midway: tuple[int, ...] = ()
    """Extra evaluations inside a cosine run, without annealing (flagged
    ``annealed: false``: pessimistic points of a shorter budget)."""
    demo_steps: int = DEMO_STEPS
    """The demo's training steps when the run was defined (its "demo compute")."""
    query_orders: int = 1
    """One-pass completion averaged over this many random prompt orders (the demo: 8)."""


def _runs() -> list[Run]:
    """The study, in launch order (most important first: the 2-core machine ran out of
    time before the end of the list is a possibility the report states)."""
    mixes = {"struct": STRUCT_MIX, "random": {"random": 1.0}}
    runs = [
        # the demo's compute on both datasets (the table), evaluated midway too
        Run("demo-micro-struct-1400", "demo", "micro", (DEMO_STEPS,), midway=(350, 700)),
        Run("nsdmask-micro-struct-1400", "nsdmask", "micro", (DEMO_STEPS,), midway=(350, 700)),
    ]
    runs.append(
        Run("demo-micro-mild-1400", "demo", "micro", (DEMO_STEPS,), order_mix=dict(MILD_MIX))
    )
    # equal FLOPs: one micro step = 4.2 nano steps = 0.33 mini steps
    for ds in ("demo", "nsdmask"):
        runs.append(Run(f"{ds}-nano-struct-wsd", ds, "nano", (370, 740, 1480), "wsd"))
    runs += [
        # order mixtures at a quarter of the demo's compute (annealed short runs)
        Run("demo-micro-struct-350", "demo", "micro", (350,), warmup=35),
        Run("demo-micro-random-350", "demo", "micro", (350,), order_mix=mixes["random"], warmup=35),
    ]
    for ds in ("demo", "nsdmask"):
        runs.append(Run(f"{ds}-mini-struct-wsd", ds, "mini", (58, 115, 230), "wsd", warmup=20))
    runs.append(Run("nsdmask-micro-struct-350", "nsdmask", "micro", (350,), warmup=35))
    for ds in ("demo", "nsdmask"):
        runs.append(Run(f"{ds}-micro-struct-700", ds, "micro", (700,), warmup=70))
    runs.append(
        Run("demo-micro-random-1400", "demo", "micro", (DEMO_STEPS,), order_mix=mixes["random"])
    )
    # the demo recipe as of commit 7145b77 (50% mix + one-pass query tokens)
    runs.append(
        Run(
            "demo-micro-struct-q32-1400",
            "demo",
            "micro",
            (DEMO_STEPS,),
            model_kwargs={"query_tokens": 32},
        )
    )
    runs.append(
        Run(
            "demo-micro-struct-q32-350",
            "demo",
            "micro",
            (350,),
            model_kwargs={"query_tokens": 32},
            warmup=35,
        )
    )
    for tag, kw in (("subjdrop0.1", {"subject_dropout": 0.1}), ("droppath0.1", {"drop_path": 0.1})):
        runs.append(
            Run(f"demo-micro-struct-{tag}-350", "demo", "micro", (350,), model_kwargs=kw, warmup=35)
        )
    # a second seed of the demo-compute recipe on both datasets (the table's spread)
    for ds in ("nsdmask", "demo"):
        runs.append(
            Run(
                f"{ds}-micro-struct-1400-seed1",
                ds,
                "micro",
                (DEMO_STEPS,),
                midway=(350, 700),
                seed=1,
            )
        )
    # the demo recipe with its completion head (commit 26c50b7) on the harder data
    runs.append(
        Run(
            "nsdmask-micro-struct-head-1400",
            "nsdmask",
            "micro",
            (DEMO_STEPS,),
            model_kwargs=dict(HEAD),
            autoregressive=True,
        )
    )
    # the head recipe's own compute curve (the only one that trains the one pass on
    # completion directly): one warmup-stable-decay run per dataset, annealed at a
    # quarter of the demo's compute up to four times it
    for ds in ("demo", "nsdmask"):
        runs.append(
            Run(
                f"{ds}-micro-struct-head-wsd",
                ds,
                "micro",
                (350, 700, DEMO_STEPS, 2 * DEMO_STEPS, 4 * DEMO_STEPS),
                "wsd",
                model_kwargs=dict(HEAD),
                autoregressive=True,
            )
        )
    return runs


def _recipe_runs() -> list[Run]:
    """The demo's final recipe (micro, 50% structured mix, completion head, lr 6e-3,
    warmup-stable-decay, 1,200 steps) on today's data: one run per dataset, annealed at a
    quarter of the demo's compute up to four times it; its 1,200-step branch is the
    demo's own training."""
    budgets = tuple(RECIPE_STEPS * k // 4 for k in (1, 2, 4, 8, 16))
    return [
        Run(
            f"{ds}-recipe-wsd",
            ds,
            "micro",
            budgets,
            "wsd",
            model_kwargs=dict(HEAD),
            lr=RECIPE_LR,
            autoregressive=True,
            demo_steps=RECIPE_STEPS,
            query_orders=QUERY_ORDERS,
        )
        for ds in ("demo", "nsdmask")
    ]


@dataclass(frozen=True)
class Study:
    """A set of runs with its own results folder, figure and demo compute."""

    runs: tuple[Run, ...]
    out: Path
    figure: Path
    about: str


STUDIES: dict[str, Study] = {
    "recipe": Study(
        tuple(_recipe_runs()),
        REPO / "benchmarks/scaling/results-recipe",
        REPO / "docs/figures/scaling_recipe.png",
        "the demo's final recipe on today's data (2026-12-01 on)",
    ),
    "sizes-and-orders": Study(
        tuple(_runs()),
        REPO / "benchmarks/scaling/results",
        REPO / "docs/figures/scaling.png",
        "sizes, order mixes and regularisation on the earlier 10,000-map sim:demo (2026-11)",
    ),
}
RUNS: dict[str, Run] = {r.name: r for study in STUDIES.values() for r in study.runs}


# ----------------------------------------------------------------------------- data


def dataset_source(name: str, data_root: Path) -> str:
    """The data source of a dataset name (simulating ``nsdmask`` on first use)."""
    if name == "demo":
        return "sim:demo"
    if name != "nsdmask":
        raise ValueError(f"unknown dataset {name!r}; expected 'demo' or 'nsdmask'")
    out = data_root / "sim-nsdmask"
    if not (out / "data").exists():
        cmd = [sys.executable, "-m", "boldgpt", "data", "simulate", str(out), "--preset", "demo"]
        cmd += ["--num-subjects", "4", "--snr", "0.3", "--seed", "0", "--no-progress"]
        if SHARED_NSD.exists():
            cmd += ["--design", str(SHARED_NSD / "nsd_trial_metadata.parquet")]
            cmd += ["--mask", str(SHARED_NSD / "nsd_flat_mask.npy")]
        print("simulating:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return str(out)


def dataset_info(name: str) -> str:
    if name == "demo":
        return "sim:demo (embedded simulator, procedural mask, 4 subjects, SNR 0.5)"
    mask = "real NSD-Flat mask and schedule" if SHARED_NSD.exists() else "procedural mask"
    return f"simulated, demo size, {mask}, 4 subjects, SNR 0.3"


# ----------------------------------------------------------------------------- training


def train_config(run: Run, out_dir: Path, source: str) -> Any:
    """The run's TrainConfig: the demo's, with the run's size, mix, lr and length."""
    from boldgpt.engine.config import config_from_dict

    lr = run.lr if run.lr is not None else LR[run.size]
    steps = max(run.budgets)
    raw = {
        "out_dir": str(out_dir),
        "seed": run.seed,
        "data": {"source": source, "batch_size": BATCH},
        "model": {
            "name": "boldgpt_micro_patch10",
            "kwargs": {**SIZES[run.size], "order_mix": run.order_mix, **run.model_kwargs},
        },
        "optim": {
            "lr": lr,
            # wsd: constant after warmup in the Trainer's own schedule; the decay
            # branches set their own rates (see _Schedule)
            "min_lr": lr if run.schedule == "wsd" else MIN_LR,
            "weight_decay": 0.05,
            "warmup_steps": run.warmup,
        },
        "train": {
            "max_steps": steps,
            "eval_every": 10**9,
            "eval_batches": 16,
            "precision": "fp32",
            "threads": 1,
            "device": "cpu",
        },
        "log": {"every": 50, "figures_every": 0, "tensorboard": False, "progress": False},
        "checkpoint": {"every": 10**9, "keep": 1, "resume": "no"},
    }
    return config_from_dict(raw, where=f"scaling run {run.name}")


class _Schedule:
    """The Trainer's warmup-stable-decay factor (``engine.train.lr_factor``: warmup,
    constant, a linear decay to ``MIN_LR`` over the last ``WSD_DECAY`` of a run)
    with a movable end: ``end`` None holds the rate after warmup (the trunk); a budget
    decays into it (a decay branch)."""

    def __init__(self, config: Any):
        from boldgpt.engine.train import lr_factor

        self.lr_factor = lr_factor
        self.config = copy.deepcopy(config)
        self.config.optim.schedule = "wsd"
        self.config.optim.min_lr, self.config.optim.decay_fraction = MIN_LR, WSD_DECAY
        self.end: int | None = None

    def decay_start(self, budget: int) -> int:
        return budget - round(WSD_DECAY * budget)

    def __call__(self, step: int) -> float:
        self.config.train.max_steps = self.end if self.end is not None else 10**12
        return self.lr_factor(step, self.config)


def train_and_evaluate(run: Run, out: Path, data_root: Path) -> dict[str, Any]:
    """Train ``run``, evaluating at each budget; returns its result record."""
    import torch

    from boldgpt.data.maps import load_split_maps
    from boldgpt.engine.train import Trainer

    torch.set_num_threads(1)
    source = dataset_source(run.dataset, data_root)
    config = train_config(run, WORK / run.name, source)
    trainer = Trainer(config)
    model = trainer.model
    flops_per_step = 3 * model.estimate_flops() * BATCH
    val_maps, val_sids, _ = load_split_maps(source, "val", EVAL_MAPS, seed=EVAL_SEED)
    sched = None
    if run.schedule == "wsd":
        sched = _Schedule(config)
        trainer.scheduler.lr_lambdas = [sched] * len(trainer.optimizer.param_groups)
    points, train_s, t0 = [], 0.0, time.perf_counter()
    budgets = sorted(run.budgets)
    stops = sorted({*budgets, *run.midway})
    for budget in stops:
        annealed = budget in budgets
        decay_start = sched.decay_start(budget) if sched and annealed else budget
        if sched:
            sched.end = budget if annealed else None
        while trainer.global_step < decay_start:
            _step(trainer, run.name)
        fork = sched is not None and budget != stops[-1]
        saved = copy.deepcopy(trainer.state_dict()) if fork else None
        while trainer.global_step < budget:
            _step(trainer, run.name)
        train_s += time.perf_counter() - t0
        t_eval = time.perf_counter()
        ar = run.autoregressive and budget == stops[-1]
        with torch.random.fork_rng():
            scores = evaluate_model(
                model, val_maps, val_sids, autoregressive=ar, query_orders=run.query_orders
            )
        point = {
            "steps": budget,
            "flops": flops_per_step * budget,
            "annealed": annealed,
            "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t_eval, 1),
            **scores,
        }
        print(f"[{run.name}] {json.dumps(point)}", flush=True)
        points.append(point)
        if saved is not None:
            trainer.load_state_dict(saved, where="decay branch fork")
            if sched:
                sched.end = None
        t0 = time.perf_counter()
    trainer.logger.close()
    from boldgpt.models.registry import save_model

    save_model(model, WORK / run.name / "model")  # the last budget's, for later checks
    return {
        "run": {**asdict(run), "lr": config.optim.lr},
        "dataset": dataset_info(run.dataset),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_step": flops_per_step,
        "points": points,
        "load_average": list(os.getloadavg()),
    }


def _step(trainer: Any, name: str) -> None:
    """One optimizer step, with a progress line every 50 (CPU seconds show how fast a
    busy machine lets the run go)."""
    trainer.step()
    if trainer.global_step % 50 == 0:
        cpu = time.process_time()
        print(f"[{name}] step {trainer.global_step}, cpu {cpu:.0f}s", flush=True)


def evaluate_model(
    model: Any, maps: Any, sids: Any, autoregressive: bool = False, query_orders: int = 1
) -> dict[str, Any]:
    """Next-patch MSE (fixed / random orders) and completion R² (left / central 30%),
    as in the demo (which averages the one pass over ``QUERY_ORDERS`` prompt orders)."""
    import torch

    from boldgpt.evaluate import metrics, tasks

    model.eval()
    p = model.patchify
    out: dict[str, Any] = {"next_patch": {}, "completion_r2": {}}
    for kind in ("fixed", "random"):
        orders = metrics.make_orders(kind, len(maps), p.num_patches, seed=EVAL_SEED)
        out["next_patch"][kind] = metrics.model_next_patch_scores(model, maps, sids, orders)["mse"]
    k = min(COMPLETION_MAPS, len(maps))
    methods = ("query", "autoregressive") if autoregressive else ("query",)
    for how in ("left", "prefix"):
        observed = tasks.observed_patches(p, k, how, PROMPT_FRACTION, EVAL_SEED)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        r2, _ = tasks.completion_scores(
            model,
            maps[:k],
            sids[:k],
            observed,
            methods=methods,
            generator=gen,
            query_orders=query_orders,
        )
        out["completion_r2"][how] = {m: r2[f"model ({m})"] for m in methods}
    model.train()
    return out


def baselines(dataset: str, out: Path, data_root: Path) -> dict[str, Any]:
    """MaskedPCA and mean-map scores on the evaluation maps (computed once, cached in
    ``out/baselines_<dataset>.json``), with the demo's PCA fit (4,000 training maps, 128
    components, seed 0)."""
    import numpy as np
    import torch

    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from boldgpt.data.maps import load_split_maps
    from boldgpt.data.transforms import dequantize
    from boldgpt.evaluate import metrics, tasks
    from boldgpt.models.pca import MaskedPCA
    from boldgpt.models.registry import create_model
    from boldgpt.utils.io import write_json

    path = out / f"baselines_{dataset}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    source = dataset_source(dataset, data_root)
    cache_dir = build_cache(source, splits=["train", "val"])
    train_set = CachedNSDFlat(cache_dir, "train", images=False)
    mean_map = metrics.mean_map(
        dequantize(torch.from_numpy(np.array(train_set.activity[i : i + 1024])))
        for i in range(0, len(train_set), 1024)
    )
    fit_maps, _, mask = load_split_maps(source, "train", PCA_MAPS, seed=0)
    pca = MaskedPCA(mask, min(PCA_COMPONENTS, len(fit_maps) - 1)).fit(fit_maps, seed=0)
    maps, _, _ = load_split_maps(source, "val", EVAL_MAPS, seed=EVAL_SEED)
    p = create_model("boldgpt_micro_patch10", mask=mask).patchify  # the models' patching
    res: dict[str, Any] = {"dataset": dataset_info(dataset), "next_patch": {}, "completion_r2": {}}
    mean_scores = metrics.mean_map_scores(mean_map, maps, p)
    for kind in ("fixed", "random"):
        orders = metrics.make_orders(kind, len(maps), p.num_patches, seed=EVAL_SEED)
        res["next_patch"][kind] = {
            "MaskedPCA": metrics.pca_next_patch_scores(pca, maps, p, orders)["mse"],
            "mean map": mean_scores["mse"],
        }
    k = min(COMPLETION_MAPS, len(maps))
    for how in ("left", "prefix"):
        observed = tasks.observed_patches(p, k, how, PROMPT_FRACTION, EVAL_SEED)
        px = tasks.observed_pixels(p, observed)
        res["completion_r2"][how] = {
            "MaskedPCA": tasks.hidden_r2(
                tasks.pca_completions(pca, maps[:k], px), maps[:k], px, mask
            ),
            "mean map": tasks.hidden_r2(
                tasks.mean_map_completions(mean_map, maps[:k], px), maps[:k], px, mask
            ),
        }
    write_json(path, res)
    return res


# ----------------------------------------------------------------------------- report


def power_law(flops: Any, a: float, b: float, c: float) -> Any:
    """L(C) = a (C / 1e12)^-b + c (C: training FLOPs; c: the irreducible floor)."""
    return a * (flops / 1e12) ** (-b) + c


def fit_curve(flops: list[float], values: list[float]) -> dict[str, float] | None:
    """Least-squares fit of :func:`power_law` (b >= 0, floor >= 0) to a decreasing
    quantity; None with fewer than 3 points or when the fit fails."""
    import numpy as np
    from scipy.optimize import curve_fit

    if len(flops) < 3:
        return None
    x, y = np.asarray(flops, float), np.asarray(values, float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 3 points, 3 parameters: no covariance
            (a, b, c), _ = curve_fit(
                power_law,
                x,
                y,
                p0=(max(y[0] - y[-1], 1e-3), 0.5, max(y[-1] * 0.9, 0.0)),
                bounds=([0, 0, 0], [np.inf, 5, np.inf]),
                maxfev=20000,
            )
    except (RuntimeError, ValueError):
        return None
    return {"a": float(a), "b": float(b), "c": float(c)}


def crossing(fit: dict[str, float] | None, target: float) -> float | None:
    """FLOPs where the fitted curve reaches ``target`` (None: never, its floor is above)."""
    if not fit or fit["a"] <= 0 or fit["b"] <= 0 or target <= fit["c"]:
        return None
    return 1e12 * (fit["a"] / (target - fit["c"])) ** (1 / fit["b"])


# (metric key, label, lower is better, value getter on a point / on the baselines)
METRICS = [
    ("np_fixed", "next-patch MSE, fixed order", True),
    ("np_random", "next-patch MSE, random orders", True),
    ("c_left", "completion R², left hemisphere (one pass)", False),
    ("c_prefix", "completion R², central 30% (one pass)", False),
]


def point_value(point: dict[str, Any], key: str) -> float:
    if key.startswith("np_"):
        return point["next_patch"][key[3:]]
    return point["completion_r2"][key[2:]]["query"]


def baseline_value(base: dict[str, Any], key: str, method: str) -> float:
    if key.startswith("np_"):
        return base["next_patch"][key[3:]][method]
    return base["completion_r2"][key[2:]][method]


def curves(results: list[dict[str, Any]], dataset: str) -> dict[str, list[tuple[int, dict]]]:
    """Points (steps, point) per curve along the structured-mix recipe without
    regularisation (the runs the curves are fitted to): one curve per size, plus
    ``"micro + head"`` for the micro model with the demo's completion head."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for r in results:
        run = r["run"]
        if run["dataset"] != dataset or run["order_mix"] != STRUCT_MIX:
            continue
        if not run["model_kwargs"]:
            curve = run["size"]
        elif run["model_kwargs"] == HEAD and run["schedule"] == "wsd":
            curve = f"{run['size']} + head"
        else:
            continue
        out.setdefault(curve, []).extend((p["steps"], p) for p in r["points"])
    return {s: sorted(v, key=lambda t: t[0]) for s, v in out.items()}


def report(out: Path, figure: Path, data_root: Path) -> dict[str, Any]:
    """Fit the curves, write ``out/scaling.json`` and the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from boldgpt.utils.io import atomic_write, write_json

    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    datasets = [d for d in ("demo", "nsdmask") if (out / f"baselines_{d}.json").exists()]
    demo_steps = _demo_steps(results)
    summary: dict[str, Any] = {"runs": results, "datasets": {}, "demo_steps": demo_steps}
    fig, axes = plt.subplots(len(datasets), 4, figsize=(18, 4.2 * len(datasets)), squeeze=False)
    colors = {"nano": "tab:green", "micro": "tab:blue", "mini": "tab:purple"}
    colors["micro + head"] = "tab:red"
    for row, ds in enumerate(datasets):
        base = json.loads((out / f"baselines_{ds}.json").read_text())
        per_size = curves(results, ds)
        fits: dict[str, Any] = {}
        for col, (key, label, lower) in enumerate(METRICS):
            ax = axes[row][col]
            pca = baseline_value(base, key, "MaskedPCA")
            for size, pts in per_size.items():
                flops = [p["flops"] for _, p in pts]
                vals = [point_value(p, key) for _, p in pts]
                # R² rises towards 1: fit 1 - R² (a loss-like, decreasing quantity)
                fit = fit_curve(flops, vals if lower else [1 - v for v in vals])
                cross = crossing(fit, pca if lower else 1 - pca)
                fits.setdefault(size, {})[key] = {
                    "fit": fit,
                    "crosses_pca_at_flops": cross,
                    # midway points of a cosine run are not annealed: pessimistic, so a
                    # fit through them is steeper than the truth
                    "fit_uses_midway_points": not all(p.get("annealed", True) for _, p in pts),
                    "model_at_demo_flops": next(
                        (
                            point_value(p, key)
                            for s_, p in pts
                            if size.startswith("micro") and s_ == demo_steps
                        ),
                        None,
                    ),
                    "pca": pca,
                }
                annealed = [p.get("annealed", True) for _, p in pts]
                for flag, face in ((True, colors[size]), (False, "none")):
                    xs_ = [f for f, a in zip(flops, annealed, strict=True) if a == flag]
                    ys_ = [v for v, a in zip(vals, annealed, strict=True) if a == flag]
                    if xs_:
                        tag = size if flag else f"{size} (midway, not annealed)"
                        ax.plot(xs_, ys_, "o", color=colors[size], mfc=face, label=tag)
                if fit:
                    xs = np.geomspace(min(flops) / 2, max(flops) * 8, 100)
                    ys = power_law(xs, **fit)
                    ax.plot(xs, ys if lower else 1 - ys, "-", color=colors[size], alpha=0.6)
            for name, r in _other_mixes(results, ds, out):
                pt = r["points"][-1]
                ax.plot(pt["flops"], point_value(pt, key), marker="x", ms=9, ls="", label=name)
            for method, style in (("MaskedPCA", "--"), ("mean map", ":")):
                ax.axhline(baseline_value(base, key, method), color="k", ls=style, label=method)
            demo_flops = _demo_flops(results, demo_steps)
            if demo_flops:
                ax.axvline(demo_flops, color="0.7", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("training FLOPs")
            ax.set_title(f"{ds}: {label}", fontsize=9)
            if lower:
                ax.set_ylim(top=1.1)
            else:
                lo = min(-0.3, *(point_value(p, key) for v in per_size.values() for _, p in v))
                ax.set_ylim(max(lo, -1.0), 1.0)
            if col == 0:
                ax.legend(fontsize=7)
        summary["datasets"][ds] = {"baselines": base, "fits": fits}
    fig.suptitle(
        "boldGPT scaling (structured order mix; curves: fits a (C/1e12)^-b + c; "
        "grey line: the demo's compute; dashed: MaskedPCA, dotted: mean map)"
    )
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(figure, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    write_json(out / "scaling.json", summary)
    with atomic_write(out / "table.md", "w") as f:
        f.write(table_markdown(results, out, demo_steps))
    print(f"wrote {out / 'scaling.json'} and {figure}")
    return summary


def table_markdown(results: list[dict[str, Any]], out: Path, steps: int) -> str:
    """Issue 9's table for every micro run at the demo's compute (``steps``, from
    :func:`_demo_steps`) and the demo recipe's reference: next-patch MSE fixed / random
    and one-pass completion R² left / central 30%, model beside MaskedPCA."""
    rows = [r for r in results if r["run"]["size"] == "micro" and steps in r["run"]["budgets"]]
    ref = out / "reference_demo_recipe.json"
    if ref.exists():
        rows.append(json.loads(ref.read_text()))
    lines = [
        "| run | data | order mix | next-patch MSE fixed / random: model | MaskedPCA "
        "| completion R² left / central 30%: model | MaskedPCA | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        run = r["run"]
        base = json.loads((out / f"baselines_{run['dataset']}.json").read_text())
        pt = next(p for p in r["points"] if p["steps"] == steps)
        mix = ", ".join(f"{k} {v:g}" for k, v in run["order_mix"].items())
        np_m = " / ".join(f"{pt['next_patch'][k]:.3f}" for k in ("fixed", "random"))
        np_b = " / ".join(f"{base['next_patch'][k]['MaskedPCA']:.3f}" for k in ("fixed", "random"))
        c_m = " / ".join(f"{pt['completion_r2'][h]['query']:+.3f}" for h in ("left", "prefix"))
        c_b = " / ".join(
            f"{base['completion_r2'][h]['MaskedPCA']:+.3f}" for h in ("left", "prefix")
        )
        lines.append(
            f"| {run['name']} | {run['dataset']} | {mix} | {np_m} | {np_b} | {c_m} | {c_b} "
            f"| {pt.get('train_s', float('nan')):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _other_mixes(
    results: list[dict[str, Any]], dataset: str, out: Path
) -> list[tuple[str, dict[str, Any]]]:
    """Micro runs of ``dataset`` with other order mixes than the curves' (label, result),
    plus the current demo recipe from ``out/reference_demo_recipe.json`` when no run of
    it is saved."""
    found = []
    for r in results:
        run = r["run"]
        if run["dataset"] == dataset and run["order_mix"] != STRUCT_MIX and not run["model_kwargs"]:
            mix = ", ".join(f"{k} {v:g}" for k, v in run["order_mix"].items())
            found.append((f"micro, {mix}", r))
    ref = out / "reference_demo_recipe.json"
    if (
        dataset == "demo"
        and ref.exists()
        and "demo-micro-random-1400" not in {r["run"]["name"] for r in results}
    ):
        found.append(("demo recipe (all random; boldgpt demo)", json.loads(ref.read_text())))
    return found


def _demo_steps(results: list[dict[str, Any]]) -> int:
    """The demo's steps when a folder's runs were defined (records older than the field:
    the sizes-and-orders study's)."""
    found = {r["run"].get("demo_steps", DEMO_STEPS) for r in results} or {RECIPE_STEPS}
    if len(found) > 1:
        raise ValueError(f"runs of different demo computes in one folder: {sorted(found)}")
    return found.pop()


def _demo_flops(results: list[dict[str, Any]], demo_steps: int) -> float | None:
    for r in results:
        if r["run"]["size"] == "micro":
            return r["flops_per_step"] * demo_steps
    return None


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--study",
        choices=list(STUDIES),
        default="recipe",
        help="which runs: "
        + "; ".join(
            f"{k}: {v.about} (default out {v.out.relative_to(REPO)})" for k, v in STUDIES.items()
        ),
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder: runs/*.json, baselines_*.json, scaling.json (default: the study's)",
    )
    ap.add_argument(
        "--figure", type=Path, default=None, help="the figure (default: the study's, docs/figures/)"
    )
    ap.add_argument(
        "--data-root",
        type=Path,
        default=REPO / "runs/scaling/data",
        help="where the nsdmask dataset is simulated (default: runs/scaling/data)",
    )
    ap.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--report", action="store_true", help="only fit and draw from saved runs")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    study = STUDIES[args.study]
    args.out = out = args.out or study.out
    args.figure = args.figure or study.figure
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if args.child:
        from boldgpt.utils.io import write_json

        result = train_and_evaluate(RUNS[args.child], out, args.data_root)
        write_json(out / "runs" / f"{args.child}.json", result)
        return
    if not args.report:
        names = args.only.split(",") if args.only else [r.name for r in study.runs]
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            raise SystemExit(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
        for ds in dict.fromkeys(RUNS[n].dataset for n in names):
            baselines(ds, out, args.data_root)
        todo = [n for n in names if not (out / "runs" / f"{n}.json").exists()]
        _run_children(todo, args)
    report(out, args.figure, args.data_root)


def _run_children(names: list[str], args: argparse.Namespace) -> None:
    """Run each named run in its own process (one thread), ``args.jobs`` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, active = list(names), []
    while pending or active:
        while pending and len(active) < args.jobs:
            name = pending.pop(0)
            WORK.mkdir(parents=True, exist_ok=True)
            log = open(WORK / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            cmd = [
                sys.executable,
                __file__,
                "--out",
                str(args.out),
                "--data-root",
                str(args.data_root),
                "--child",
                name,
            ]
            # A session of its own per run: with the kernel's autogroup scheduling, runs
            # that share a session share one CPU share (measured: 15% of a core each
            # instead of ~30% on the busy 2-core machine).
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            active.append((name, proc))
            print(f"started {name}", flush=True)
        time.sleep(5)
        for name, proc in list(active):
            if proc.poll() is not None:
                active.remove((name, proc))
                print(f"{name}: exit {proc.returncode}", flush=True)


if __name__ == "__main__":
    main()

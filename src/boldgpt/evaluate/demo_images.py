"""The demo's image side: encoding and retrieval, trained beside the boldGPT.

The demo's boldGPT trains on one CPU thread; this runs on another, in a child process
started before that training and joined after it (:func:`start_image_side`,
:func:`finish_image_side`), all with fixed step counts and seeds:

0. the demo's MaskedPCA baseline (for both sides; it needs no model);
1. an ``imagebeit_micro_patch16`` (masked-patch model of the 64 px stimuli): the frozen
   image encoder of the next two;
2. ``image2bold_micro_patch10`` (encoding: picture -> map, one pass);
3. ``cbip_micro_patch10`` (retrieval: contrastive map and picture embeddings, the
   picture's token grid projected);
4. ``boldgpt eval`` of both on the validation split, with its baselines and ceilings:
   encoding r beside a ridge on the encoder's features, the simulator's true receptive
   fields and its noiseless maps; retrieval beside chance, a ridge from MaskedPCA and
   identification by those encoding models.

Outputs in ``OUT_DIR/images``: each model's training folder, ``eval.json``,
``eval.md``, ``figures/`` and ``log.txt`` (the child's output).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

IMAGE_STEPS = {"encoder": 600, "image2bold": 150, "cbip": 300}
"""Training steps per model: about 11 minutes of one thread of the 2-core development
machine together with the evaluation, the time the demo's boldGPT trains on the other."""

_COMMON: dict[str, Any] = {
    "optim": {"min_lr": 1.0e-4, "weight_decay": 0.05},
    "train": {"precision": "fp32", "threads": 1, "eval_batches": 8},
    "log": {"every": 10, "tensorboard": False, "progress": False},
    "checkpoint": {"keep": 1},
}
IMAGE_CONFIGS: dict[str, dict[str, Any]] = {
    # the shipped configs/imagebeit_micro.yaml, image2bold_micro.yaml, cbip_micro.yaml
    "encoder": {
        "data": {"batch_size": 32},
        "model": {
            "name": "imagebeit_micro_patch16",
            "kwargs": {"image_size": 64, "mask_ratio": [0.25, 0.95]},
        },
        "optim": {"lr": 2.0e-3, "warmup_steps": 50},
    },
    "image2bold": {
        "data": {"batch_size": 16},
        "model": {
            "name": "image2bold_micro_patch10",
            "kwargs": {"image_size": 64, "image_queries": 256},
        },
        "optim": {"lr": 2.0e-3, "warmup_steps": 15},
    },
    "cbip": {
        "data": {"batch_size": 64},
        "model": {
            "name": "cbip_micro_patch10",
            "kwargs": {
                "image_size": 64,
                "loss": "clip",
                "patch_drop": 0.5,
                "image_embedding": "tokens",
            },
        },
        "optim": {"lr": 1.0e-3, "warmup_steps": 30},
    },
}


def image_config(name: str, out_dir: Path, source: str, seed: int, steps: int, device: str) -> Any:
    """The :class:`~boldgpt.engine.config.TrainConfig` of one image-side model; the
    encoding and retrieval models read the encoder trained in ``out_dir/encoder``."""
    from omegaconf import OmegaConf

    from boldgpt.engine.config import config_from_dict

    raw = OmegaConf.to_container(OmegaConf.merge(_COMMON, IMAGE_CONFIGS[name]))
    raw.update(out_dir=os.fspath(out_dir / name), seed=seed)
    raw["data"]["source"] = source
    if name != "encoder":
        raw["model"]["kwargs"]["image_encoder"] = os.fspath(out_dir / "encoder" / "model")
    raw["optim"]["warmup_steps"] = min(raw["optim"]["warmup_steps"], max(steps // 10, 1))
    raw["train"].update(max_steps=steps, device=device, eval_every=steps)
    raw["checkpoint"]["every"] = steps
    raw["log"]["figures_every"] = steps
    raw["log"]["every"] = min(raw["log"]["every"], steps)
    return config_from_dict(raw, where=f"demo image config {name!r}")


def run_image_side(
    out_dir: str | os.PathLike,
    source: str,
    seed: int = 0,
    steps: dict[str, int] | None = None,
    device: str = "cpu",
    baseline_pca: dict[str, Any] | None = None,
    pca_ready: Any | None = None,
) -> dict[str, Any]:
    """Train the three image-side models (reusing finished ones) and evaluate the
    encoding and retrieval models; returns the ``eval.json`` it writes to ``out_dir``.

    ``baseline_pca``: first fit the demo's MaskedPCA baseline
    (``boldgpt.evaluate.demo.fit_demo_pca`` with these keyword arguments: ``path``,
    ``maps``, ``components``), set the event ``pca_ready``, and score the retrieval
    baseline with that PCA too."""
    from boldgpt.evaluate.demo import fit_demo_pca, train_or_reuse
    from boldgpt.evaluate.eval import EvalOptions, evaluate_models, write_eval

    out_dir = Path(out_dir)
    steps = {**IMAGE_STEPS, **(steps or {})}
    if baseline_pca is not None:
        print(f"fitting the MaskedPCA baseline ({baseline_pca['components']} components)")
        fit_demo_pca(source, **baseline_pca)
        if pca_ready is not None:
            pca_ready.set()
    model_dirs = {}
    for name in ("encoder", "image2bold", "cbip"):
        config = image_config(name, out_dir, source, seed, steps[name], device)
        print(f"training {config.model.name}: {steps[name]} steps", flush=True)
        model_dirs[name] = train_or_reuse(config, print)
    pca = baseline_pca["path"] if baseline_pca is not None else None
    options = EvalOptions(source=source, split="val", device=device, threads=1, pca=pca)
    dirs = [str(model_dirs["image2bold"]), str(model_dirs["cbip"])]
    result = evaluate_models(dirs, options, out_dir / "figures")
    result["steps"] = steps
    write_eval(result, out_dir)
    return result


def _child(out_dir: str, kwargs: dict[str, Any]) -> None:
    """The child process: its output to ``out_dir/log.txt``, then :func:`run_image_side`."""
    log = open(Path(out_dir) / "log.txt", "w", buffering=1)  # noqa: SIM115 (fd stays open)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout, sys.stderr = log, log
    run_image_side(out_dir, **kwargs)


def start_image_side(out_dir: str | os.PathLike, **kwargs: Any) -> multiprocessing.Process:
    """Start :func:`run_image_side` (``kwargs``) in a child process; its output goes to
    ``out_dir/log.txt``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(os.fspath(out_dir), kwargs), name="boldgpt-demo-images"
    )
    proc.start()
    return proc


def finish_image_side(proc: multiprocessing.Process, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Wait for the child of :func:`start_image_side`; its ``eval.json``, or a
    RuntimeError naming its log when it failed."""
    import json

    proc.join()
    path = Path(out_dir) / "eval.json"
    if proc.exitcode != 0 or not path.exists():
        log = Path(out_dir) / "log.txt"
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"the demo's image side (encoding and retrieval) failed with exit code "
            f"{proc.exitcode}; its log is {log}:\n{tail}"
        )
    return json.loads(path.read_text())


def image_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of the image side's ``eval.json``: encoding r (mean over
    pixels, maps averaged over repeats; and against the noiseless maps where known) and
    retrieval top-1 / two-way, each method beside its baselines."""
    out: dict[str, Any] = {"encoding": {}, "retrieval": {}, "steps": result.get("steps")}
    for entry in result["models"].values():
        tasks = entry["tasks"]
        if "encoding" in tasks:
            for method, v in tasks["encoding"]["mean"].items():
                out["encoding"][method] = {
                    k: v[k] for k in ("r_mean", "r_truth_mean") if v.get(k) is not None
                }
        if "retrieval" in tasks:
            for method, v in tasks["retrieval"]["mean"].items():
                out["retrieval"][method] = {
                    k: v[k] for k in ("map_to_image", "image_to_map", "two_way_map_to_image")
                }
            out["num_candidates"] = tasks["retrieval"]["mean"]["model"]["num_candidates"]
    return out

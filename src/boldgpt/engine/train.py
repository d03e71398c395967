"""The training loop: one function, :func:`train`, in the spirit of nanoGPT.

Order of events:

1. validate the config, join the torchrun process group (if any), seed;
2. load the data (build the uint8 cache on rank 0 first), create the model, freeze
   parameters by pattern, build AdamW + warmup/cosine schedule;
3. resume from a checkpoint if there is one (model, optimizer, scheduler, loss
   scaler, RNG states of every process, data position, step), after checking that it
   fits this model: every error surfaces here, before the first step;
4. loop: accumulate gradients over micro-batches (DDP syncs only on the last),
   clip, step; log, evaluate, draw examples and checkpoint on schedule; stop on
   ``max_steps``, ``stop_after``, ``max_minutes`` or SIGINT/SIGTERM (which saves a
   checkpoint first);
5. at the end, save the model directory ``OUT_DIR/model`` (loadable by
   ``boldgpt.load_model``).

Evaluation and figures run inside ``torch.random.fork_rng`` so that they never move the
training random streams: a run resumed from step N repeats the uninterrupted run bit
for bit (on CPU).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from boldgpt.engine import distributed as D
from boldgpt.engine.checkpoint import (
    CheckpointManager,
    check_compatible,
    load_checkpoint,
    rng_state,
    set_rng_state,
    warn_if_not_exact,
)
from boldgpt.engine.config import TrainConfig, save_config
from boldgpt.engine.logs import LOG_FILE, RunLogger, truncate_log
from boldgpt.errors import CheckpointError, ConfigError, DataError
from boldgpt.utils.threads import cpu_threads

Batch = dict[str, torch.Tensor]


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train`` / ``val`` are map-style datasets; if they define ``__getitems__`` it
    returns a whole raw batch (dict of tensors), else samples are collated by torch.
    ``prepare(batch, device)`` turns a raw batch into model input.
    """

    train: Dataset
    val: Dataset | None
    mask: np.ndarray
    prepare: Callable[[Batch, torch.device], Batch]


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    status: str
    """``finished`` (max_steps reached), ``stopped`` (stop_after / max_minutes) or
    ``interrupted`` (SIGINT / SIGTERM; a checkpoint was saved)."""
    step: int
    out_dir: Path
    model_dir: Path | None = None
    checkpoint: Path | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    signal: str | None = None


# ----------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global stream is seeded on purpose)
    torch.manual_seed(seed)


def process_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per process for the training-time random streams
    (random orders, masks, dropout)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def load_train_data(config: TrainConfig, info: D.DistInfo) -> TrainData:
    """Mask, train and validation datasets over the uint8 cache of the configured source.

    Rank 0 builds the cache (and, for ``sim:`` sources, the simulated dataset) while
    the others wait, so processes never race to write the same files.
    """
    from boldgpt.data import cache as cache_lib
    from boldgpt.data import nsd_flat
    from boldgpt.data.transforms import prepare_batch

    cfg = config.data
    splits = [cfg.train_split] + ([cfg.val_split] if cfg.val_split else [])

    def build(progress: bool) -> Path:
        return cache_lib.build_cache(
            cfg.source,
            splits=splits,
            subjects=cfg.subjects,
            cache_root=cfg.cache_root,
            progress=progress,
        )

    if info.is_main:
        cache_dir = build(progress=True)
    D.barrier()
    if not info.is_main:
        cache_dir = build(progress=False)  # already built: a cheap validity check
    train_set = cache_lib.CachedNSDFlat(cache_dir, cfg.train_split, images=False)
    val_set = (
        cache_lib.CachedNSDFlat(cache_dir, cfg.val_split, images=False) if cfg.val_split else None
    )
    mask = nsd_flat.load_mask(mask_file=cfg.mask_file) if cfg.mask_file else train_set.mask
    if len(train_set) == 0:
        raise DataError(f"data.source={cfg.source!r} has no maps in split {cfg.train_split!r}")
    return TrainData(train=train_set, val=val_set, mask=mask, prepare=prepare_batch)


def build_model(config: TrainConfig, mask: np.ndarray) -> nn.Module:
    """``create_model(name, mask=mask, **kwargs)``, or the model in ``init_from``."""
    from boldgpt.models.registry import create_model, load_model

    cfg = config.model
    if cfg.init_from:
        model = load_model(cfg.init_from)
        if cfg.kwargs:
            raise ConfigError(
                f"model.kwargs {sorted(cfg.kwargs)} cannot change a model loaded from "
                f"model.init_from={cfg.init_from!r}; remove them or start from a name"
            )
        return model
    return create_model(cfg.name, mask=mask, **cfg.kwargs)


def freeze_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name matches any glob pattern;
    return the frozen names. A pattern that matches nothing is an error (a typo would
    otherwise silently train everything)."""
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ConfigError(
                f"model.freeze pattern {pattern!r} matches no parameter; names look like: {sample}"
            )
        frozen.extend(hits)
    frozen_set = set(frozen)
    for name, p in model.named_parameters():
        if name in frozen_set:
            p.requires_grad_(False)
    return sorted(frozen_set)


def prepare_vocabulary(
    model: nn.Module, config: TrainConfig, data: TrainData, out_dir: Path, is_main: bool
) -> str | None:
    """Give a token model without a vocabulary one: load ``model.vocab``, or fit k-means
    on interior patches of ``model.vocab_fit_maps`` training maps (saved to
    ``OUT_DIR/vocab.safetensors``). Returns a note for the log, None if nothing was done.

    Only the main process fits; DDP copies its buffers to the others when it wraps the
    model."""
    from boldgpt.tokenizer import load_tokenizer, sample_interior_patches, save_tokenizer

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or tokenizer.is_fitted:
        return None
    if config.model.vocab:
        loaded, _ = load_tokenizer(config.model.vocab)
        if loaded.vocab.shape != tokenizer.vocab.shape:
            raise ConfigError(
                f"model.vocab={config.model.vocab!r} holds {tuple(loaded.vocab.shape)} "
                f"(vocab_size, patch dim); the model expects {tuple(tokenizer.vocab.shape)}"
            )
        tokenizer.vocab.copy_(loaded.vocab.to(tokenizer.vocab.device))
        return f"loaded the token vocabulary from {config.model.vocab}"
    if not is_main:
        return None
    n = min(config.model.vocab_fit_maps, len(data.train))
    patchify = model.patchify
    key = getattr(model, "input_key", "activity")

    def load_maps(indices: np.ndarray) -> torch.Tensor:
        return data.prepare(_fetch(data.train, indices.tolist()), patchify.mask.device)[key]

    patches = sample_interior_patches(load_maps, len(data.train), n, patchify, config.seed)
    t0 = time.perf_counter()
    tokenizer.fit(patches, seed=config.seed)
    path = out_dir / "vocab.safetensors"
    save_tokenizer(tokenizer, path, patch_size=patchify.patch_size, source=config.data.source)
    return (
        f"fitted a {tokenizer.vocab_size}-token vocabulary on {len(patches)} interior patches "
        f"of {n} training maps in {time.perf_counter() - t0:.0f}s; saved to {path}"
    )


def _fetch(dataset: Dataset, indices: list[int]) -> Batch:
    """A raw batch of ``indices`` from a map-style dataset."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(indices)
    return torch.utils.data.default_collate([dataset[i] for i in indices])


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; none on biases, norms, embeddings, tokens
    and queries (used when a model has no ``param_groups`` of its own)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or any(s in name for s in ("embed", "token", "query", "norm"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device):
    """AdamW over the model's parameter groups, without frozen parameters."""
    cfg = config.optim
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.weight_decay)
    else:
        groups = default_param_groups(model, cfg.weight_decay)
    groups = [
        {**g, "params": [p for p in g["params"] if p.requires_grad]}
        for g in groups
        if any(p.requires_grad for p in g["params"])
    ]
    if not groups:
        raise ConfigError("model.freeze froze every parameter: nothing left to train")
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warmup from 0 to 1 over
    ``warmup_steps``, then cosine decay to ``min_lr / lr`` at ``max_steps``."""
    cfg = config.optim
    total, warmup = config.train.max_steps, cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr / cfg.lr
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_loader(
    dataset: Dataset,
    sampler: torch.utils.data.Sampler,
    batch_size: int,
    num_workers: int,
    seed: int,
) -> DataLoader:
    """A DataLoader whose batches come from ``dataset.__getitems__`` when it has one.

    It gets its own generator so that creating an iterator (which draws worker seeds)
    never touches the global RNG; otherwise a resumed run would drift."""
    batched = hasattr(dataset, "__getitems__")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_first if batched else None,
        generator=generator,
        persistent_workers=False,
        drop_last=False,
    )


def _first(batch: Any) -> Any:
    # With __getitems__ the fetcher hands us the finished batch already.
    return batch


# ------------------------------------------------------------------------------ loop


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    data: TrainData | None = None,
) -> TrainResult:
    """Train a model as configured; see the module docstring for the sequence.

    Args:
        config: a validated :class:`TrainConfig`.
        model: use this model instead of building ``config.model`` (for programmatic
            use and tests); it must return an object with ``.loss`` from
            ``model(batch)``.
        data: use these datasets instead of loading ``config.data``.

    Returns:
        a :class:`TrainResult`. In a distributed run every process returns one.
    """
    config = config.apply_debug().validate()
    info = D.init_distributed(config.train.device)
    dev = info.device
    if config.train.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 on CPU")
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    out_dir = Path(config.out_dir)
    ckpts = CheckpointManager(out_dir / "checkpoints", keep=config.checkpoint.keep)

    # -- data and model (identical initialization on every process)
    seed_everything(config.seed)
    if data is None:
        data = load_train_data(config, info)
    if model is None:
        model = build_model(config, data.mask)
    model.to(dev)
    frozen = freeze_parameters(model, config.model.freeze)
    optimizer = make_optimizer(model, config, dev)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
    model_config = getattr(model, "config", None)

    batch_size = config.data.batch_size
    accum = config.optim.accumulation
    global_batch = batch_size * info.world_size * accum
    sampler = D.ResumableShardSampler(
        len(data.train),
        batch_size,
        num_replicas=info.world_size,
        rank=info.rank,
        seed=config.seed,
    )
    val_loader = None
    if data.val is not None and len(data.val) > 0:
        val_sampler = D.ResumableShardSampler(
            len(data.val),
            batch_size,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=False,
            drop_last=False,
        )
        val_loader = make_loader(data.val, val_sampler, batch_size, config.data.num_workers, 0)

    # -- resume (all checks before any step)
    step, best_val = 0, math.inf
    resume_from = _resume_path(config, ckpts)
    if resume_from is None:
        note = prepare_vocabulary(model, config, data, out_dir, info.is_main)
        if note and info.is_main:
            print(note, flush=True)
    if resume_from is None and config.checkpoint.resume == "no" and info.is_main:
        ckpts.clear()
        for stale in (out_dir / LOG_FILE, out_dir / "tb"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        check_compatible(ckpt, model, model_config, where=str(resume_from))
        warn_if_not_exact(ckpt, info.world_size, global_batch)
        model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot resume from {resume_from}: the optimizer state does not fit "
                f"({exc}); did model.freeze change?"
            ) from exc
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        try:
            sampler.load_state_dict(ckpt["data"])
        except ValueError as exc:
            raise CheckpointError(
                f"cannot resume from {resume_from}: {exc}; did data.source or data.subjects change?"
            ) from exc
        step = int(ckpt["step"])
        best_val = float(ckpt.get("best_val_loss", math.inf))
        rngs = ckpt.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            seed_everything(process_seed(config.seed + step, info.rank))
        del ckpt
    else:
        seed_everything(process_seed(config.seed, info.rank))

    if step >= config.train.max_steps:
        raise ConfigError(
            f"{resume_from} is already at step {step} >= train.max_steps="
            f"{config.train.max_steps}; raise train.max_steps to train further"
        )

    # -- wrap for data parallel / compile
    ddp = None
    if info.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    forward: nn.Module = ddp if ddp is not None else model
    if config.train.compile:
        forward = torch.compile(forward)

    def autocast() -> contextlib.AbstractContextManager:
        return _autocast(config, dev)

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        truncate_log(out_dir / LOG_FILE, after_step=step)
    logger = RunLogger(
        out_dir,
        enabled=info.is_main,
        tensorboard=config.log.tensorboard,
        wandb=config.log.wandb,
        wandb_project=config.log.wandb_project,
        config=config.to_dict(),
        total_steps=config.train.max_steps,
        initial_step=step,
        progress=config.log.progress,
    )
    num_params = sum(p.numel() for p in model.parameters())
    logger.message(
        f"training {type(model).__name__} ({num_params / 1e6:.2f}M parameters"
        f"{f', {len(frozen)} frozen tensors' if frozen else ''}) on {info.world_size} x {dev}, "
        f"global batch {global_batch}, steps {step}->{config.train.max_steps}"
        + (f", resumed from {resume_from}" if resume_from else "")
    )

    # -- helpers of the loop
    examples = _example_batch(data, config.log.num_examples) if info.is_main else None
    batches: Iterator[Batch] | None = None

    def next_batch() -> Batch:
        nonlocal batches
        if batches is None:
            loader = make_loader(
                data.train,
                sampler,
                batch_size,
                config.data.num_workers,
                seed=config.seed + sampler.epoch,
            )
            batches = iter(loader)
        batch = next(batches)
        if sampler.advance(1):
            batches = None  # epoch done; the next call starts the next epoch
        return data.prepare(batch, dev)

    def evaluate() -> dict[str, float]:
        with _side_rng(dev, config.seed):
            return _evaluate(model, val_loader, data.prepare, dev, autocast, config)

    def save(is_best: bool) -> Path | None:
        rngs = D.all_gather_objects(rng_state())
        if not info.is_main:
            return None
        state = {
            "model": model.state_dict(),
            "model_config": model_config,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rngs,
            "data": sampler.state_dict(),
            "config": config.to_dict(),
            "best_val_loss": best_val,
            "world_size": info.world_size,
            "global_batch_size": global_batch,
        }
        return ckpts.save(state, step, is_best=is_best)

    def draw(tag: str) -> None:
        if not info.is_main or examples is None:
            return
        from boldgpt.viz.train import training_examples_figure

        path = out_dir / "figures" / f"examples-step{step:07d}.png"
        with _side_rng(dev, config.seed), cpu_threads(1 if dev.type == "cpu" else None):
            was_training = model.training
            model.eval()
            try:
                training_examples_figure(model, data.prepare(examples, dev), path)
            finally:
                model.train(was_training)
        logger.figure(step, tag, path)

    # -- the loop
    result = TrainResult(status="finished", step=step, out_dir=out_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    start_step, t_start = step, time.perf_counter()
    t_log, step_log = t_start, step
    loss_sum = torch.zeros((), device=dev)
    extra_sums: dict[str, torch.Tensor] = {}  # the model's own metrics, e.g. token accuracy
    last_val = None
    model.train()
    try:
        with _StopSignal() as stop_signal:
            while step < config.train.max_steps:
                for micro in range(accum):
                    batch = next_batch()
                    # gradients are all-reduced only on the last micro-batch of a step
                    sync = ddp.no_sync() if ddp and micro < accum - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            out = forward(batch)
                        loss = out.loss.float()
                        scaler.scale(loss / accum).backward()
                    loss_sum += loss.detach() / accum
                    for key, value in (getattr(out, "metrics", None) or {}).items():
                        extra_sums[key] = extra_sums.get(key, 0.0) + value.detach().float() / accum
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                if config.optim.grad_clip is not None:
                    grad_norm = nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
                else:
                    grad_norm = nn.utils.clip_grad_norm_(params, math.inf)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                # -- logging
                if step % config.log.every == 0 or step == config.train.max_steps:
                    now = time.perf_counter()
                    train_loss = D.all_reduce_mean(loss_sum / (step - step_log), dev)
                    if not math.isfinite(train_loss):
                        raise FloatingPointError(
                            f"training loss is {train_loss} at step {step}; lower optim.lr, raise "
                            "optim.warmup_steps or use train.precision=fp32"
                        )
                    maps_per_s = (step - step_log) * global_batch / max(now - t_log, 1e-9)
                    n_steps = step - step_log
                    extras = {
                        k: D.all_reduce_mean(v / n_steps, dev)
                        for k, v in sorted(extra_sums.items())
                    }
                    extra_sums.clear()
                    metrics = {
                        "loss": train_loss,
                        **extras,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "maps_per_s": maps_per_s,
                        "epoch": sampler.epoch + sampler.position / sampler.epoch_length,
                    }
                    logger.log(step, metrics)
                    logger.progress(step, loss=train_loss, maps_s=f"{maps_per_s:.0f}")
                    result.last_train_loss = train_loss
                    loss_sum.zero_()
                    t_log, step_log = now, step
                else:
                    logger.progress(step)

                # -- evaluation, checkpoints, figures
                is_best = False
                last_step = step == config.train.max_steps
                if val_loader is not None and (step % config.train.eval_every == 0 or last_step):
                    val_metrics = evaluate()
                    last_val = val_metrics["loss"]
                    is_best = last_val < best_val
                    best_val = min(best_val, last_val)
                    logger.log(step, {**val_metrics, "best_loss": best_val}, split="val")
                    logger.message(f"step {step}: val loss {last_val:.4f} (best {best_val:.4f})")
                if step % config.checkpoint.every == 0 or is_best or last_step:
                    result.checkpoint = save(is_best)
                if config.log.figures_every and (step % config.log.figures_every == 0 or last_step):
                    draw("examples")

                # -- early ends of this invocation (checkpointed, resumable)
                elapsed_min = (time.perf_counter() - t_start) / 60
                out_of_time = (
                    bool(config.train.max_minutes) and elapsed_min >= config.train.max_minutes
                )
                # Signals and clocks differ between processes: agree, or DDP would hang.
                interrupted = D.any_process(stop_signal.received is not None, dev)
                out_of_time = D.any_process(out_of_time, dev)
                reason = None
                if interrupted:
                    reason = "interrupted"
                elif out_of_time or (
                    config.train.stop_after and step - start_step >= config.train.stop_after
                ):
                    reason = "stopped"
                if reason and not last_step:
                    result.status = reason
                    result.signal = stop_signal.received
                    saved = save(False)
                    result.checkpoint = saved or result.checkpoint
                    logger.message(
                        f"{'received ' + stop_signal.received if stop_signal.received else reason}"
                        f" at step {step}: checkpoint saved to {ckpts.latest_path}; run the same "
                        "command again to resume"
                    )
                    break

    except BaseException:
        logger.close()  # flush the log and the progress bar before the error shows
        raise

    result.step = step
    result.best_val_loss = best_val if math.isfinite(best_val) else None
    result.last_val_loss = last_val
    if result.status == "finished" and info.is_main:
        with _side_rng(dev, config.seed):
            _fit_predictive_noise(model, data, dev, logger)
        result.model_dir = _save_final_model(model, out_dir / "model", logger)
    logger.close()
    D.barrier()
    return result


def _resume_path(config: TrainConfig, ckpts: CheckpointManager) -> Path | None:
    resume = config.checkpoint.resume
    if resume == "no":
        return None
    if resume == "auto":
        return ckpts.latest()
    return Path(resume)


def _autocast(config: TrainConfig, dev: torch.device) -> contextlib.AbstractContextManager:
    precision = config.train.precision
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype)


@contextlib.contextmanager
def _side_rng(dev: torch.device, seed: int) -> Iterator[None]:
    """Run evaluation / figures with their own fixed random stream (the same random
    orders every time) and leave the training streams untouched."""
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 12345)
        yield


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loader: DataLoader | None,
    prepare: Callable[[Batch, torch.device], Batch],
    dev: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    config: TrainConfig,
) -> dict[str, float]:
    """Mean loss (and the model's own metrics) per map over (a prefix of) the
    validation split, over all processes."""
    was_training = model.training
    model.eval()
    names: list[str] = []
    total = None
    try:
        for i, raw in enumerate(loader):
            if config.train.eval_batches and i >= config.train.eval_batches:
                break
            batch = prepare(raw, dev)
            with autocast():
                out = model(batch)
            extra = getattr(out, "metrics", None) or {}
            if total is None:
                names = ["loss", *sorted(extra)]
                total = torch.zeros(len(names) + 1, dtype=torch.float64, device=dev)
            n = len(next(iter(batch.values())))
            values = [out.loss, *(extra[k] for k in names[1:])]
            total[:-1] += torch.stack([v.detach().double() for v in values]) * n
            total[-1] += n
    finally:
        model.train(was_training)
    if total is None:  # fewer validation maps than processes
        total = torch.zeros(2, dtype=torch.float64, device=dev)
        names = ["loss"]
    total = D.all_reduce_sum_tensor(total)
    return {k: float(v) for k, v in zip(names, total[:-1] / total[-1].clamp_min(1))}


def _example_batch(data: TrainData, n: int) -> Batch | None:
    """The first ``n`` validation maps (train when there is no val): the same maps in
    every figure of a run."""
    dataset = data.val if data.val is not None and len(data.val) else data.train
    return _fetch(dataset, list(range(min(n, len(dataset)))))


def _fit_predictive_noise(
    model: nn.Module, data: TrainData, dev: torch.device, logger: RunLogger, maps: int = 512
) -> None:
    """Continuous autoregressive models: estimate the residual covariance of their
    next-patch predictions on training maps and store it in the model, so that
    sampling can draw from the predictive distribution (``noise="residual"``)."""
    if getattr(model, "residual_cov", None) is None or not getattr(model, "causal", False):
        return
    from boldgpt.generate import fit_residual_covariance

    n = min(maps, len(data.train))
    batches = (
        data.prepare(_fetch(data.train, list(range(i, min(i + 64, n)))), dev)
        for i in range(0, n, 64)
    )
    cov = fit_residual_covariance(model, batches)
    logger.message(
        f"fitted the predictive residual covariance on {n} training maps "
        f"(mean variance {float(cov.diagonal().mean()):.3f})"
    )


def _save_final_model(model: nn.Module, path: Path, logger: RunLogger) -> Path | None:
    if getattr(model, "config", None) is None:
        logger.message("model has no registry config; final weights are in the checkpoint only")
        return None
    from boldgpt.models.registry import save_model

    save_model(model, path)
    logger.message(f"saved model to {path} (load with boldgpt.load_model({str(path)!r}))")
    return path

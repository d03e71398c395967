"""The training engine: :class:`Trainer` and its one-call entry point :func:`train`.

Order of events:

1. validate the config, join the torchrun process group (if any), seed;
2. ask the model's config what a batch must hold (:func:`batch_spec`: maps, images,
   subject ids), load the data (rank 0 builds the uint8 cache first), create the model
   (or take it from ``model.init_from``, or start an image↔BOLD model's BOLD side from
   the pretrained map model there: :func:`build_model`, reported in ``init_from.txt``),
   freeze parameters by pattern, build AdamW + warmup/cosine schedule; images are
   normalised as the model asks (``image_normalization``, else ImageNet's);
3. resume from a checkpoint if there is one (:meth:`Trainer.load_state_dict`, beside
   :meth:`Trainer.state_dict` which writes it), after checking that it fits this model:
   every error surfaces here, before the first step;
4. loop (:meth:`Trainer.fit`): :meth:`Trainer.step` accumulates gradients over
   micro-batches (DDP syncs only on the last), clips and steps; log, evaluate, draw
   the model family's example figure (``boldgpt.viz.train.EXAMPLE_FIGURES``) and
   checkpoint on schedule; stop on ``max_steps``, ``stop_after``,
   ``max_minutes`` or SIGINT/SIGTERM (which saves a checkpoint first);
5. at the end, fit the residual covariance of continuous autoregressive models and save
   the model directory ``OUT_DIR/model`` (loadable by ``boldgpt.load_model``).

Evaluation and figures run inside ``torch.random.fork_rng`` so that they never move the
training random streams: a run resumed from step N repeats the uninterrupted run bit
for bit (on CPU).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from boldgpt.data.loader import fetch_batch, make_dataloader
from boldgpt.engine import distributed as D
from boldgpt.engine.checkpoint import (
    CheckpointManager,
    check_compatible,
    load_checkpoint,
    lock_run_dir,
    rng_state,
    set_rng_state,
    warn_if_not_exact,
)
from boldgpt.engine.config import TrainConfig, save_config
from boldgpt.engine.logs import LOG_FILE, RunLogger, truncate_log
from boldgpt.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from boldgpt.utils.io import atomic_write
from boldgpt.utils.machine import cpu_description, cpu_has_fast_bf16
from boldgpt.utils.threads import cpu_threads

Batch = dict[str, torch.Tensor]
INIT_FILE = "init_from.txt"
"""What ``model.init_from`` did (tensors loaded, new, skipped and why), in OUT_DIR."""


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train`` / ``val`` are map-style datasets; if they define ``__getitems__`` it
    returns a whole raw batch (dict of tensors), else samples are collated by torch.
    ``prepare(batch, device)`` turns a raw (host) batch into model input on ``device``.
    ``mask`` is the bool (H, W) cortex mask a new model over maps is built on (None for
    models of images, which cover the full square).
    """

    train: Dataset
    val: Dataset | None
    mask: np.ndarray | None
    prepare: Callable[[Batch, torch.device], Batch]


@dataclass(frozen=True)
class BatchSpec:
    """What a batch must hold for a model, from its config (the per-family hook).

    ``keys``: e.g. ``("activity", "subject_id")`` for models of BOLD maps, ``("image",)``
    for models of images; image↔BOLD families list both inputs. ``image_size``: the side
    S of the (S, S) images to cache when ``"image"`` is a key. ``num_subjects``: subject
    ids must lie in ``[0, num_subjects)`` (checked on the host batch); None: unchecked.
    ``image_normalization``: (mean, std) per channel the images are normalised with,
    the model's own (e.g. a timm encoder's) when it has one; None: ImageNet's.
    """

    keys: tuple[str, ...] = ("activity", "subject_id")
    image_size: int | None = None
    num_subjects: int | None = None
    image_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def images(self) -> bool:
        return "image" in self.keys

    @property
    def maps(self) -> bool:
        return "activity" in self.keys


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


def batch_spec(config: TrainConfig, model: nn.Module | None = None) -> BatchSpec:
    """What a batch must hold for ``model`` (or, when None, for the configured registry
    model, resolved by ``boldgpt.models.registry.model_config`` without building it;
    the image normalisation is then unknown: ImageNet's until the model is built).

    A model without a registry config (e.g. a custom module passed to :func:`train`)
    gets BOLD maps with subject ids."""
    if model is not None:
        cfg = getattr(model, "config", None)
    else:
        from boldgpt.models.registry import model_config

        cfg = model_config(config.model.name, **config.model.kwargs)
    keys = getattr(cfg, "batch_keys", None)
    if keys is None:
        return BatchSpec()
    subjects = getattr(cfg, "num_subjects", None) if "subject_id" in keys else None
    norm = getattr(model, "image_normalization", None)
    if norm is not None:
        norm = (tuple(map(float, norm[0])), tuple(map(float, norm[1])))
    return BatchSpec(tuple(keys), getattr(cfg, "image_size", None), subjects, norm)


def load_train_data(
    config: TrainConfig, info: D.DistInfo | None = None, spec: BatchSpec | None = None
) -> TrainData:
    """Train and validation datasets over the uint8 cache of the configured source, with
    images at ``spec.image_size`` when the batch needs them, and the mask (maps only).
    ``info`` defaults to a single process, ``spec`` to :func:`batch_spec` of the config.

    Rank 0 builds the cache (and, for ``sim:`` sources, the simulated dataset) while
    the others wait, so processes never race to write the same files.
    """
    from boldgpt.data import cache as cache_lib
    from boldgpt.data import schema
    from boldgpt.data.masks import read_mask_file

    info = info or D.DistInfo()
    spec = spec or batch_spec(config)
    cfg = config.data
    splits = [cfg.train_split] + ([cfg.val_split] if cfg.val_split else [])
    if spec.images and not spec.image_size:
        raise ConfigError(f"model {config.model.name!r} reads images but has no image_size")

    def build(progress: bool) -> Path:
        return cache_lib.build_cache(
            cfg.source,
            splits=splits,
            subjects=cfg.subjects,
            image_size=spec.image_size if spec.images else None,
            cache_root=cfg.cache_root,
            progress=progress,
        )

    if info.is_main:
        cache_dir = build(progress=True)
    D.barrier()
    if not info.is_main:
        cache_dir = build(progress=False)  # already built: a cheap validity check
    train_set = cache_lib.CachedNSDFlat(cache_dir, cfg.train_split, images=spec.images)
    val_set = None
    if cfg.val_split:
        val_set = cache_lib.CachedNSDFlat(cache_dir, cfg.val_split, images=spec.images)
    if len(train_set) == 0:
        raise DataError(f"data.source={cfg.source!r} has no maps in split {cfg.train_split!r}")
    if cfg.shuffle_pairs:
        if not (spec.images and spec.maps):
            raise ConfigError(
                f"data.shuffle_pairs=true needs a model that reads pictures with maps; "
                f"{config.model.name!r} reads {list(spec.keys)}"
            )
        train_set.image_index = derange_pictures(train_set.image_index, config.seed)
    mask = None
    if spec.maps:
        mask = read_mask_file(cfg.mask_file, schema.MAP_SHAPE) if cfg.mask_file else train_set.mask
    if cfg.train_fraction < 1:
        train_set = trial_subset(train_set, cfg.train_fraction, config.seed)
    return TrainData(
        train=train_set,
        val=val_set,
        mask=mask,
        prepare=_prepare_keys(spec.keys, spec.image_normalization),
    )


def trial_subset(dataset: Any, fraction: float, seed: int) -> torch.utils.data.Subset:
    """``data.train_fraction``: a seeded random ``fraction`` of the rows (at least one),
    in their original order."""
    n = max(1, round(fraction * len(dataset)))
    rows = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    return torch.utils.data.Subset(dataset, rows.tolist())


def derange_pictures(image_index: np.ndarray, seed: int) -> np.ndarray:
    """``data.shuffle_pairs``: rows (T,) of the picture of each map -> rows where every
    stimulus's maps get the picture of another stimulus of the same rows (a random
    cycle through the stimuli, seeded: a derangement, the same for all repeats)."""
    stimuli = np.unique(image_index)
    if len(stimuli) < 2:
        raise DataError("data.shuffle_pairs needs at least 2 stimuli in the training split")
    cycle = stimuli[np.random.default_rng(seed).permutation(len(stimuli))]
    moved = np.empty_like(stimuli)
    moved[np.searchsorted(stimuli, cycle)] = np.roll(cycle, -1)
    return moved[np.searchsorted(stimuli, image_index)]


def _prepare_keys(
    keys: tuple[str, ...],
    image_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Callable[[Batch, torch.device], Batch]:
    """``prepare_batch`` of only the keys the model reads (a model of images need not
    copy maps to the device), images normalised with ``image_normalization`` = (mean,
    std) per channel (None: ImageNet's)."""
    from boldgpt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, prepare_batch

    mean, std = image_normalization or (IMAGENET_MEAN, IMAGENET_STD)

    def prepare(batch: Batch, device: torch.device) -> Batch:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise DataError(f"the model needs batch keys {missing}; the data has {sorted(batch)}")
        return prepare_batch({k: batch[k] for k in keys}, device, image_mean=mean, image_std=std)

    return prepare


def build_model(
    config: TrainConfig, mask: np.ndarray | None, source: nn.Module | None = None
) -> tuple[nn.Module, list[str]]:
    """The model to train and the lines the run log gets about its start.

    - without ``model.init_from``: ``create_model(name, mask=mask, **kwargs)``;
    - with it, when the configured model is an image↔BOLD family (CBIP, image2bold,
      bold2image: it reads maps and images) and the directory holds another family (a
      pretrained boldGPT / BEiT map model): ``create_model(name, mask, **kwargs)``, then
      :func:`boldgpt.models.pretrained.init_from` copies the map model's tensors into
      its BOLD side; the lines list what was loaded, new and skipped (and why). A
      CheckpointError if the map model has another mask or patch size;
    - otherwise the directory's own model, fine-tuned (``model.kwargs`` refused).

    ``source``: the ``init_from`` model when already loaded (:func:`load_init_source`).
    """
    from boldgpt.models.pretrained import init_from
    from boldgpt.models.registry import create_model

    cfg = config.model
    if not cfg.init_from:
        return create_model(cfg.name, mask=mask, **cfg.kwargs), []
    source = source if source is not None else load_init_source(config)
    if starts_new_model(config, source):
        model = create_model(cfg.name, mask=mask, **cfg.kwargs)
        report = init_from(model, source)
        report.source = cfg.init_from
        return model, report.lines()
    if cfg.kwargs:
        raise ConfigError(
            f"model.kwargs {sorted(cfg.kwargs)} cannot change a model loaded from "
            f"model.init_from={cfg.init_from!r}; remove them or start from a name"
        )
    return source, [f"fine-tuning the {_family(source)} model of {cfg.init_from}"]


def load_init_source(config: TrainConfig) -> nn.Module:
    """The model in ``model.init_from`` (a model directory or hub id)."""
    from boldgpt.models.registry import load_model

    return load_model(config.model.init_from)


def starts_new_model(config: TrainConfig, source: nn.Module) -> bool:
    """Whether ``model.init_from``'s model (``source``) only starts the BOLD side of a
    new model of the configured name (an image↔BOLD family, another family than the
    source's), rather than being the model that is fine-tuned."""
    from boldgpt.models.registry import model_config

    cfg = model_config(config.model.name, **config.model.kwargs)
    reads_maps_and_images = {"activity", "image"} <= set(getattr(cfg, "batch_keys", ()))
    return reads_maps_and_images and type(cfg).model_class != _family(source)


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
        return data.prepare(fetch_batch(data.train, indices.tolist()), patchify.mask.device)[key]

    patches = sample_interior_patches(load_maps, len(data.train), n, patchify, config.seed)
    t0 = time.perf_counter()
    tokenizer.fit(patches, seed=config.seed)
    path = out_dir / "vocab.safetensors"
    save_tokenizer(tokenizer, path, patch_size=patchify.patch_size, source=config.data.source)
    return (
        f"fitted a {tokenizer.vocab_size}-token vocabulary on {len(patches)} interior patches "
        f"of {n} training maps in {time.perf_counter() - t0:.0f}s; saved to {path}"
    )


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device):
    """AdamW over ``boldgpt.models.layers.param_groups`` (the one weight-decay rule:
    decay on linear/conv weight matrices only), without frozen parameters."""
    from boldgpt.models.layers import param_groups

    cfg = config.optim
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("model.freeze froze every parameter: nothing left to train")
    # fused on GPUs; on the CPU foreach (a few kernels over all parameters): the default
    # there (one tensor at a time) took 54 ms a step for a 6.6M-parameter micro model on
    # one thread, foreach 22 ms. Not fused on the CPU (7 ms): the non-finite guard checks
    # CPU steps at once and skips them uncounted, which a fused step cannot do
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=device.type == "cuda",
        foreach=device.type != "cuda",
    )


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warmup from 0 to 1 over
    ``warmup_steps``, then to ``min_lr / lr`` at ``max_steps`` by a cosine (``cosine``)
    or, for ``wsd``, 1 until the last ``decay_fraction`` of the run and a straight line
    from there."""
    cfg = config.optim
    total, warmup = config.train.max_steps, cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr / cfg.lr
    if cfg.schedule == "wsd":
        decay_start = max(total - round(cfg.decay_fraction * total), warmup)
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start) / max(total - decay_start, 1), 1.0)
        return 1.0 - (1.0 - floor) * progress
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def has_registry_config(model: nn.Module) -> bool:
    """Whether ``model`` was built from a registry config (it can be described, saved as
    a model directory and loaded by name), unlike a custom module passed to :func:`train`."""
    from boldgpt.models.config import PatchModelConfig

    return isinstance(getattr(model, "config", None), PatchModelConfig)


def describe_model(model: nn.Module) -> dict[str, Any] | None:
    """The model's registry description (JSON-able; what checkpoints store and resume
    compares), or None for a model without a registry config."""
    if not has_registry_config(model):
        return None
    from boldgpt.models.registry import describe

    return describe(model)


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


# ---------------------------------------------------------------------------- trainer


class Trainer:
    """One training run: the model, its optimizer, schedule, loss scaler, data position
    and random streams, with the state saved in checkpoints beside the code that restores
    it (:meth:`state_dict` / :meth:`load_state_dict`).

    ``Trainer(config, model=None, data=None)`` builds everything and resumes from the
    configured checkpoint (``checkpoint.resume``); :meth:`fit` runs the loop. ``model``
    replaces the configured one (it must return an object with ``.loss`` from
    ``model(batch)``); ``data`` replaces loading ``config.data``.
    """

    def __init__(
        self, config: TrainConfig, model: nn.Module | None = None, data: TrainData | None = None
    ):
        config = config.apply_debug().validate()
        self.config = config
        self.info = info = D.init_distributed(config.train.device)
        self.device = dev = info.device
        if config.train.precision == "fp16" and dev.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a GPU; use bf16 on CPU")
        if config.train.precision == "bf16" and dev.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn(
                f"train.precision=bf16 on a CPU without bf16 matmul kernels "
                f"({cpu_description()}): autocast emulates them, about 10x slower than "
                "train.precision=fp32",
                stacklevel=2,
            )
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.out_dir = Path(config.out_dir)
        self.ckpts = CheckpointManager(self.out_dir / "checkpoints", keep=config.checkpoint.keep)

        # -- data and model (identical initialization on every process)
        seed_everything(config.seed)
        self.init_report: list[str] = []  # what model.init_from did (for the log)
        source = None
        if model is None and config.model.init_from:
            source = load_init_source(config)
            if not starts_new_model(config, source):  # fine-tuning: its config says
                model, self.init_report = build_model(config, None, source)  # what a batch holds
        self.spec = batch_spec(config, model)
        self.data = data if data is not None else load_train_data(config, info, self.spec)
        if model is None:  # (init_from checks the mask before any step)
            model, self.init_report = build_model(config, self.data.mask, source)
        self.model = model
        if data is None:  # the engine's own batches: images normalised as this model expects
            self.spec = batch_spec(config, model)
            self.data.prepare = _prepare_keys(self.spec.keys, self.spec.image_normalization)
        self.model.to(dev)
        self.frozen = freeze_parameters(self.model, config.model.freeze)
        self.optimizer = make_optimizer(self.model, config, dev)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
        self.global_batch = config.data.batch_size * info.world_size * config.optim.accumulation
        self.sampler = D.ResumableShardSampler(
            len(self.data.train),
            config.data.batch_size,
            num_replicas=info.world_size,
            rank=info.rank,
            seed=config.seed,
        )
        self.val_loader = self._val_loader()
        self.global_step = 0
        self.best_val = math.inf
        self.resumed_from = self._resume_or_start()
        self.forward_ddp: nn.parallel.DistributedDataParallel | None = None
        self.forward = self._wrap()  # the model, or its DDP / compiled wrapper
        self._batches: Iterator[Batch] | None = None
        self._loss_sum = torch.zeros((), device=dev)
        self._metric_sums: dict[str, torch.Tensor] = {}  # the model's own, e.g. token accuracy
        self.skipped_nonfinite = 0  # steps skipped for a NaN/Inf loss or gradient
        self._skips_in_a_row = 0
        self._nonfinite_pending = torch.zeros((), dtype=torch.int64, device=dev)
        self.logger = self._open_logs()

    # -- state: what a checkpoint holds, saved and restored side by side

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: model, optimizer, scheduler, loss
        scaler, every process's random states, the sampler's position, step and best
        validation loss (plus the config and the run's shape, to check a resume).

        Collective in a distributed run: every process must call it."""
        rngs = D.all_gather_objects(rng_state())
        return {
            "step": self.global_step,
            "model": self.model.state_dict(),
            "model_config": describe_model(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rngs,
            "data": self.sampler.state_dict(),
            "config": self.config.to_dict(),
            "best_val_loss": self.best_val,
            "world_size": self.info.world_size,
            "global_batch_size": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Restore :meth:`state_dict`'s output (``where`` names it in errors). Checks
        first that it fits this model and data; with another process count the random
        streams are re-seeded instead (the run continues, not bit-exactly)."""
        check_compatible(state, self.model, describe_model(self.model), where=where)
        warn_if_not_exact(state, self.info.world_size, self.global_batch)
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot resume from {where}: the optimizer state does not fit "
                f"({exc}); did model.freeze change?"
            ) from exc
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        try:
            self.sampler.load_state_dict(state["data"])
        except ValueError as exc:
            raise CheckpointError(
                f"cannot resume from {where}: {exc}; did data.source or data.subjects change?"
            ) from exc
        self._batches = None  # the next batch comes from the restored position
        self.global_step = int(state["step"])
        self.best_val = float(state.get("best_val_loss", math.inf))
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            seed_everything(process_seed(self.config.seed + self.global_step, self.info.rank))

    def save_checkpoint(self, is_best: bool = False) -> Path | None:
        """Write :meth:`state_dict` to ``OUT_DIR/checkpoints`` (rank 0; collective);
        returns the step file's path on rank 0, None elsewhere."""
        state = self.state_dict()
        if not self.info.is_main:
            return None
        return self.ckpts.save(state, self.global_step, is_best=is_best)

    # -- one step, one evaluation

    def step(self) -> dict[str, Any]:
        """One optimizer step over ``optim.accumulation`` micro-batches (DDP all-reduces
        gradients on the last only); returns its ``lr`` and ``grad_norm`` (a 0-d tensor on
        the device: reading it waits for the device, so the loop does so only when it logs).
        Losses and the model's metrics are summed for the next log line. A NaN/Inf loss
        or gradient never reaches the weights (:meth:`_guard_nonfinite`); a step skipped
        for one returns None."""
        accum, ddp = self.config.optim.accumulation, self.forward_ddp
        step_loss = torch.zeros((), device=self.device)
        step_metrics: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = self._next_batch()
            sync = ddp.no_sync() if ddp and micro < accum - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    out = self.forward(batch)
                loss = out.loss.float()
                self.scaler.scale(loss / accum).backward()
            step_loss += loss.detach() / accum
            for key, value in (getattr(out, "metrics", None) or {}).items():
                total = step_metrics.get(key, 0.0)
                step_metrics[key] = total + value.detach().float() / accum
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
        keep = self._guard_nonfinite(step_loss, grad_norm)
        if keep is None:
            return None
        self._loss_sum += torch.where(keep, step_loss, 0.0)
        for key, value in step_metrics.items():
            kept = torch.where(keep, value, 0.0)
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + kept
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return {"lr": lr, "grad_norm": grad_norm.detach()}

    def _guard_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor | None:
        """Keep a NaN/Inf loss or gradient away from the weights. Returns whether the
        step's loss counts (a 0-d bool on the device), or None when the step is skipped.

        - fp16: the loss scaler already skips such steps;
        - fused optimizers (GPU): no host-device sync per step: the optimizer skips the
          update on the device (``found_inf``) and the next log line reports it (such a
          step still counts towards ``max_steps``);
        - otherwise (CPU, where reading a value is free): checked at once; the batch is
          skipped or the run stops (:meth:`_nonfinite`).
        """
        dev = self.device
        if self.scaler.is_enabled():
            return torch.ones((), dtype=torch.bool, device=dev)
        if self.optimizer.defaults.get("fused"):
            bad = ~torch.isfinite(grad_norm)  # all-reduced gradients: the same on every rank
            self.optimizer.found_inf = bad.float()
            self._nonfinite_pending += bad
            return ~bad
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if not D.any_process(not finite, dev):
            self._skips_in_a_row = 0
            return torch.ones((), dtype=torch.bool, device=dev)
        self.optimizer.zero_grad(set_to_none=True)
        found = f"loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g}"
        self._nonfinite(f"step {self.global_step + 1}", 1, found)
        return None

    def _nonfinite(self, where: str, count: int, found: str) -> None:
        """Count and log ``count`` skipped steps (``train.skip_nonfinite``), or raise
        :class:`NonFiniteError` naming them and the last good checkpoint."""
        self._skips_in_a_row += count
        if self.config.train.skip_nonfinite and self._skips_in_a_row <= 50:
            self.skipped_nonfinite += count
            self.logger.message(
                f"{where}: skipped a non-finite loss or gradient ({found}); "
                f"{self.skipped_nonfinite} skipped so far"
            )
            return
        last = self.ckpts.last_good_step_file() if self.info.is_main else None
        kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint yet"
        raise NonFiniteError(
            f"non-finite loss or gradient at {where} ({found}"
            f"{', 50 in a row' if self._skips_in_a_row > 50 else ''}); the weights were not "
            f"updated and {kept}. Lower optim.lr, raise optim.warmup_steps or use "
            "train.precision=fp32, or set train.skip_nonfinite=true to skip such batches"
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss (and the model's own metrics) per map over (a prefix of, see
        ``train.eval_batches``) the validation split, over all processes. Uses its own
        fixed random stream and leaves the training streams untouched."""
        was_training = self.model.training
        self.model.eval()
        names, total = ["loss"], None
        try:
            with _side_rng(self.device, self.config.seed):
                for i, raw in enumerate(self.val_loader or []):
                    if self.config.train.eval_batches and i >= self.config.train.eval_batches:
                        break
                    batch = self._prepare(raw)
                    with self._autocast():
                        out = self.model(batch)
                    extra = getattr(out, "metrics", None) or {}
                    if total is None:
                        names = ["loss", *sorted(extra)]
                        total = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)
                    n = len(next(iter(batch.values())))
                    values = [out.loss, *(extra[k] for k in names[1:])]
                    total[:-1] += torch.stack([v.detach().double() for v in values]) * n
                    total[-1] += n
        finally:
            self.model.train(was_training)
        if total is None:  # fewer validation maps than processes
            total = torch.zeros(2, dtype=torch.float64, device=self.device)
        total = D.all_reduce_sum_tensor(total)
        return {k: float(v) for k, v in zip(names, total[:-1] / total[-1].clamp_min(1))}

    # -- the loop

    def fit(self) -> TrainResult:
        """Train to ``train.max_steps`` (or an early end: ``stop_after``, ``max_minutes``,
        SIGINT/SIGTERM, each checkpointed first); then, when finished, fit the residual
        covariance and save ``OUT_DIR/model``. Returns how it ended."""
        cfg = self.config
        result = TrainResult(status="finished", step=self.global_step, out_dir=self.out_dir)
        self._start_step, self._t_start = self.global_step, time.perf_counter()
        self._t_log, self._step_log = self._t_start, self.global_step
        self.model.train()
        try:
            with _StopSignal() as stop_signal:
                while self.global_step < cfg.train.max_steps:
                    stats = self.step()
                    if stats is None:  # skipped (train.skip_nonfinite): nothing to log
                        continue
                    if self.global_step % cfg.log.every == 0 or self._last_step():
                        result.last_train_loss = self._log_train(stats)
                    else:
                        self.logger.progress(self.global_step)
                    self._on_schedule(result)
                    reason = self._stop_reason(stop_signal)
                    if reason and not self._last_step():
                        self._stop_early(result, reason, stop_signal.received)
                        break
        except BaseException:
            self.logger.close()  # flush the log and the progress bar before the error shows
            raise
        result.step = self.global_step
        result.best_val_loss = self.best_val if math.isfinite(self.best_val) else None
        if result.status == "finished" and self.info.is_main:
            with _side_rng(self.device, cfg.seed):
                _fit_predictive_noise(self.model, self.data, self.device, self.logger)
            card = _model_card(self.config, self.global_step, result.last_val_loss)
            result.model_dir = _save_final_model(
                self.model, self.out_dir / "model", self.logger, card
            )
        self.logger.close()
        D.barrier()
        return result

    def _last_step(self) -> bool:
        return self.global_step == self.config.train.max_steps

    def _log_train(self, stats: dict[str, Any]) -> float:
        """Log the mean loss and metrics since the last log line (all processes)."""
        step, dev = self.global_step, self.device
        now = time.perf_counter()
        n_steps = step - self._step_log
        pending = int(self._nonfinite_pending)  # (a log line reads the device anyway)
        if pending:
            self._nonfinite_pending.zero_()
            span = (
                f"step {step}"
                if n_steps == 1
                else f"{pending} of steps {self._step_log + 1}-{step}"
            )
            self._nonfinite(span, pending, "their updates were skipped")
        else:
            self._skips_in_a_row = 0
        n_steps = max(n_steps - pending, 1)  # the sums hold the kept steps only
        train_loss = D.all_reduce_mean(self._loss_sum / n_steps, dev)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss is {train_loss} at step {step}; lower optim.lr, raise "
                "optim.warmup_steps or use train.precision=fp32"
            )
        maps_per_s = n_steps * self.global_batch / max(now - self._t_log, 1e-9)
        extras = {
            k: D.all_reduce_mean(v / n_steps, dev) for k, v in sorted(self._metric_sums.items())
        }
        self._metric_sums.clear()
        sampler = self.sampler
        metrics = {
            "loss": train_loss,
            **extras,
            "lr": stats["lr"],
            "grad_norm": float(stats["grad_norm"]),
            "maps_per_s": maps_per_s,
            "epoch": sampler.epoch + sampler.position / sampler.epoch_length,
        }
        if self.config.train.skip_nonfinite:
            metrics["skipped_nonfinite"] = self.skipped_nonfinite
        self.logger.log(step, metrics)
        self.logger.progress(step, loss=train_loss, maps_s=f"{maps_per_s:.0f}")
        self._loss_sum.zero_()
        self._t_log, self._step_log = now, step
        return train_loss

    def _on_schedule(self, result: TrainResult) -> None:
        """Evaluation, checkpoints (latest, best) and figures when they are due."""
        cfg, step, last = self.config, self.global_step, self._last_step()
        is_best = False
        if self.val_loader is not None and (step % cfg.train.eval_every == 0 or last):
            val_metrics = self.evaluate()
            result.last_val_loss = val = val_metrics["loss"]
            is_best = val < self.best_val
            self.best_val = min(self.best_val, val)
            self.logger.log(step, {**val_metrics, "best_loss": self.best_val}, split="val")
            self.logger.message(f"step {step}: val loss {val:.4f} (best {self.best_val:.4f})")
        if step % cfg.checkpoint.every == 0 or is_best or last:
            result.checkpoint = self.save_checkpoint(is_best)
        if cfg.log.figures_every and (step % cfg.log.figures_every == 0 or last):
            self._draw_examples()

    def _stop_reason(self, stop_signal: _StopSignal) -> str | None:
        """``interrupted`` (a signal), ``stopped`` (stop_after / max_minutes) or None.
        Signals and clocks differ between processes: they agree, or DDP would hang."""
        cfg, dev = self.config.train, self.device
        elapsed_min = (time.perf_counter() - self._t_start) / 60
        out_of_time = bool(cfg.max_minutes) and elapsed_min >= cfg.max_minutes
        if D.any_process(stop_signal.received is not None, dev):
            return "interrupted"
        out_of_time = D.any_process(out_of_time, dev)
        if out_of_time or (
            cfg.stop_after and self.global_step - self._start_step >= cfg.stop_after
        ):
            return "stopped"
        return None

    def _stop_early(self, result: TrainResult, reason: str, received: str | None) -> None:
        result.status, result.signal = reason, received
        result.checkpoint = self.save_checkpoint() or result.checkpoint
        self.logger.message(
            f"{'received ' + received if received else reason} at step {self.global_step}: "
            f"checkpoint saved to {self.ckpts.latest_path}; run the same command again to resume"
        )

    # -- setup helpers

    def _val_loader(self) -> DataLoader | None:
        val = self.data.val
        if val is None or len(val) == 0:
            return None
        sampler = D.ResumableShardSampler(
            len(val),
            self.config.data.batch_size,
            num_replicas=self.info.world_size,
            rank=self.info.rank,
            shuffle=False,
            drop_last=False,
        )
        return make_dataloader(
            val,
            self.config.data.batch_size,
            sampler=sampler,
            num_workers=self.config.data.num_workers,
            seed=0,
            timeout=self.config.data.worker_timeout,
        )

    def _resume_or_start(self) -> Path | None:
        """Load the checkpoint to resume from, or start fresh (vocabulary, seeds, and
        with ``checkpoint.resume=no`` removing old checkpoints and logs)."""
        cfg, info = self.config, self.info
        resume_from = _resume_path(cfg, self.ckpts)
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from), where=str(resume_from))
        else:
            note = prepare_vocabulary(self.model, cfg, self.data, self.out_dir, info.is_main)
            if note and info.is_main:
                print(note, flush=True)
            if cfg.checkpoint.resume == "no" and info.is_main:
                self.ckpts.clear()
                for stale in (self.out_dir / LOG_FILE, self.out_dir / "tb"):
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    elif stale.exists():
                        stale.unlink()
            seed_everything(process_seed(cfg.seed, info.rank))
        if self.global_step >= cfg.train.max_steps:
            raise ConfigError(
                f"{resume_from} is already at step {self.global_step} >= train.max_steps="
                f"{cfg.train.max_steps}; raise train.max_steps to train further"
            )
        return resume_from

    def _wrap(self) -> nn.Module:
        """The module the loop calls: the model, wrapped for data parallel / compile."""
        if self.info.distributed:
            dev = self.device
            self.forward_ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        forward: nn.Module = self.model if self.forward_ddp is None else self.forward_ddp
        return torch.compile(forward) if self.config.train.compile else forward

    def _open_logs(self) -> RunLogger:
        cfg, info, step = self.config, self.info, self.global_step
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            truncate_log(self.out_dir / LOG_FILE, after_step=step)
        logger = RunLogger(
            self.out_dir,
            enabled=info.is_main,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            wandb_project=cfg.log.wandb_project,
            config=cfg.to_dict(),
            total_steps=cfg.train.max_steps,
            initial_step=step,
            progress=cfg.log.progress,
        )
        num_params = sum(p.numel() for p in self.model.parameters())
        frozen = f", {len(self.frozen)} frozen tensors" if self.frozen else ""
        resumed = f", resumed from {self.resumed_from}" if self.resumed_from else ""
        logger.message(
            f"training {type(self.model).__name__} ({num_params / 1e6:.2f}M parameters{frozen})"
            f" on {info.world_size} x {self.device}, global batch {self.global_batch}, "
            f"steps {step}->{cfg.train.max_steps}{resumed}"
        )
        if self.init_report and not self.resumed_from:
            for line in self.init_report:
                logger.message(line)
            if info.is_main:  # kept beside the metrics: the console scrolls away
                with atomic_write(self.out_dir / INIT_FILE, "w") as f:
                    f.write("\n".join(self.init_report) + "\n")
        if cfg.log.figures_every and self._example_drawer() is None:
            logger.message(
                f"no example figures: boldgpt.viz has none for {_family(self.model)} models"
            )
        return logger

    # -- batches

    def _next_batch(self) -> Batch:
        """The next training batch, prepared on the device; a new epoch starts after the
        last batch of the sampler's epoch."""
        if self._batches is None:
            loader = make_dataloader(
                self.data.train,
                self.config.data.batch_size,
                sampler=self.sampler,
                num_workers=self.config.data.num_workers,
                seed=self.config.seed + self.sampler.epoch,
                timeout=self.config.data.worker_timeout,
            )
            self._batches = iter(loader)
        try:
            raw = next(self._batches)
        except RuntimeError as exc:
            if "DataLoader" not in str(exc):
                raise
            raise DataError(
                f"a data-loader worker died or hung at step {self.global_step + 1} ({exc}); "
                "run with data.num_workers=0 to see the underlying error in this process"
            ) from exc
        if self.sampler.advance(1):
            self._batches = None  # epoch done; the next call starts the next epoch
        return self._prepare(raw)

    def _prepare(self, raw: Batch) -> Batch:
        """Check the host batch (no device sync), then move and convert it."""
        if self.spec.num_subjects is not None and "subject_id" in raw:
            from boldgpt.models.checks import check_subject_ids

            check_subject_ids(raw["subject_id"], self.spec.num_subjects)
        return self.data.prepare(raw, self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _example_drawer(self) -> Callable[[nn.Module, Batch], Any] | None:
        """The model family's example figure (``boldgpt.viz.train.EXAMPLE_FIGURES``), or
        None when viz has none for it (the run then draws none and says so once)."""
        from boldgpt.viz.train import example_figure_drawer

        return example_figure_drawer(self.model)

    def _draw_examples(self) -> None:
        """Figure of the model's view of the first validation examples (rank 0)."""
        draw = self._example_drawer()
        if not self.info.is_main or self.config.log.num_examples < 1 or draw is None:
            return  # (a family without a figure was named in the log by _open_logs)
        from boldgpt.viz.maps import save_figure

        data, n = self.data, self.config.log.num_examples
        dataset = data.val if data.val is not None and len(data.val) else data.train
        examples = fetch_batch(dataset, list(range(min(n, len(dataset)))))
        path = self.out_dir / "figures" / f"examples-step{self.global_step:07d}.png"
        dev = self.device
        with _side_rng(dev, self.config.seed), cpu_threads(1 if dev.type == "cpu" else None):
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    save_figure(draw(self.model, self._prepare(examples)), path)
            finally:
                self.model.train(was_training)
        self.logger.figure(self.global_step, "examples", path)


def train(
    config: TrainConfig,
    model: nn.Module | None = None,
    data: TrainData | None = None,
) -> TrainResult:
    """Train a model as configured: ``Trainer(config, model, data).fit()``.

    Args:
        config: a validated :class:`TrainConfig` (``load_config`` / ``config_from_dict``).
        model: use this model instead of building ``config.model`` (programmatic use,
            tests); it must return an object with ``.loss`` from ``model(batch)``.
        data: use these datasets instead of loading ``config.data``.

    Returns:
        a :class:`TrainResult`. In a distributed run every process returns one.
    """
    # one run per out_dir: a second one refuses before writing anything (rank 0 locks)
    first_rank = os.environ.get("RANK", "0") == "0"
    with lock_run_dir(config.out_dir) if first_rank else contextlib.nullcontext():
        return Trainer(config, model=model, data=data).fit()


# ------------------------------------------------------------------------------ helpers


def _resume_path(config: TrainConfig, ckpts: CheckpointManager) -> Path | None:
    resume = config.checkpoint.resume
    if resume == "no":
        return None
    if resume == "auto":
        return ckpts.latest()
    return Path(resume)


def _family(model: nn.Module) -> str:
    """The model's family (its registry config's ``model_class``) or class name."""
    return getattr(getattr(model, "config", None), "model_class", "") or type(model).__name__


@contextlib.contextmanager
def _side_rng(dev: torch.device, seed: int) -> Iterator[None]:
    """Run evaluation / figures with their own fixed random stream (the same random
    orders every time) and leave the training streams untouched."""
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 12345)
        yield


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
        data.prepare(fetch_batch(data.train, list(range(i, min(i + 64, n)))), dev)
        for i in range(0, n, 64)
    )
    cov = fit_residual_covariance(model, batches)
    logger.message(
        f"fitted the predictive residual covariance on {n} training maps "
        f"(mean variance {float(cov.diagonal().mean()):.3f})"
    )


def _model_card(config: TrainConfig, steps: int, val_loss: float | None) -> dict[str, Any]:
    """What the final model's card says about its training (see ``save_model``)."""
    card: dict[str, Any] = {
        "data": f"{config.data.source}, split {config.data.train_split}",
        "training_steps": steps,
    }
    if val_loss is not None:
        card["evaluation"] = {f"{config.data.val_split} loss": val_loss}
    return card


def _save_final_model(
    model: nn.Module, path: Path, logger: RunLogger, card: dict[str, Any]
) -> Path | None:
    if not has_registry_config(model):
        logger.message("model has no registry config; final weights are in the checkpoint only")
        return None
    from boldgpt.models.registry import save_model

    save_model(model, path, card=card)
    logger.message(f"saved model to {path} (load with boldgpt.load_model({str(path)!r}))")
    return path

"""Typed training configs: dataclasses loaded from YAML, with dotted command-line overrides.

A config file mirrors :class:`TrainConfig`::

    out_dir: runs/boldgpt_micro
    data: {source: "sim:ci", batch_size: 32, subjects: [subj01, subj02]}
    model: {name: boldgpt_micro_patch10, kwargs: {categorical: false}}
    optim: {lr: 1.0e-3, warmup_steps: 100}
    train: {max_steps: 2000, precision: bf16}

and ``load_config("cfg.yaml", ["optim.lr=3e-4", "train.max_steps=10"])`` applies the
overrides (values parsed as YAML) before validation. The dataclasses are OmegaConf
structured configs: OmegaConf checks and converts each value against its field's type
(``"3e-4"`` -> 3e-4 for a float); this module adds what OmegaConf does not: integral
floats for integers (``1e4`` -> 10000), strict true/false for flags (``1`` is refused),
and messages that name the file, the key, the value and what was expected, with a "did
you mean" for misspelt keys and choices. Every problem raises :class:`ConfigError`
before anything is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from boldgpt.data.sources import DEFAULT_SOURCE, normalize_subjects, parse_source
from boldgpt.errors import BoldGPTError, ConfigError
from boldgpt.utils.hub import is_hub_id
from boldgpt.utils.io import atomic_write

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "wsd"]


@dataclass
class DataConfig:
    """Where the maps come from and how they are batched."""

    source: str = DEFAULT_SOURCE
    """``sim:<preset>`` (embedded simulator), a local NSD-Flat directory, or a hub id."""
    subjects: list[int | str] | None = None
    """Subjects to train on, as 0-based ids or NSD names (``subj01`` = id 0); ``None`` =
    all. Validation turns names into sorted ids."""
    mask_file: str | None = None
    """A bool (215, 200) ``.npy`` mask; default: the source's mask."""
    batch_size: int = 32
    """Maps per process per micro-step (global batch = this x processes x accumulation)."""
    num_workers: int = 0
    """DataLoader worker processes per training process (0 = load in the main process)."""
    worker_timeout: float = 300.0
    """With workers: seconds to wait for a batch before failing with a clear error (a
    worker stuck on I/O would otherwise hang the run)."""
    train_split: str = "train"
    val_split: str = "val"
    cache_root: str | None = None
    """Parent directory of uint8 caches; default ``$BOLDGPT_HOME/cache``."""
    shuffle_pairs: bool = False
    """A control for models that read pictures with maps (image2bold, bold2image,
    CBIP): the maps of each training stimulus are paired with the picture of another
    training stimulus (a fixed derangement seeded by ``seed``; every repeat of a
    stimulus gets the same wrong picture), so nothing true links pictures and maps in
    training. The validation split keeps its true pairs."""
    train_fraction: float = 1.0
    """Train on this fraction of the training split's trials: a random subset drawn with
    ``seed`` (the same seed, the same trials), e.g. 0.1 to measure what pretraining is
    worth with 10% of the paired data. The validation split stays whole."""


@dataclass
class ModelConfig:
    """Which model to train: a registry name with overrides, or an existing model."""

    name: str = "boldgpt_micro_patch10"
    """A registry name (``boldgpt list-models``), e.g. ``boldgpt_tiny_patch10``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to ``create_model`` (e.g. ``{categorical: true}``)."""
    init_from: str | None = None
    """A model directory or hub id whose weights start the run: the model there is
    fine-tuned, except that an image↔BOLD model (``name`` cbip_* / image2bold_* /
    bold2image_*) with a pretrained boldGPT / BEiT map model there is built from
    ``name`` and ``kwargs`` and its BOLD side starts from that model (OUT_DIR/init_from.txt
    lists the tensors loaded, new and skipped)."""
    freeze: list[str] = field(default_factory=list)
    """Glob patterns of parameter names to keep fixed, e.g. ``["backbone.blocks.0.*"]``."""
    vocab: str | None = None
    """Token models: a vocabulary file from ``boldgpt fit-vocab``. Without one, the
    vocabulary is fitted on training maps at the start (and saved in OUT_DIR)."""
    vocab_fit_maps: int = 2000
    """Token models without ``vocab``: training maps whose interior patches fit it."""


@dataclass
class OptimConfig:
    """AdamW with a linear warmup, then a cosine or a warmup-stable-decay schedule."""

    lr: float = 1e-3
    """Peak learning rate (reached after warmup)."""
    min_lr: float = 1e-5
    """Learning rate at the end of the decay."""
    schedule: Schedule = "cosine"
    """After warmup: ``cosine``, a cosine decay to ``min_lr`` over the rest of the run;
    ``wsd`` (warmup-stable-decay), ``lr`` held constant, then a linear decay to
    ``min_lr`` over the last ``decay_fraction`` of the run."""
    decay_fraction: float = 0.2
    """``wsd`` only: the share of ``train.max_steps`` spent decaying."""
    weight_decay: float = 0.05
    """Applied to weight matrices only (not biases, norms, embeddings, queries)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (``null`` = no clipping)."""
    accumulation: int = 1
    """Micro-batches per optimizer step (gradient accumulation)."""


@dataclass
class TrainLoopConfig:
    """Length, precision and hardware of the run."""

    max_steps: int = 1000
    """Optimizer steps of the whole run (the schedule's length)."""
    stop_after: int | None = None
    """End this invocation after this many steps (checkpointed; resume continues)."""
    max_minutes: float | None = None
    """End this invocation after this much wall time (checkpointed; resume continues)."""
    precision: Precision = "fp32"
    """``bf16`` autocast (CPU and GPU), ``fp16`` autocast with loss scaling (GPU only)."""
    compile: bool = False
    """Run the model through ``torch.compile``."""
    device: str = "auto"
    """``auto`` (GPU if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    eval_every: int = 200
    """Steps between validation passes (and best-checkpoint decisions)."""
    eval_batches: int = 20
    """Validation batches per pass (per process); 0 = the whole split."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (slower on GPU)."""
    threads: int | None = None
    """CPU threads per process (``torch.set_num_threads``); null = torch's default. On
    a busy machine 1 can be several times faster than oversubscribed cores."""
    skip_nonfinite: bool = False
    """Skip an optimizer step whose loss or gradient is NaN/Inf (counted and logged as
    ``skipped_nonfinite``) instead of stopping the run with an error."""


@dataclass
class LogConfig:
    """What is written while training."""

    every: int = 10
    """Steps between log lines (JSON lines, TensorBoard, progress bar)."""
    tensorboard: bool = True
    wandb: bool = False
    """Also log to Weights & Biases (needs ``pip install wandb``)."""
    wandb_project: str = "boldgpt"
    figures_every: int = 500
    """Steps between example figures, also drawn at the end (0 = no figures)."""
    num_examples: int = 4
    """Maps per example figure."""
    progress: bool = True
    """Show a progress bar (loss, maps/s, ETA) on the main process."""


@dataclass
class CheckpointConfig:
    """Checkpoints: rotation of the latest ones plus the best by validation loss."""

    every: int = 200
    """Steps between checkpoints."""
    keep: int = 3
    """Step checkpoints to keep (older ones are deleted; latest and best always stay)."""
    resume: str = "auto"
    """``auto`` (continue from ``OUT_DIR/checkpoints/latest.pt`` if it exists), ``no``
    (start over, removing old checkpoints) or the path of a checkpoint file."""


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``configs/*.yaml`` for examples."""

    out_dir: str = "runs/boldgpt"
    seed: int = 0
    debug: bool = False
    """A few steps with frequent logging/eval/checkpoints, to check that a config runs."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> TrainConfig:
        """Check values and combinations; raise :class:`ConfigError` naming the key."""
        _check_positive(self, "data.batch_size", "train.max_steps", "optim.accumulation")
        _check_positive(self, "log.every", "train.eval_every", "checkpoint.every")
        _check_positive(self, "checkpoint.keep", "log.num_examples")
        _check_non_negative(self, "data.num_workers", "optim.warmup_steps")
        _check_positive(self, "data.worker_timeout")
        _check_non_negative(self, "train.eval_batches", "log.figures_every", "optim.weight_decay")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr must be > 0; got {self.optim.lr}")
        if not 0 <= self.optim.min_lr <= self.optim.lr:
            raise ConfigError(
                f"optim.min_lr must be in [0, optim.lr={self.optim.lr}]; got {self.optim.min_lr}"
            )
        if not 0 < self.optim.decay_fraction <= 1:
            raise ConfigError(
                f"optim.decay_fraction must be in (0, 1]; got {self.optim.decay_fraction}"
            )
        if self.optim.warmup_steps > self.train.max_steps:
            raise ConfigError(
                f"optim.warmup_steps={self.optim.warmup_steps} is longer than "
                f"train.max_steps={self.train.max_steps}"
            )
        if not 0 < self.data.train_fraction <= 1:
            raise ConfigError(
                f"data.train_fraction must be in (0, 1]; got {self.data.train_fraction}"
            )
        if self.optim.grad_clip is not None and self.optim.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null; got {self.optim.grad_clip}")
        if not all(0 <= b < 1 for b in self.optim.betas):
            raise ConfigError(f"optim.betas must be in [0, 1); got {list(self.optim.betas)}")
        for key in ("train.stop_after", "train.max_minutes", "train.threads"):
            value = _get(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{key} must be > 0 or null; got {value}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.train.device):
            raise ConfigError(
                f"train.device={self.train.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )
        self.data.subjects = _check_subjects(self.data.subjects)
        _check_source(self.data.source)
        _check_positive(self, "model.vocab_fit_maps")
        for key in ("data.mask_file", "model.init_from", "model.vocab"):
            _check_local_or_hub(self, key)
        resume = self.checkpoint.resume
        if resume not in ("auto", "no") and not Path(resume).is_file():
            raise ConfigError(
                f"checkpoint.resume={resume!r}: expected 'auto', 'no' or an existing checkpoint "
                f"file"
            )
        return self

    def apply_debug(self) -> TrainConfig:
        """Shrink the run to a few steps that exercise logging, eval, figures and
        checkpoints (``debug: true``)."""
        if not self.debug:
            return self
        cfg = copy.deepcopy(self)
        cfg.train.max_steps = min(cfg.train.max_steps, 8)
        cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, 2)
        cfg.train.eval_every = cfg.checkpoint.every = 4
        cfg.train.eval_batches = min(cfg.train.eval_batches or 2, 2)
        cfg.log.every = 1
        cfg.log.figures_every = 4
        cfg.train.compile = False
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-able dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @property
    def global_batch_size_per_process(self) -> int:
        """Maps per optimizer step on one process (batch size x accumulation)."""
        return self.data.batch_size * self.optim.accumulation


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_positive(cfg: TrainConfig, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        if value <= 0:
            raise ConfigError(f"{key} must be > 0; got {value}")


def _check_non_negative(cfg: TrainConfig, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        if value < 0:
            raise ConfigError(f"{key} must be >= 0; got {value}")


def _check_source(source: str) -> None:
    try:
        parse_source(source)  # the data layer's one parser; no data is touched
    except BoldGPTError as exc:
        raise ConfigError(f"data.source: {exc}") from exc


def _check_subjects(subjects: list[int | str] | None) -> list[int] | None:
    try:
        return normalize_subjects(subjects)
    except ValueError as exc:
        raise ConfigError(
            f"data.subjects={subjects!r}: {exc} (null = all subjects; e.g. [0, 1] or "
            "[subj01, subj02])"
        ) from exc


def _check_local_or_hub(cfg: TrainConfig, key: str) -> None:
    value = _get(cfg, key)
    if value is None or Path(value).exists():
        return
    if key == "model.init_from" and is_hub_id(value):
        return  # reachability is checked when the model is loaded
    raise ConfigError(f"{key}={value!r}: no such file or directory")


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply
    ``key=value`` overrides, and return a validated :class:`TrainConfig`."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        raw = loaded
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, where=where)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict (as read from YAML);
    ``where`` names its origin in error messages (a file name, ``"demo"``)."""
    node = OmegaConf.structured(TrainConfig)
    _merge_section(node, TrainConfig, raw, "", where)
    config = OmegaConf.to_object(node)
    assert isinstance(config, TrainConfig)
    return config.validate()


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically), loadable by :func:`load_config`."""
    with atomic_write(path, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], "3e-4")``: the dotted key, and the
    value parsed as YAML (the typed merge then makes ``"3e-4"`` a float)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(
            f"override {text!r}: expected key=value with a dotted key, e.g. optim.lr=3e-4"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # e.g. a glob like "blocks.*" with YAML-special characters
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` override set (nested dicts are
    created as needed; unknown keys are reported by :func:`config_from_dict`)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _did_you_mean(name: Any, choices: typing.Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _merge_section(node: DictConfig, cls: type, raw: Any, prefix: str, where: str) -> None:
    """Set the values of ``raw`` (a dict for the dataclass ``cls``) on its OmegaConf node,
    one field at a time so that an error names its key."""
    section = prefix.rstrip(".") or "the top level"
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: {section} must be a mapping of keys; got {type(raw).__name__} {raw!r}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}' in {section}; valid keys: "
                f"{', '.join(hints)}{_did_you_mean(key, hints)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _merge_section(node[key], tp, value, f"{prefix}{key}.", where)
            continue
        bad = ConfigError(
            f"{where}: {prefix}{key}={value!r} ({type(value).__name__}): expected "
            f"{_type_name(tp)}"
            + (
                _did_you_mean(value, typing.get_args(tp))
                if typing.get_origin(tp) is Literal
                else ""
            )
        )
        try:
            OmegaConf.update(node, key, _strict(value, tp, bad), merge=False)
        except OmegaConfBaseException:
            raise bad from None


def _strict(value: Any, tp: Any, bad: ConfigError) -> Any:
    """Where OmegaConf is more lenient than a config should be, or less: flags must be
    true/false (it reads 1 as true); integers may be written as integral floats (``1e4``,
    which it refuses)."""
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(options) == 1:
        tp = options[0]  # X | None
    if value is None:
        return value
    if tp is bool and not isinstance(value, bool):
        raise bad
    if (tp is str and not isinstance(value, str)) or (tp is float and isinstance(value, bool)):
        raise bad
    if tp is int and isinstance(value, float | str) and not isinstance(value, bool):
        number = _as_number(value)
        if number is None or not float(number).is_integer():
            raise bad
        return int(number)
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] is int:
        if not isinstance(value, list | tuple):
            raise bad
        return [_strict(v, int, bad) for v in value]
    return value


def _as_number(value: Any) -> float | None:
    try:
        return float(str(value).replace("_", ""))
    except ValueError:
        return None


def _type_name(tp: Any) -> str:
    """How a type hint reads in an error message: ``an integer``, ``a list of 2 numbers``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(item, _type_name(item))}"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )

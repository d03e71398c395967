"""Training checkpoints: atomic files, rotation, latest/best, and a compatibility check
before resuming.

A run's ``OUT_DIR/checkpoints/`` holds ``step-0000200.pt`` ... (the newest ``keep``),
``latest.pt`` (the newest) and ``best.pt`` (lowest validation loss so far). ``latest`` and
``best`` are hard links to a step file where the file system allows (no extra disk),
copies otherwise, and are replaced atomically, so a crash at any moment leaves a
loadable checkpoint. A write that runs out of disk space raises
:class:`~boldgpt.errors.DiskFullError` and leaves the previous files as they were; a
checkpoint found corrupt or truncated when resuming is skipped, with a warning, for the
newest one that reads (:meth:`CheckpointManager.latest`).

One training run at a time may write an ``OUT_DIR``: :func:`lock_run_dir` holds an
exclusive lock (``OUT_DIR/.lock``) for the run; a second run refuses to start.

A checkpoint is a dict saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (no code runs on load)::

    format, version, step, model (state dict), model_config, optimizer, scheduler,
    scaler, rng (one entry per process), data (sampler position), config (the run's
    config as a dict), best_val_loss, world_size, global_batch_size
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from boldgpt.errors import CheckpointError
from boldgpt.utils.io import atomic_write, file_lock, load_torch_file

CHECKPOINT_FORMAT = "boldgpt-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def rng_state() -> dict[str, Any]:
    """This process's random states (torch CPU and CUDA, numpy, python), as plain
    types and tensors so that ``torch.load(weights_only=True)`` reads them back."""
    # The legacy global numpy stream is what user/third-party code draws from.
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (with the format tag added) to ``path`` atomically."""
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # refuses pickles that would run code; names corrupt or truncated files
    state = load_torch_file(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a boldgpt training checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}); to start from a saved model use model.init_from"
        )
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state['version']}; this boldgpt reads up to "
            f"{CHECKPOINT_VERSION} (upgrade boldgpt)"
        )
    return state


def check_compatible(
    checkpoint: dict[str, Any],
    model: nn.Module,
    model_config: dict[str, Any] | None,
    where: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` can resume training of
    ``model``: same model config (name and overrides) and identical parameter and
    buffer names and shapes. The message lists what differs."""
    saved_config = checkpoint.get("model_config")
    if model_config is not None and saved_config is not None and saved_config != model_config:
        diffs = _dict_diff(saved_config, model_config)
        raise CheckpointError(
            f"cannot resume from {where}: it was trained with a different model "
            f"({'; '.join(diffs[:6])}). Use the same model settings, set "
            f"checkpoint.resume=no to start over, or use model.init_from for fine-tuning."
        )
    from boldgpt.models.registry import state_mismatches

    problems = state_mismatches(model.state_dict(), checkpoint["model"])
    if problems:
        raise CheckpointError(f"cannot resume from {where}: " + _head(problems, 8))


def warn_if_not_exact(checkpoint: dict[str, Any], world_size: int, global_batch: int) -> None:
    """Resuming with another process count or global batch works, but not bit-exactly."""
    if checkpoint.get("world_size", world_size) != world_size:
        warnings.warn(
            f"resuming a run of {checkpoint['world_size']} processes with {world_size}: "
            "random states are re-seeded, so it will not repeat the original run exactly",
            stacklevel=2,
        )
    if checkpoint.get("global_batch_size", global_batch) != global_batch:
        warnings.warn(
            f"resuming with global batch {global_batch} instead of "
            f"{checkpoint['global_batch_size']}",
            stacklevel=2,
        )


def _head(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}{k}"
            if k not in a:
                out.append(f"{key}: absent in checkpoint, {b[k]!r} now")
            elif k not in b:
                out.append(f"{key}: {a[k]!r} in checkpoint, absent now")
            else:
                out.extend(_dict_diff(a[k], b[k], key + "."))
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} in checkpoint, {b!r} now"]


class CheckpointManager:
    """Step checkpoints with rotation, plus ``latest.pt`` and ``best.pt``, in one folder."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    @property
    def latest_path(self) -> Path:
        return self.directory / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def step_path(self, step: int) -> Path:
        return self.directory / f"step-{step:07d}.pt"

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.iterdir() if _STEP_FILE.fullmatch(p.name)]
        return sorted(files, key=lambda p: int(_STEP_FILE.fullmatch(p.name).group(1)))

    def latest(self) -> Path | None:
        """The checkpoint to resume from, or None: ``latest.pt``, else the newest step
        file. A candidate that is corrupt or truncated (its zip structure or a CRC does
        not check) is skipped with a warning naming it, for the next older one."""
        candidates = [self.latest_path] if self.latest_path.is_file() else []
        candidates += self.step_files()[::-1]
        for path in candidates:
            problem = _damage(path)
            if problem is None:
                return path
            warnings.warn(
                f"skipping checkpoint {path}: {problem}; resuming from an older one",
                stacklevel=2,
            )
        return None

    def last_good_step_file(self) -> Path | None:
        """The newest step checkpoint that reads (for messages: "the last good
        checkpoint is ..."), or None; damaged ones are passed over silently."""
        return next((p for p in self.step_files()[::-1] if _damage(p) is None), None)

    def save(self, state: dict[str, Any], step: int, is_best: bool = False) -> Path:
        """Write the step file, point ``latest`` (and ``best`` if asked) at it, then
        delete step files beyond the newest ``keep``."""
        path = save_checkpoint(self.step_path(step), {"step": step, **state})
        _link_or_copy(path, self.latest_path)
        if is_best:
            _link_or_copy(path, self.best_path)
        for old in self.step_files()[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    def clear(self) -> None:
        """Remove every checkpoint of this folder (a fresh start)."""
        if self.directory.is_dir():
            for p in self.step_files() + [self.latest_path, self.best_path]:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def _damage(path: Path) -> str | None:
    """Why ``path`` cannot be a good checkpoint, or None. ``torch.save`` writes a zip
    with a CRC per entry: reading it through checks truncation and flipped bytes
    without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"it is truncated or not a torch file ({exc})"
    if bad is not None:
        return f"its entry {bad} is corrupt (CRC mismatch)"
    return None


@contextlib.contextmanager
def lock_run_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of a run directory (``OUT_DIR/.lock``) while the block
    runs: a second run on the same ``out_dir`` raises
    :class:`~boldgpt.errors.RunLockedError` at once, before it writes anything. The
    lock goes when the block ends or the process dies (nothing stale to clean up).
    Yields the lock file's path."""
    out_dir = Path(out_dir)
    path = out_dir / ".lock"
    with file_lock(path, blocking=False, what=f"run directory {out_dir}"):
        yield path


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        # e.g. a file system without hard links: fall back to a full copy
        with atomic_write(dst, "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        return
    os.replace(tmp, dst)

"""Training output: JSON-lines metrics, TensorBoard, optional Weights & Biases, and a
progress bar with loss, throughput and ETA.

Only the main process writes (``enabled=False`` elsewhere turns every method into a
no-op), so the loop can call the logger unconditionally.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from boldgpt.utils.io import atomic_write

LOG_FILE = "log.jsonl"


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file (a torn last line, from a crash, is skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_log(path: str | os.PathLike, after_step: int) -> None:
    """Drop records with ``step > after_step`` (written after the checkpoint a run
    resumes from; the resumed run writes them again)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_log(path) if r.get("step", 0) <= after_step]
    with atomic_write(path, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")


class RunLogger:
    """Writes metrics of a run to ``out_dir/log.jsonl``, TensorBoard (``out_dir/tb``)
    and optionally Weights & Biases, and drives the progress bar.

    Args:
        out_dir: the run directory.
        enabled: False on non-main processes (everything is skipped).
        tensorboard / wandb: which sinks to use besides the JSON lines.
        config: the run's config (dict), recorded by wandb.
        total_steps / initial_step: for the progress bar's ETA.
        progress: show a tqdm bar (only when enabled).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "boldgpt",
        config: dict[str, Any] | None = None,
        total_steps: int | None = None,
        initial_step: int = 0,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOG_FILE
        self._tb = None
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the run)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=initial_step)
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as exc:
                from boldgpt.errors import ConfigError

                raise ConfigError(
                    "log.wandb=true needs the wandb package: pip install 'boldgpt[wandb]'"
                ) from exc
            self._wandb = wandb_lib.init(
                project=wandb_project,
                name=self.out_dir.name,
                dir=str(self.out_dir),
                config=config,
                resume="allow",
            )
        if progress and total_steps:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def log(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
        """Record ``metrics`` (name -> number) at ``step`` under ``split``."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in metrics.items()}
        record = {"step": step, "split": split, "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numbers = {
            k: v for k, v in clean.items() if isinstance(v, int | float) and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in numbers.items()}, step=step)

    def figure(self, step: int, tag: str, path: str | os.PathLike) -> None:
        """Attach a PNG written by viz to TensorBoard / wandb."""
        if not self.enabled:
            return
        if self._tb is not None:
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"))
            self._tb.add_image(tag, image, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb as wandb_lib

            self._wandb.log({tag: wandb_lib.Image(str(path))}, step=step)

    def progress(self, step: int, **postfix: Any) -> None:
        """Move the bar to ``step`` and show ``postfix`` (e.g. loss, maps/s)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(
            {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
            refresh=False,
        )

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if not self._file.closed:
            self._file.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v

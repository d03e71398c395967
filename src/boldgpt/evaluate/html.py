"""``boldgpt report RUN_DIR``: one self-contained HTML page (and its Markdown twin) of a
training run: its config, training curves, every evaluation table with its baselines
and every figure, embedded as data URIs (the page opens anywhere, alone).

What it reads from ``RUN_DIR`` (each part is optional; at least one must exist):

- the training folder (``RUN_DIR`` itself, or ``RUN_DIR/train`` for a demo):
  ``config.yaml`` and ``log.jsonl`` (curves), the last ``figures/examples-*.png``;
- ``summary.json`` of ``boldgpt demo`` (its next-patch and completion tables and figures,
  through :mod:`boldgpt.evaluate.demo_report`);
- every ``eval.json`` written by ``boldgpt eval`` up to two folders below ``RUN_DIR``
  (tables and figures through :func:`boldgpt.evaluate.eval.add_eval_sections`).

The figures it draws itself (curves) go to ``RUN_DIR/report_figures/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from boldgpt.errors import DataError
from boldgpt.evaluate.report import Report

REPORT_NAME = "run_report"
"""Default file name (``run_report.html`` / ``.md``): the demo's own ``report.html`` in
the same folder is left alone."""


def training_dir(run_dir: Path) -> Path | None:
    """The folder holding ``log.jsonl`` / ``config.yaml``: ``run_dir`` or ``run_dir/train``."""
    for d in (run_dir, run_dir / "train"):
        if (d / "log.jsonl").exists() or (d / "config.yaml").exists():
            return d
    return None


def find_evals(run_dir: Path) -> list[Path]:
    """``eval.json`` files at most two folders below ``run_dir``, sorted."""
    found = [
        *run_dir.glob("eval.json"),
        *run_dir.glob("*/eval.json"),
        *run_dir.glob("*/*/eval.json"),
    ]
    return sorted(set(found))


def build_run_report(run_dir: str | os.PathLike, name: str = REPORT_NAME) -> tuple[Path, Path]:
    """Write ``run_dir/<name>.html`` and ``.md`` (see the module docstring); returns both.

    Raises DataError when ``run_dir`` holds none of the parts a report is made of."""
    from boldgpt.engine.logs import read_log
    from boldgpt.evaluate.eval import add_eval_sections

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    train_dir = training_dir(run_dir)
    summary_path = run_dir / "summary.json"
    evals = find_evals(run_dir)
    if train_dir is None and not summary_path.exists() and not evals:
        raise DataError(
            f"{run_dir} holds nothing to report: expected log.jsonl / config.yaml (a "
            "training run, or train/ of a demo), summary.json (boldgpt demo) or eval.json "
            "(boldgpt eval)"
        )
    report = Report(f"boldgpt run report: {run_dir.resolve().name}")
    fig_dir = run_dir / "report_figures"
    records = read_log(train_dir) if train_dir is not None else []
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    eval_results = [(p, json.loads(p.read_text())) for p in evals]

    report.text(
        "Contents: "
        + ", ".join(
            part
            for part, present in (
                ("configuration", train_dir is not None and (train_dir / "config.yaml").exists()),
                ("training curves", bool(records)),
                ("demo results", summary is not None),
                (f"{len(evals)} evaluation(s)", bool(evals)),
            )
            if present
        )
        + ". Every model number stands beside the baselines computed in the same run."
    )
    if records:
        report.heading("Training")
        _training_section(report, records, summary, eval_results, fig_dir)
    if summary is not None:
        _demo_sections(report, summary, run_dir)
    for path, result in eval_results:
        report.heading(f"Evaluation: {path.parent.relative_to(run_dir).as_posix() or '.'}")
        add_eval_sections(report, result, path.parent / "figures")
    if train_dir is not None:
        examples = sorted((train_dir / "figures").glob("examples-step*.png"))
        if examples:
            report.heading("During training")
            report.figure(examples[-1], f"Training examples ({examples[-1].stem})")
        config = train_dir / "config.yaml"
        if config.exists():
            report.heading("Configuration")
            report.text(f"`{config.relative_to(run_dir).as_posix()}`:")
            report.code(config.read_text())
    return report.write(run_dir, name)


def _baselines(summary: dict[str, Any] | None, evals: list[tuple[Path, dict]]) -> dict[str, float]:
    """Next-patch validation losses of the baselines (fixed order), for the curves."""
    if summary is not None and "next_patch" in summary:
        fixed = summary["next_patch"]["fixed"]
        return {f"{m} (fixed)": fixed[m]["loss"] for m in ("mean map", "MaskedPCA") if m in fixed}
    for _, result in evals:
        for entry in result.get("models", {}).values():
            fixed = entry.get("tasks", {}).get("next_patch", {}).get("fixed")
            if fixed:
                return {
                    f"{m} (fixed)": fixed[m]["loss"]
                    for m in ("mean map", "MaskedPCA")
                    if m in fixed and fixed[m].get("loss") is not None
                }
    return {}


def _training_section(
    report: Report,
    records: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    evals: list[tuple[Path, dict]],
    fig_dir: Path,
) -> None:
    from boldgpt.viz import train as viz

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    last = train[-1] if train else {}
    report.text(
        f"{len(train)} training log lines up to step {last.get('step', 0)}"
        + (f", last training loss {last['loss']:.4g}" if "loss" in last else "")
        + (
            f"; {len(val)} validation evaluations, last loss {val[-1]['loss']:.4g}"
            if val and "loss" in val[-1]
            else ""
        )  # fmt: skip
        + "."
    )
    baselines = _baselines(summary, evals)
    fig = viz.loss_curves_figure(records, baselines, title="Training and validation loss")
    report.figure(viz.save(fig, _mkdir(fig_dir) / "loss.png"), "Training and validation loss" + (
        ", with the baselines' validation losses" if baselines else ""))  # fmt: skip
    extra = sorted(
        {
            k
            for r in val
            for k, v in r.items()
            if k not in ("step", "split", "time", "loss", "best_loss")
            and isinstance(v, int | float)
            and math.isfinite(v)
        }
    )
    if extra:
        report.figure(
            viz.save(_metrics_figure(val, extra), fig_dir / "val_metrics.png"),
            "Validation metrics logged during training: " + ", ".join(extra),
        )


def _metrics_figure(val: list[dict[str, Any]], keys: list[str]) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in val if isinstance(r.get(key), int | float)]
        ax.plot(*zip(*pts), "o-", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _demo_sections(report: Report, summary: dict[str, Any], run_dir: Path) -> None:
    from boldgpt.evaluate.demo_report import _completion_section, _next_patch_section

    report.heading("Demo")
    report.text(
        f"`boldgpt demo`: `{summary.get('model')}` trained {summary.get('trained_steps')} "
        f"steps on `{summary.get('source')}` (seed {summary.get('seed')}); scores on "
        f"{summary.get('num_eval_maps')} validation maps."
    )
    fig = run_dir / "figures"
    if "next_patch" in summary:
        _next_patch_section(report, summary)
    if "completion_r2" in summary:
        _completion_section(report, summary, fig)
    for name, caption in (
        ("samples.png", "Real validation maps (top) and model samples"),
        ("pca.png", "The MaskedPCA baseline: mean map and leading components"),
    ):
        if (fig / name).exists():
            report.figure(fig / name, caption)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

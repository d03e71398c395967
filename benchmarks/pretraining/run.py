"""The value of pretraining (issue 11): does starting a downstream model from a
pretrained map model help it, and by how much with little paired data?

For each downstream family (CBIP: retrieval among min(300, held-out stimuli) candidates
and a 24-way linear probe of its BOLD embeddings; image2bold: encoding r), the same run
(``configs/<family>_micro.yaml``, a fixed number of steps, one thread) is trained

- from scratch, or with its BOLD side initialized from a pretrained boldGPT or BEiT map
  model (``model.init_from``),
- on 10% or 100% of the paired training trials (``data.train_fraction``; the subset is
  drawn with the run's seed),
- with seeds 0 and 1,

and all of a family's models are scored together by ``boldgpt eval`` on the validation
split (the baselines once, in the same run). Outputs in ``--out``: ``results.json`` (every
run's numbers, commands and times) and ``table.md`` (mean and spread over seeds); in
``--work``, beside the runs, ``report-<families>.html`` (self-contained) with that table
and every ``boldgpt eval`` table and figure (baselines, the 24-way probe)::

    python benchmarks/pretraining/run.py --encoder runs/imagebeit_micro/model \\
        --boldgpt runs/demo/train/model --beit runs/boldbeit_demo/model \\
        --out benchmarks/pretraining/results

The map models must read the same mask and patch size as the downstream models (the
defaults of ``boldgpt demo`` and ``configs/boldbeit_demo.yaml`` do). Finished runs are
reused; ``--families`` / ``--inits`` / ``--fractions`` / ``--seeds`` pick part of the grid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"cbip": "configs/cbip_micro.yaml", "image2bold": "configs/image2bold_micro.yaml"}
METRICS: dict[str, dict[str, tuple[str, ...]]] = {
    "cbip": {
        "retrieval top-1 map->image (min(300, stimuli)-way)": (
            "retrieval",
            "mean",
            "model",
            "map_to_image",
        ),
        "retrieval top-1 image->map (min(300, stimuli)-way)": (
            "retrieval",
            "mean",
            "model",
            "image_to_map",
        ),
        "24-way probe, within subject": ("probe", "within", "linear probe (model)", "accuracy"),
    },
    "image2bold": {
        "encoding r (mean over pixels)": ("encoding", "mean", "model", "r_mean"),
        "encoding r vs noiseless truth": ("encoding", "mean", "model", "r_truth_mean"),
    },
}


def run_name(family: str, init: str, fraction: float, seed: int) -> str:
    return f"{family}-{init}-{round(fraction * 100)}pct-seed{seed}"


def train(family: str, init: str, fraction: float, seed: int, args: Any) -> dict[str, Any]:
    """Train one run (or reuse it when its model exists); returns its record."""
    out = args.work / run_name(family, init, fraction, seed)
    overrides = [
        f"out_dir={out}",
        f"seed={seed}",
        f"data.train_fraction={fraction}",
        f"model.kwargs.image_encoder={args.encoder}",
        f"train.max_steps={args.steps}",
        f"optim.warmup_steps={max(1, args.steps // 10)}",
        "train.threads=1",
        "log.progress=false",
        "log.tensorboard=false",
        f"log.figures_every={args.steps}",
    ]
    if init != "scratch":
        overrides.append(f"model.init_from={getattr(args, init)}")
    cmd = [sys.executable, "-m", "boldgpt", "train", CONFIGS[family], *overrides]
    record = {"family": family, "init": init, "fraction": fraction, "seed": seed}
    record.update(model=str(out / "model"), command=" ".join(cmd[1:]))
    if (out / "model" / "config.json").exists():
        record["train_s"] = json.loads((out / "record.json").read_text())["train_s"]
        return record
    print(f"training {out.name}", flush=True)
    start = time.time()
    with open(args.work / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    record["train_s"] = round(time.time() - start, 1)
    (out / "record.json").write_text(json.dumps(record, indent=1))
    return record


def evaluate(family: str, records: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    """Score all models of a family in one ``boldgpt eval`` run; returns its eval.json."""
    out = args.work / f"eval-{family}"
    cmd = [sys.executable, "-m", "boldgpt", "eval", *[r["model"] for r in records]]
    cmd += ["--out", str(out), "--threads", "1"] + (["--probe"] if family == "cbip" else [])
    print(f"evaluating {len(records)} {family} models", flush=True)
    start = time.time()
    with open(args.work / f"eval-{family}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    result = json.loads((out / "eval.json").read_text())
    result["eval_s"] = round(time.time() - start, 1)
    return result


def lookup(tree: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if tree is not None else None


HEADERS = ("family", "metric", "init", "paired trials", "mean", "seeds (values)")


def table_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (family, metric, init, fraction): mean ± spread over seeds."""
    rows = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["family"], r["init"], r["fraction"]), []).append(r)
    for family, metrics in METRICS.items():
        for metric in metrics:
            for (fam, init, fraction), rs in sorted(groups.items(), key=lambda kv: kv[0]):
                if fam != family:
                    continue
                # a seed without this score (its evaluation lacked it) is shown, not averaged
                scored = [(r["seed"], r["scores"].get(metric)) for r in rs]
                values = [v for _, v in scored if v is not None]
                if not values:
                    continue
                spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
                seeds = ", ".join(
                    f"{seed}: " + ("n/a" if v is None else f"{v:.4f}") for seed, v in scored
                )
                rows.append(
                    [family, metric, init, f"{round(fraction * 100)}%",
                     f"{statistics.mean(values):.4f}{spread}", seeds]
                )  # fmt: skip
    return rows


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown form of :func:`table_rows`."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    return "\n".join(lines) + "\n"


def write_report(records: list[dict[str, Any]], evals: dict[str, dict], args: Any) -> Path:
    """``report-<families>.html`` (self-contained) and ``.md`` in ``--work``: the table above,
    then every family's ``boldgpt eval`` tables (baselines, the 24-way probe) and figures."""
    from boldgpt.evaluate.eval import add_eval_sections
    from boldgpt.evaluate.report import Report

    report = Report("Does pretraining on maps help?")
    report.text(
        f"Each downstream model trained {args.steps} steps from scratch or from a pretrained "
        f"map model (boldGPT `{args.boldgpt}`, BEiT `{args.beit}`), on a fraction of the "
        f"paired training trials, with seeds {args.seeds}; frozen image encoder "
        f"`{args.encoder}`. Commands and times: `results.json` in `{args.out}`."
    )
    report.table(HEADERS, table_rows(records), caption="Mean ± sd over seeds")
    for family, result in evals.items():
        report.heading(f"Evaluation of every {family} model")
        add_eval_sections(report, result, args.work / f"eval-{family}" / "figures")
    _, page = report.write(args.work, "report-" + "-".join(evals))
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="frozen image encoder (model dir)")
    parser.add_argument("--boldgpt", help="pretrained boldGPT model directory")
    parser.add_argument("--beit", help="pretrained BEiT model directory")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/pretraining/results")
    parser.add_argument("--work", type=Path, default=REPO / "runs/pretraining")
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--families", default="cbip,image2bold")
    parser.add_argument("--inits", default="scratch,boldgpt,beit")
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    inits = args.inits.split(",")
    for init in inits:
        if init != "scratch" and not getattr(args, init, None):
            parser.error(f"--inits has {init!r}: give its model directory with --{init}")
    records, evals = [], {}
    for family in args.families.split(","):
        done = [
            train(family, init, float(f), int(s), args)
            for init in inits
            for f in args.fractions.split(",")
            for s in args.seeds.split(",")
        ]
        result = evals[family] = evaluate(family, done, args)
        for r in done:
            tasks = result["models"][r["model"]]["tasks"]
            r["scores"] = {m: lookup(tasks, p) for m, p in METRICS[family].items()}
            r["eval_s"] = result["eval_s"]
        records += done
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"steps": args.steps, "encoder": args.encoder, "runs": records}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(table(records))
    print(table(records))
    print(f"report: {write_report(records, evals, args)}")


if __name__ == "__main__":
    main()

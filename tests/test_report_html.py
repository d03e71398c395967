"""``boldgpt report RUN_DIR``: the page holds the config, the curves, every evaluation
table with its baselines and every figure, embedded; and it renders in headless
Chromium with every image loaded and no console error (where Chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from boldgpt.cli import main
from boldgpt.errors import DataError
from boldgpt.evaluate.html import build_run_report
from boldgpt.evaluate.report import format_number

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected into a copy of the page: counts the images that decoded and the errors that
# reached the console, and writes both into the title that --dump-dom returns.
CHECKER = """<script>
var errors = 0;
window.addEventListener('error', function () { errors += 1; }, true);
var original = console.error;
console.error = function () { errors += 1; original.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.title = 'IMAGES ' + ok + '/' + imgs.length + ' ERRORS ' + errors;
});
</script>"""

ENCODING = {
    "model": {"r_mean": 0.4321, "r_median": 0.4111, "r2_map_mean": 0.1234, "nc_median": 61.5},
    "ridge (image features)": {"r_mean": 0.2468, "r_median": 0.2222, "r2_map_mean": 0.0555},
    "noiseless truth": {"r_mean": 0.7531, "r_median": 0.7, "r_truth_mean": 1.0},
}
NEXT_PATCH = {
    kind: {
        "model": {"loss": 0.5123, "mse": 0.5123, "r2": 0.4877},
        "mean map": {"loss": 0.9876, "mse": 0.9876, "r2": 0.0124},
        "MaskedPCA": {"loss": 0.6543, "mse": 0.6543, "r2": 0.3457},
    }
    for kind in ("fixed", "random")
}


def _figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(0).normal(size=(10, 10)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def make_run(root: Path) -> Path:
    """A training run as the trainer and `boldgpt eval` leave it, written by hand."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("seed: 0\nmodel:\n  name: boldgpt_micro_patch10 # <&>\n")
    lines = [{"step": s, "split": "train", "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 11)]
    lines += [{"step": s, "split": "val", "loss": 1.2 / s, "r2": 0.1 * s} for s in (5, 10)]
    (root / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ev = root / "eval-val"
    _figure(ev / "figures" / "encoding_r.png")
    result = {
        "source": "sim:demo",
        "split": "val",
        "seed": 1234,
        "counts": {
            "eval_maps": 120,
            "eval_stimuli": 30,
            "subjects": [0, 1],
            "train_maps": 400,
            "pca_components": 16,
        },  # fmt: skip
        "models": {
            "runs/x/model": {
                "name": "image2bold_micro_patch10",
                "class": "Image2BOLD",
                "tasks": {"encoding": {"mean": ENCODING}, "next_patch": NEXT_PATCH},
                "figures": ["encoding_r.png"],
            }
        },
    }
    (ev / "eval.json").write_text(json.dumps(result))
    return root


def test_report_holds_config_curves_tables_and_embedded_figures(tmp_path):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    page = (run / "run_report.html").read_text()
    # every evaluation number beside its baselines, as the tables format them
    for row in ENCODING.values():
        for value in row.values():
            assert f"<td>{format_number(value)}</td>" in page
    for method in ("model", "mean map", "MaskedPCA"):
        assert f"<td>{format_number(NEXT_PATCH['fixed'][method]['r2'])}</td>" in page
    assert "ridge (image features)" in page and "noiseless truth" in page
    # the config verbatim (escaped), the curves and the evaluation figure, all embedded
    assert "name: boldgpt_micro_patch10 # &lt;&amp;&gt;" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3  # loss curves, validation r2, encoding map
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert (run / "report_figures" / "loss.png").exists()
    assert (run / "report_figures" / "val_metrics.png").exists()
    md = (run / "run_report.md").read_text()
    assert "eval-val/figures/encoding_r.png" in md


def test_report_refuses_folders_with_nothing_to_report(tmp_path):
    with pytest.raises(DataError, match="holds nothing to report"):
        build_run_report(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_run_report(tmp_path / "missing")


def _render(page: Path) -> tuple[str, str]:
    """(title after load, console lines) of ``page`` with the checker injected."""
    checked = page.with_name("checked_" + page.name)
    checked.write_text(page.read_text().replace("<head>", "<head>" + CHECKER, 1))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    title = re.search(r"<title>([^<]*)</title>", proc.stdout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return (title.group(1) if title else ""), "\n".join(console)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run(tmp_path / "run")
    _, page = build_run_report(run)
    title, console = _render(page)
    assert title == "IMAGES 3/3 ERRORS 0", (title, console)
    assert console == ""
    # the check can fail: a broken image and a script error are both seen
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        '<img src="data:image/png;base64,AAAA"><script>undefinedFunction();</script>'
        "</body></html>"
    )
    title, console = _render(bad)
    assert title == "IMAGES 0/1 ERRORS 2"  # the image's error event and the script's
    assert "undefinedFunction" in console


def test_report_of_a_demo_folder_shows_its_tables_and_figures(tmp_path):
    run = tmp_path / "demo"
    make_run(run / "train")
    scores = {"model": {"loss": 0.5795, "r2": 0.4193}, "mean map": {"loss": 0.9982, "r2": -0.0004},
              "MaskedPCA": {"loss": 0.6128, "r2": 0.3859}}  # fmt: skip
    completion = {"model (query)": 0.0204, "model (autoregressive)": 0.0523,
                  "MaskedPCA": 0.181, "mean map": -0.0012}  # fmt: skip
    summary = {
        "source": "sim:demo", "seed": 0, "model": "boldgpt_micro_patch10", "trained_steps": 1400,
        "num_eval_maps": 512, "num_completion_maps": 128, "pca_components": 128,
        "pca_fit_maps": 4000, "next_patch": {"fixed": scores, "random": scores},
        "completion_r2": {"left": completion, "prefix": completion},
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    for name in ("completions_left", "completions_prefix", "samples", "pca"):
        _figure(run / "figures" / f"{name}.png")
    _, page_path = build_run_report(run)
    page = page_path.read_text()
    for value in completion.values():
        assert f"<td>{format_number(value)}</td>" in page
    assert f"<td>{format_number(scores['MaskedPCA']['loss'])}</td>" in page
    # loss and validation-r2 curves + the demo's four figures + the evaluation's map
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 7 and all(s.startswith("data:image/png;base64,") for s in images)
    # the demo's own report.html is not overwritten
    assert page_path.name == "run_report.html"

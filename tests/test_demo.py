"""The README demo pipeline end to end (data -> train -> baselines -> evaluation ->
generation -> report) on a tiny NSD-Flat-format dataset, with the mean-map baseline
checked against an independent numpy computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boldgpt.evaluate.demo import run_demo
from boldgpt.evaluate.report import format_number
from nsd_tiny import build_tiny_nsd


@pytest.mark.slow
def test_demo_pipeline_on_tiny_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLDGPT_HOME", str(tmp_path / "home"))
    tiny = build_tiny_nsd(
        tmp_path / "nsd", with_mask=True, sessions=3, trials_per_session=24, train_shards=1
    )
    out = tmp_path / "demo"
    summary = run_demo(
        out,
        source=str(tiny.root),
        steps=3,
        eval_maps=10_000,  # all validation maps, in dataset order
        pca_maps=40,
        components=4,
        num_examples=2,
        device="cpu",
        image_steps={"encoder": 2, "image2bold": 2, "cbip": 2},
    )

    # the mean-map baseline, recomputed from what the dataset builder wrote
    shared = tiny.column("train", "shared1000")
    z = tiny.maps["train"].astype(np.float64) * 5 / 255 - 2.5
    train, val = z[~shared][:, tiny.mask], z[shared][:, tiny.mask]
    expected = np.mean((val - train.mean(axis=0)) ** 2)
    fixed = summary["next_patch"]["fixed"]
    assert fixed["mean map"]["loss"] == pytest.approx(expected, rel=1e-4)
    assert summary["num_eval_maps"] == len(val) and summary["num_train_maps"] == len(train)
    assert summary["trained_steps"] == 3

    # every reported loss is finite, both orders were scored
    for kind in ("fixed", "random"):
        for method in ("model", "mean map", "MaskedPCA"):
            assert np.isfinite(summary["next_patch"][kind][method]["loss"])
    # both prompts completed by both model methods and both baselines
    methods = {"model (query)", "model (autoregressive)", "MaskedPCA", "mean map"}
    for how in ("left", "prefix"):
        assert set(summary["completion_r2"][how]) == methods
        assert all(np.isfinite(v) for v in summary["completion_r2"][how].values())
    assert summary["num_completion_maps"] == min(128, len(val))

    # the report shows the numbers of summary.json and embeds its figures
    assert json.loads((out / "summary.json").read_text()) == summary
    md = (out / "report.md").read_text()
    for method in ("model", "mean map", "MaskedPCA"):
        assert format_number(fixed[method]["loss"]) in md
    for method in methods:
        assert format_number(summary["completion_r2"]["prefix"][method]) in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    for name in ("samples", "completions_left", "completions_prefix", "loss", "pca"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert (out / "train" / "model" / "model.safetensors").exists()
    # one MaskedPCA for both sides: the image side fitted it first (while the boldGPT
    # trained) and scored its retrieval baseline with the same file
    assert (out / "pca.safetensors").exists()
    assert "fitting the MaskedPCA baseline" in (out / "images" / "log.txt").read_text()

    # the image side trained its three models for the steps asked, and the report and
    # summary show its encoding and retrieval numbers beside their baselines
    images = json.loads((out / "images" / "eval.json").read_text())
    for name in ("encoder", "image2bold", "cbip"):
        log = (out / "images" / name / "log.jsonl").read_text().splitlines()
        assert max(json.loads(row)["step"] for row in log) == 2
    assert images["counts"]["pca_file"] == str(out / "pca.safetensors")
    assert images["counts"]["pca_components"] == summary["pca_components"] == 4
    kinds = sorted(m["class"] for m in images["models"].values())
    assert kinds == ["CBIP", "Image2BOLD"]
    enc = summary["images"]["encoding"]
    assert {"model", "ridge (image features)"} <= set(enc)
    ret = summary["images"]["retrieval"]
    assert {"model", "chance", "identification: ridge encoding (image features -> map)"} <= set(ret)
    (i2b,) = [m for m in images["models"].values() if m["class"] == "Image2BOLD"]
    assert enc["model"]["r_mean"] == i2b["tasks"]["encoding"]["mean"]["model"]["r_mean"]
    assert "Encoding and retrieval" in md
    assert format_number(ret["model"]["map_to_image"]) in md
    assert format_number(enc["ridge (image features)"]["r_mean"]) in md

    # the trained model completes maps from the command line: the observed patches are
    # kept, the hidden ones filled in
    from boldgpt.cli import main

    gen = tmp_path / "gen"
    args = ["generate", str(out / "train" / "model"), "--complete", "--observe", "left",
            "--num", "3", "--source", str(tiny.root), "--out", str(gen),
            "--subjects", "subj02"]  # fmt: skip
    assert main(args) == 0
    real, done = np.load(gen / "real.npy"), np.load(gen / "completions.npy")
    observed = np.load(gen / "observed.npy") & tiny.mask
    assert real.shape == done.shape == (3, 215, 200)
    np.testing.assert_allclose(done[observed], real[observed], atol=1e-6)
    assert not np.allclose(done[~observed & tiny.mask], real[~observed & tiny.mask])

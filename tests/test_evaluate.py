"""Evaluation metrics, baselines and reports, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boldgpt.evaluate import metrics, tasks
from boldgpt.evaluate.report import Report, format_number
from boldgpt.patching import MaskedPatchify


def test_masked_mse_and_r2_by_hand():
    target = torch.tensor([[[1.0, 2.0], [3.0, 100.0]]])  # (B=1, N=2, P=2)
    pred = torch.tensor([[[1.5, 2.0], [2.0, -7.0]]])
    pixel_mask = torch.tensor([[True, True], [True, False]])  # the 100 is outside
    # in-mask values 1, 2, 3 (mean 2): SSE = 0.25 + 0 + 1, SST = 1 + 0 + 1
    assert metrics.masked_mse(pred, target, pixel_mask) == pytest.approx(1.25 / 3)
    assert metrics.masked_r2(pred, target, pixel_mask) == pytest.approx(1 - 1.25 / 2)


def test_sums_pool_over_batches():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    s = metrics.Sums()
    for b in range(2):
        s.add(torch.from_numpy(p[b : b + 1]), torch.from_numpy(y[b : b + 1]), torch.ones(5, 3))
    assert s.mse == pytest.approx(np.mean((p - y) ** 2))
    assert s.r2 == pytest.approx(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))


def test_token_metrics_and_unigram():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    tokens = torch.tensor([0, 2])
    m = metrics.token_metrics(logits, tokens)
    assert m["nll"] == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    assert m["accuracy"] == pytest.approx(0.5)
    # counts (+1 smoothing) of [0, 0, 1] over 3 tokens: 3, 2, 1 -> p = 1/2, 1/3, 1/6
    nll = metrics.unigram_nll(torch.tensor([0, 0, 1]), torch.tensor([0, 2]), vocab_size=3)
    assert nll == pytest.approx(-(math.log(1 / 2) + math.log(1 / 6)) / 2)


def test_orders_are_shared_per_batch_and_reproducible():
    fixed = metrics.make_orders("fixed", 10, 6, batch_size=4)
    assert [len(o) for o in fixed] == [4, 4, 2]
    assert all(torch.equal(o, torch.arange(6).expand(len(o), -1)) for o in fixed)
    rand = metrics.make_orders("random", 10, 6, seed=3, batch_size=4)
    assert all(torch.equal(o.sort(1).values, torch.arange(6).expand(len(o), -1)) for o in rand)
    assert all(bool((o == o[:1]).all()) for o in rand)  # one order per batch
    assert not torch.equal(rand[0][0], rand[1][0])
    again = metrics.make_orders("random", 10, 6, seed=3, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(rand, again))
    with pytest.raises(ValueError, match="'fixed' or 'random'"):
        metrics.make_orders("radial", 10, 6)


def small_mask() -> np.ndarray:
    mask = np.zeros((215, 200), bool)
    mask[60:140, 40:160] = True
    mask[100:140, 40:80] = False
    return mask


def test_mean_map_baseline_matches_numpy():
    mask = small_mask()
    rng = np.random.default_rng(1)
    train = rng.normal(size=(20, 215, 200)).astype(np.float32)
    val = rng.normal(loc=0.3, size=(7, 215, 200)).astype(np.float32)
    mean = metrics.mean_map(torch.from_numpy(train).split(6))
    np.testing.assert_allclose(mean.numpy(), train.mean(0), atol=1e-6)
    p = MaskedPatchify(mask, 10)
    scores = metrics.mean_map_scores(mean, torch.from_numpy(val), p)
    resid = (val - train.mean(0))[:, mask]
    assert scores["loss"] == pytest.approx(np.mean(resid**2), rel=1e-5)
    y = val[:, mask]
    assert scores["r2"] == pytest.approx(1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2))


def test_model_scores_equal_the_models_own_loss():
    """Pooled over batches of equal maps, the score is the model's loss on the whole set
    in the same orders (computed here in one forward pass)."""
    import boldgpt

    mask = small_mask()
    torch.manual_seed(0)
    model = boldgpt.create_model(
        "boldgpt_micro_patch10", mask=mask, embed_dim=32, depth=1, num_heads=2
    ).eval()
    maps = torch.randn(6, 215, 200)
    sids = torch.tensor([0, 1, 2, 0, 1, 2])
    orders = metrics.make_orders("random", 6, model.num_patches, seed=2, batch_size=4)
    scores = metrics.model_next_patch_scores(model, maps, sids, orders, batch_size=4)
    with torch.no_grad():
        out = model({"activity": maps, "subject_id": sids}, order=torch.cat(orders))
    assert scores["loss"] == pytest.approx(float(out.loss), rel=1e-5)
    assert scores["mse"] == scores["loss"]


def test_report_tables_ratios_differences_and_html(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    (tmp_path / "figs").mkdir()
    fig.savefig(tmp_path / "figs" / "a.png")
    plt.close(fig)

    r = Report("Demo <test>")
    r.comparison("losses", {"fixed": {"model": 0.5, "mean map": 1.0, "PCA": 0.6}}, "model")
    r.comparison("R2", {"fixed": {"model": 0.3, "PCA": 0.35}}, "model", relation="difference")
    r.text("see **this** and `code`")
    r.figure(tmp_path / "figs" / "a.png", "a caption")
    md_path, html_path = r.write(tmp_path)
    md = md_path.read_text()
    assert "| fixed | 0.5 | 1 | 0.6 | 2.00x | 1.20x |" in md
    assert "|  | model | PCA | model - PCA |" in md
    assert "| fixed | 0.3 | 0.35 | -0.050 |" in md
    assert "![a caption](figs/a.png)" in md
    html = html_path.read_text()
    assert "<h1>Demo &lt;test&gt;</h1>" in html
    assert "<b>this</b>" in html and "<code>code</code>" in html
    assert html.count("data:image/png;base64,") == 1


def test_format_number():
    assert format_number(12345) == "12,345"
    assert format_number(0.123456) == "0.1235"
    assert format_number(0.0001234) == "1.23e-04"
    assert format_number(None) == ""


def test_prompts_observe_the_expected_patches():
    p = MaskedPatchify(small_mask(), 10)
    n = p.num_patches
    k = math.ceil(0.3 * n)
    prefix = tasks.observed_patches(p, 3, "prefix", 0.3)
    assert prefix.shape == (3, n) and prefix.dtype == torch.bool
    assert prefix[:, :k].all() and not prefix[:, k:].any()  # the first 30% of the order
    rand = tasks.observed_patches(p, 4, "random", 0.3, seed=1)
    assert (rand.sum(1) == k).all() and not torch.equal(rand[0], rand[1])
    assert torch.equal(rand, tasks.observed_patches(p, 4, "random", 0.3, seed=1))
    left = tasks.observed_patches(p, 2, "left")
    right = tasks.observed_patches(p, 2, "right")
    assert torch.equal(left, ~right) and left.any() and right.any()
    # every observed pixel of the left prompt lies left of every one of the right prompt
    # (columns of the mask's pixels in observed patches)
    cols = torch.arange(200).expand(215, 200)
    left_px = tasks.observed_pixels(p, left)[0] & torch.from_numpy(small_mask())
    right_px = tasks.observed_pixels(p, right)[0] & torch.from_numpy(small_mask())
    assert cols[left_px].max() < cols[right_px].min()
    with pytest.raises(ValueError, match="fraction must be in"):
        tasks.observed_patches(p, 1, "prefix", 1.5)
    with pytest.raises(ValueError, match="unknown prompt 'top'"):
        tasks.observed_patches(p, 1, "top")


def test_completion_scores_keep_the_prompt_and_score_hidden_pixels():
    import boldgpt
    from boldgpt.models.pca import MaskedPCA

    mask = small_mask()
    torch.manual_seed(0)
    model = boldgpt.create_model(
        "boldgpt_micro_patch10", mask=mask, embed_dim=32, depth=1, num_heads=2
    ).eval()
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.normal(size=(5, 215, 200)).astype(np.float32))
    train = torch.from_numpy(rng.normal(size=(40, 215, 200)).astype(np.float32))
    pca = MaskedPCA(mask, 4).fit(train, seed=0)
    mean = train.mean(0)
    observed = tasks.observed_patches(model.patchify, len(maps), "left")
    r2, done = tasks.completion_scores(
        model, maps, torch.zeros(5, dtype=torch.long), observed, pca=pca, mean_map=mean
    )
    assert set(r2) == {"model (query)", "model (autoregressive)", "MaskedPCA", "mean map"}
    obs_px = tasks.observed_pixels(model.patchify, observed).numpy() & mask
    hidden = ~tasks.observed_pixels(model.patchify, observed).numpy() & mask
    y = maps.numpy()[hidden]
    for name, completion in done.items():
        assert completion.shape == maps.shape
        np.testing.assert_allclose(completion.numpy()[obs_px], maps.numpy()[obs_px], atol=1e-6)
        pred = completion.numpy()[hidden]
        expected = 1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)
        assert r2[name] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(done["mean map"].numpy()[hidden], np.broadcast_to(
        mean.numpy(), maps.shape)[hidden], atol=1e-6)  # fmt: skip

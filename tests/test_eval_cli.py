"""``boldgpt eval``: the tasks each model class gets, its numbers against direct
computations on the data (read by another path than the code under test), the
baselines against their own modules, and the ridge fits on known linear problems."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from boldgpt.cli import main
from boldgpt.errors import ConfigError
from boldgpt.evaluate import metrics
from boldgpt.evaluate.eval import fit_ridge, per_pixel_ols, tasks_for
from boldgpt.evaluate.report import format_number
from boldgpt.models.pca import MaskedPCA
from boldgpt.models.registry import create_model, save_model
from boldgpt.utils.threads import cpu_threads
from nsd_tiny import build_tiny_nsd
from sim_data import ci_dataset

SMALL = dict(depth=1, embed_dim=32, num_heads=2, num_subjects=2)
SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread when other processes load the
    cores (two spin-waiting threads took 1.7 s per training step instead of 0.03 s)."""
    from threadpoolctl import threadpool_limits

    with cpu_threads(1), threadpool_limits(1):  # torch, and numpy / scikit-learn's BLAS
        yield


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private BOLDGPT_HOME whose sim:ci is the session's simulated ci dataset."""
    root = tmp_path_factory.mktemp("home")
    (root / "sim").mkdir()
    os.symlink(ci_dataset(tmp_path_factory), root / "sim" / "ci-seed0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOLDGPT_HOME", str(root))
        yield root


def _z(raw: np.ndarray) -> np.ndarray:
    """uint8 maps -> z-values, NSD-Flat's dequantization written out by hand."""
    return raw.astype(np.float64) * 5 / 255 - 2.5


def _trained_igpt(maps: torch.Tensor, sids: torch.Tensor, mask: np.ndarray, steps: int = 15):
    torch.manual_seed(0)
    model = create_model("boldgpt_micro_patch10", mask=mask, **SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        idx = torch.arange(step * 8, step * 8 + 8) % len(maps)
        loss = model({"activity": maps[idx], "subject_id": sids[idx]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_next_patch_and_masked_scores_match_direct_computations(tmp_path, home, capsys):
    tiny = build_tiny_nsd(
        tmp_path / "nsd", with_mask=True, subjects=(0, 1), sessions=3, trials_per_session=24
    )
    shared = tiny.column("train", "shared1000")
    z = _z(tiny.maps["train"])
    train_z, val_z = z[~shared], z[shared]
    train_sid = tiny.column("train", "subject_id")[~shared]
    val_sid = tiny.column("train", "subject_id")[shared]
    igpt = _trained_igpt(torch.tensor(train_z, dtype=torch.float32), torch.tensor(train_sid),
                         tiny.mask)  # fmt: skip
    torch.manual_seed(1)
    beit = create_model("boldbeit_micro_patch10", mask=tiny.mask, **SMALL)
    dirs = [str(save_model(igpt, tmp_path / "igpt" / "model")),
            str(save_model(beit, tmp_path / "beit" / "model"))]  # fmt: skip
    out = tmp_path / "eval"
    args = ["eval", *dirs, "--source", str(tiny.root), "--split", "val", "--out", str(out),
            "--train-maps", "1000", "--components", "4", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["counts"]["eval_maps"] == len(val_z)
    assert result["counts"]["train_maps"] == len(train_z)  # all of them: < 1000
    igpt_res, beit_res = (result["models"][d] for d in dirs)
    assert (igpt_res["class"], list(igpt_res["tasks"])) == ("IGPT", ["next_patch"])
    assert (beit_res["class"], list(beit_res["tasks"])) == ("BEiT", ["masked"])

    # the model's fixed-order R²: its own forward pass, pooled over in-mask pixels
    fixed = igpt_res["tasks"]["next_patch"]["fixed"]
    with torch.no_grad():
        x = torch.tensor(val_z, dtype=torch.float32)
        o = igpt({"activity": x, "subject_id": torch.tensor(val_sid)}, order="fixed")
    pm = igpt.patchify.patch_mask.numpy()
    pred, target = o.output.numpy()[:, pm], o.patches.numpy()[:, pm]
    direct = 1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum()
    assert fixed["model"]["r2"] == pytest.approx(direct, abs=1e-5)
    # a trained model's loss is below the untrained level (z-values have variance ~1)
    assert fixed["model"]["loss"] < fixed["mean map"]["loss"] + 0.05

    # the mean-map baseline: the mean training map, R² over the in-mask validation pixels
    m = tiny.mask
    mean_pred = train_z.mean(0)[m]
    v = val_z[:, m]
    mean_r2 = 1 - ((v - mean_pred) ** 2).sum() / ((v - v.mean()) ** 2).sum()
    assert fixed["mean map"]["r2"] == pytest.approx(mean_r2, abs=1e-6)

    # MaskedPCA: the same fit scored by evaluate.metrics in the same order
    pca = MaskedPCA(m, 4).fit(torch.tensor(train_z, dtype=torch.float32), seed=0)
    orders = metrics.make_orders("fixed", len(v), igpt.num_patches, seed=1234)
    ref = metrics.pca_next_patch_scores(pca, x, igpt.patchify, orders)
    assert fixed["MaskedPCA"]["r2"] == pytest.approx(ref["r2"], rel=1e-3)
    assert set(igpt_res["tasks"]["next_patch"]) == {"fixed", "random"}

    masked = beit_res["tasks"]["masked"]["random 50% hidden"]
    assert set(masked) == {"model", "mean map", "MaskedPCA"}
    assert all(np.isfinite(s["r2"]) for s in masked.values())

    md = (out / "eval.md").read_text()
    for name in ("MaskedPCA", "mean map", "fixed order", "random order"):
        assert name in md
    assert format_number(fixed["MaskedPCA"]["r2"]) in md

    # --pca: a MaskedPCA fitted elsewhere (here 2 components, not --components 4) is
    # used as it is, not refitted; one over another mask is refused
    from boldgpt.models.pca import save_pca

    two = MaskedPCA(m, 2).fit(torch.tensor(train_z[::2], dtype=torch.float32), seed=3)
    save_pca(two, tmp_path / "two.safetensors")
    out2 = tmp_path / "eval-pca"
    assert main([*args[:1], dirs[0], *args[3:8], str(out2), *args[9:],
                 "--pca", str(tmp_path / "two.safetensors")]) == 0  # fmt: skip
    result2 = json.loads((out2 / "eval.json").read_text())
    assert result2["counts"]["pca_components"] == 2
    assert result2["counts"]["pca_file"] == str(tmp_path / "two.safetensors")
    ref2 = metrics.pca_next_patch_scores(two, x, igpt.patchify, orders)
    fixed2 = result2["models"][dirs[0]]["tasks"]["next_patch"]["fixed"]
    assert fixed2["MaskedPCA"]["r2"] == pytest.approx(ref2["r2"], rel=1e-3)
    assert fixed2["MaskedPCA"]["r2"] != pytest.approx(fixed["MaskedPCA"]["r2"], rel=1e-3)
    other = m.copy()
    other[np.argwhere(m)[0][0], np.argwhere(m)[0][1]] = False
    save_pca(MaskedPCA(other, 2).fit(torch.tensor(train_z, dtype=torch.float32)),
             tmp_path / "other.safetensors")  # fmt: skip
    assert main([*args[:1], dirs[0], *args[3:8], str(out2), *args[9:],
                 "--pca", str(tmp_path / "other.safetensors")]) == 2  # fmt: skip
    assert f"over another mask ({int(other.sum())} pixels)" in capsys.readouterr().err


def test_image_models_on_sim_data_encoding_retrieval_reconstruction(tmp_path, home):
    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from boldgpt.data.transforms import dequantize
    from boldgpt.sim import load_ground_truth

    cache = build_cache("sim:ci", splits=["train", "val"], progress=False)
    val = CachedNSDFlat(cache, "val", images=False)
    mask = val.mask
    torch.manual_seed(0)
    enc = save_model(
        create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL), tmp_path / "enc"
    )
    side = dict(image_size=SIZE, **SMALL)
    dirs = []
    for family, extra in (("image2bold", {"image_encoder": str(enc)}),
                          ("cbip", {"image_encoder": str(enc)}), ("bold2image", {})):  # fmt: skip
        model = create_model(f"{family}_micro_patch10", mask=mask, **side, **extra)
        dirs.append(str(save_model(model, tmp_path / family / "model")))
    out = tmp_path / "eval"
    args = ["eval", *dirs, "--source", "sim:ci", "--out", str(out), "--train-maps", "150",
            "--components", "8", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    i2b, cbip, b2i = (result["models"][d] for d in dirs)
    assert list(i2b["tasks"]) == ["encoding"]
    assert list(cbip["tasks"]) == ["retrieval"]
    assert list(b2i["tasks"]) == ["reconstruction"]

    # the noiseless truth against the repeat-averaged val trials, per subject, by hand
    raw = np.asarray(val.activity)
    z = dequantize(torch.from_numpy(raw.copy())).numpy().astype(np.float64)
    enc_res = i2b["tasks"]["encoding"]
    rs = []
    for s in (0, 1):
        rows = val.subject_ids == s
        ids = np.unique(val.nsd_ids[rows])
        avg = np.stack([z[rows & (val.nsd_ids == i)].mean(0) for i in ids])[:, mask]
        truth = load_ground_truth(home / "sim" / "ci-seed0", s, ids)[:, mask].astype(np.float64)
        a, b = avg - avg.mean(0), truth - truth.mean(0)
        r = (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))
        rs.append(np.nanmean(r))
        assert enc_res["per_subject"][str(s)]["noiseless truth"]["r_mean"] == pytest.approx(
            rs[-1], abs=1e-6
        )
    mean = enc_res["mean"]
    assert mean["noiseless truth"]["r_mean"] == pytest.approx(np.mean(rs), abs=1e-6)
    assert mean["noiseless truth"]["r_truth_mean"] == pytest.approx(1.0)
    # the simulator's own receptive-field responses, refitted per pixel, come close to
    # the truth and beat a ridge on random-encoder features
    rf = mean["true RF features (per-pixel fit)"]
    assert rf["r_truth_mean"] > 0.8
    assert rf["r_mean"] > mean["ridge (image features)"]["r_mean"]
    assert 0 < mean["model"]["nc_median"] <= 100

    # retrieval: chance is 1 / candidates; scores are fractions
    for s, scores in cbip["tasks"]["retrieval"]["per_subject"].items():
        k = len(np.unique(val.nsd_ids[val.subject_ids == int(s)]))
        assert scores["chance"]["map_to_image"] == pytest.approx(1 / min(300, k))
        assert scores["model"]["num_candidates"] == min(300, k)
        for name in ("model", "ridge (MaskedPCA of maps)"):
            assert 0 <= scores[name]["map_to_image"] <= 1
            assert 0 <= scores[name]["two_way_map_to_image"] <= 1
        # the ceiling: each repeat-averaged map against every stimulus's noiseless map
        # (Pearson over the mask); all stimuli are candidates, so every draw is the same
        rows = val.subject_ids == int(s)
        ids = np.unique(val.nsd_ids[rows])
        avg = np.stack([z[rows & (val.nsd_ids == i)].mean(0) for i in ids])[:, mask]
        truth = load_ground_truth(home / "sim" / "ci-seed0", int(s), ids)[:, mask]
        corr = np.corrcoef(avg, truth)[: len(ids), len(ids) :]
        ceiling = scores["identification: noiseless truth (ceiling)"]
        assert ceiling["map_to_image"] == pytest.approx((corr.argmax(1) == np.arange(k)).mean())
        assert ceiling["image_to_map"] == pytest.approx((corr.argmax(0) == np.arange(k)).mean())
        assert ceiling["map_to_image"] > 10 / k  # the simulated signal identifies stimuli
        for name in ("ridge encoding (image features -> map)", "true RF features encoding"):
            assert 0 <= scores[f"identification: {name}"]["map_to_image"] <= 1

    rec = b2i["tasks"]["reconstruction"]["mean"]
    assert set(rec) == {"model", "mean image", "chance"}
    assert -1 <= rec["model"]["pixcorr"] <= 1 and -1 <= rec["mean image"]["ssim"] <= 1
    assert b2i["tasks"]["reconstruction"]["two_way_feature_space"] == "pixels"

    figures = [f for d in (i2b, cbip, b2i) for f in d["figures"]]
    assert len(figures) == 3
    for f in figures:
        assert (out / "figures" / f).stat().st_size > 2000
    md = (out / "eval.md").read_text()
    for name in ("noiseless truth", "ridge (image features)", "chance", "mean image"):
        assert name in md


def test_ridge_and_per_pixel_fit_recover_known_linear_maps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 3))
    y = x @ w + 2.0 + 0.01 * rng.normal(size=(200, 3))
    ridge = fit_ridge(x, y)
    x_new = rng.normal(size=(50, 5))
    np.testing.assert_allclose(ridge.predict(x_new), x_new @ w + 2.0, atol=0.05)
    # a response unrelated to the features: the largest penalty wins, predictions ~ mean
    noise = rng.normal(size=(200, 1))
    assert fit_ridge(x, noise).alpha == 1e5

    feats = rng.normal(size=(40, 6, 2))  # 40 samples, 6 pixels, 2 features each
    coef = rng.normal(size=(6, 3))
    y = coef[:, 0] + (feats * coef[None, :, 1:]).sum(2)
    np.testing.assert_allclose(per_pixel_ols(feats, y), coef, atol=1e-5)


def test_tasks_by_class_and_bad_inputs(tmp_path):
    beit = create_model("boldbeit_micro_patch10", mask="sim", **SMALL)
    assert tasks_for(beit) == ["masked"] and tasks_for(beit, probe=True) == ["masked", "probe"]
    image = create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL)
    with pytest.raises(ConfigError, match="reads images only"):
        tasks_for(image)
    # several models need --out; a bad split is refused by the parser
    assert main(["eval", "a", "b"]) == 2
    with pytest.raises(SystemExit):
        main(["eval", "a", "--split", "train"])
    assert main(["eval", str(tmp_path / "missing")]) == 2


def test_token_models_get_nll_accuracy_and_the_unigram_baseline():
    from boldgpt.evaluate.eval import SplitData, masked_task, next_patch_task
    from nsd_tiny import tiny_mask

    mask = tiny_mask()
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(40, *mask.shape, generator=g) * torch.from_numpy(mask)
    sid = np.arange(40) % 2
    train = SplitData(maps[:30], sid[:30], np.arange(30), mask)
    val = SplitData(maps[30:], sid[30:], np.arange(30, 40), mask)
    torch.manual_seed(0)
    igpt = create_model("boldgpt_micro_patch10", mask=mask, categorical=True, vocab_size=8,
                        **SMALL).eval()  # fmt: skip
    igpt.tokenizer.vocab.copy_(torch.randn(8, igpt.patchify.dim, generator=g))
    mean_map = train.maps.mean(0)
    pca = MaskedPCA(mask, 4).fit(train.maps, seed=0)
    res = next_patch_task(igpt, val, mean_map, pca, batch_size=64, train=train)["fixed"]
    with torch.no_grad():
        out = igpt({"activity": val.maps, "subject_id": torch.tensor(val.subject_id)},
                   order="fixed")  # fmt: skip
    logp = out.output.log_softmax(-1)
    nll = -logp.gather(-1, out.target[..., None]).mean()
    acc = (out.output.argmax(-1) == out.target).float().mean()
    assert res["model"]["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert res["model"]["accuracy"] == pytest.approx(float(acc), abs=1e-6)
    # unigram: add-one smoothed training token frequencies, by hand
    train_tok = igpt.encode_targets(igpt.patchify(train.maps)).flatten()
    freq = (torch.bincount(train_tok, minlength=8).double() + 1) / (len(train_tok) + 8)
    assert res["unigram tokens"]["nll"] == pytest.approx(
        float(-freq.log()[out.target.flatten()].mean()), rel=1e-6
    )

    beit = create_model("boldbeit_micro_patch10", mask=mask, categorical=True, vocab_size=8,
                        **SMALL).eval()  # fmt: skip
    beit.tokenizer.vocab.copy_(igpt.tokenizer.vocab)
    rows = masked_task(beit, val, mean_map, pca, train=train)["random 50% hidden"]
    assert set(rows) == {"model", "mean map", "MaskedPCA", "unigram tokens"}
    assert 0 <= rows["model"]["accuracy"] <= 1 and rows["model"]["nll"] > 0


def test_probe_rows_beside_pca_classifiers_majority_and_chance():
    from boldgpt.evaluate.eval import SplitData, probe_task

    mask = np.zeros((215, 200), bool)
    mask[60:100, 60:100] = True  # few pixels: the PCA fits stay fast
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(3, *mask.shape)) * 3  # three very different classes

    def split(n: int, first_id: int) -> SplitData:
        ids = np.arange(first_id, first_id + n)
        maps = patterns[ids % 3] + rng.normal(size=(n, *mask.shape)) * 0.1
        return SplitData(torch.tensor(maps * mask, dtype=torch.float32), ids % 2, ids, mask)

    train, test = split(40, 0), split(12, 1000)
    labels = lambda ids: np.where(ids % 5 == 4, -1, ids % 3)  # noqa: E731 (ids % 5 == 4 dropped)
    torch.manual_seed(0)
    model = create_model("boldbeit_micro_patch10", mask=mask, **SMALL)
    res = probe_task(model, test, train, labels)
    assert set(res) == {"within", "cross"}
    keep_tr = train.nsd_id % 5 != 4
    keep_te = test.nsd_id % 5 != 4
    n_comp = min(np.bincount(train.subject_id[keep_tr])) - 1
    # the majority class of each subject's own training rows, scored on its test rows
    hits = 0
    for s in (0, 1):
        y_tr = (train.nsd_id % 3)[keep_tr & (train.subject_id == s)]
        counts = np.bincount(y_tr, minlength=3)
        hits += ((test.nsd_id % 3)[keep_te & (test.subject_id == s)] == counts.argmax()).sum()
    within = res["within"]
    assert within["majority class"]["accuracy"] == pytest.approx(hits / keep_te.sum())
    assert within["chance"]["accuracy"] == pytest.approx(1 / 24)
    # separable classes: the raw-map logistic baseline is perfect in both schemes
    assert within[f"PCA({n_comp}) + logistic"]["accuracy"] == 1.0
    assert res["cross"][f"PCA({n_comp}) + logistic"]["accuracy"] == 1.0
    assert 0 <= within["linear probe (model)"]["accuracy"] <= 1


def test_probe_baselines_are_fitted_once_for_all_models(monkeypatch):
    """Several models in one evaluation share the raw-map baselines (they do not depend
    on the model); each model still gets its own linear probe."""
    from boldgpt.evaluate import probing
    from boldgpt.evaluate.eval import SplitData, probe_task

    mask = np.zeros((215, 200), bool)
    mask[60:90, 60:90] = True
    rng = np.random.default_rng(1)
    patterns = rng.normal(size=(3, *mask.shape))

    def split(n: int, first_id: int) -> SplitData:
        ids = np.arange(first_id, first_id + n)
        maps = patterns[ids % 3] + rng.normal(size=(n, *mask.shape))
        return SplitData(torch.tensor(maps * mask, dtype=torch.float32), ids % 2, ids, mask)

    train, test = split(40, 0), split(12, 1000)
    fits = []
    real_mlp = probing.pca_mlp
    monkeypatch.setattr(probing, "pca_mlp", lambda *a, **k: fits.append(1) or real_mlp(*a, **k))
    labels = lambda ids: ids % 3  # noqa: E731

    def model(seed: int):
        torch.manual_seed(seed)
        return create_model("boldbeit_micro_patch10", mask=mask, **SMALL)

    alone = probe_task(model(1), test, train, labels)  # no memo: its own fits
    per_call = len(fits)
    assert per_call >= 2  # one MLP per fold, within and across subjects
    memo: dict = {}
    first = probe_task(model(0), test, train, labels, memo=memo)
    second = probe_task(model(1), test, train, labels, memo=memo)
    assert len(fits) == 2 * per_call  # the second model fitted none
    assert second == alone  # the shared rows are the ones it would have fitted itself
    for scheme in ("within", "cross"):
        for name in first[scheme]:
            if name != "linear probe (model)":
                assert first[scheme][name] == second[scheme][name]


def test_encoding_baselines_are_shared_only_by_models_with_the_same_encoder(
    tmp_path, home, monkeypatch
):
    from boldgpt.evaluate import eval as ev

    data = ev.load_split("sim:ci", "val", image_size=SIZE)
    train = ev.load_split("sim:ci", "train", image_size=SIZE, max_rows=150)
    mean_map = metrics.mean_map(train.maps.split(64))
    encoders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        enc = create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL)
        encoders.append(str(save_model(enc, tmp_path / f"enc{seed}")))
    side = dict(image_size=SIZE, **SMALL)
    model = lambda enc, seed: (  # noqa: E731
        torch.manual_seed(seed),
        create_model("image2bold_micro_patch10", mask=data.mask, image_encoder=enc, **side),
    )[1]
    fits = []
    real_fit = ev.fit_ridge
    monkeypatch.setattr(ev, "fit_ridge", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    memo: dict = {}
    a, _ = ev.encoding_task(model(encoders[0], 0), data, train, mean_map, memo=memo)
    per_call = len(fits)
    assert per_call == len(np.unique(data.subject_id))  # one ridge per subject
    b, _ = ev.encoding_task(model(encoders[0], 1), data, train, mean_map, memo=memo)
    assert len(fits) == per_call  # same encoder weights: the ridge maps are reused
    c, _ = ev.encoding_task(model(encoders[1], 1), data, train, mean_map, memo=memo)
    assert len(fits) == 2 * per_call  # another encoder: its own ridge
    ridge = "ridge (image features)"
    assert a["mean"][ridge] == b["mean"][ridge] != c["mean"][ridge]
    assert a["mean"]["model"] != b["mean"]["model"]

"""Encoding, retrieval, reconstruction and probing metrics against values computed by hand
(issue 11). Every expected number below is worked out in the comments, not by the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boldgpt.evaluate import encoding, probing, reconstruction, retrieval
from conftest import NSD_DIR

# --------------------------------------------------------------------------- encoding


def test_average_repeats_by_hand():
    trials = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    means, ids, counts = encoding.average_repeats(trials, [7, 5, 7])
    assert ids.tolist() == [5, 7]
    assert counts.tolist() == [1, 2]
    np.testing.assert_allclose(means, [[3.0, 4.0], [5.5, 11.0]])


def test_pearson_and_r2_perfect_prediction():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(20, 6, 5))
    mask = np.zeros((6, 5), bool)
    mask[1:5, 1:4] = True
    np.testing.assert_allclose(encoding.pearson_per_pixel(target, target, mask), 1.0)
    np.testing.assert_allclose(encoding.r2_per_map(target, target, mask), 1.0)
    np.testing.assert_allclose(encoding.r2_per_pixel(target, target, mask), 1.0)
    # r is invariant to a positive affine map of the prediction, R^2 is not
    np.testing.assert_allclose(encoding.pearson_per_pixel(2 * target + 3, target, mask), 1.0)
    np.testing.assert_allclose(encoding.pearson_per_pixel(-target, target, mask), -1.0)
    assert (encoding.r2_per_map(2 * target + 3, target, mask) < 0.5).all()


def test_pearson_and_r2_by_hand():
    # one pixel, three stimuli: target (1, 2, 3), prediction (1, 3, 2)
    # centred: t = (-1, 0, 1), p = (-1, 1, 0): sum(p t) = 1, |p| |t| = 2 -> r = 0.5
    r = encoding.pearson_per_pixel(torch.tensor([[1.0], [3.0], [2.0]]), [[1.0], [2.0], [3.0]])
    assert r.tolist() == pytest.approx([0.5])
    # one map of three pixels: target (1, 2, 3) (mean 2, SST 2), prediction (1, 2, 4)
    # (SSE 1) -> R^2 = 0.5; predicting the map's mean (2, 2, 2) -> 0
    assert encoding.r2_per_map([[1.0, 2.0, 4.0]], [[1.0, 2.0, 3.0]]).tolist() == [0.5]
    assert encoding.r2_per_map([[2.0, 2.0, 2.0]], [[1.0, 2.0, 3.0]]).tolist() == [0.0]
    # a constant prediction has no correlation: undefined, not 0
    assert np.isnan(encoding.pearson_per_pixel([[1.0], [1.0], [1.0]], [[1.0], [2.0], [3.0]]))


def test_pearson_of_independent_noise_is_chance():
    # Under independence r over S stimuli has mean 0 and sd ~ 1/sqrt(S - 1) = 0.0709
    # (S = 200); the mean over 500 independent pixels has sd 0.0709 / sqrt(500) = 0.0032.
    rng = np.random.default_rng(1)
    r = encoding.pearson_per_pixel(rng.normal(size=(200, 500)), rng.normal(size=(200, 500)))
    assert abs(r.mean()) < 5 * 0.0032
    assert r.std() == pytest.approx(1 / math.sqrt(199), rel=0.15)


def test_noise_ceiling_by_hand():
    # One pixel, stimulus A seen as (1, 3), B as (-1, -3). Over the 4 trials: mean 0,
    # population sd sqrt(5); z = (1, 3, -1, -3) / sqrt(5). Within A (ddof 1):
    # ((1 - 2)^2 + (3 - 2)^2) / 5 / 1 = 0.4, B the same -> sigma_noise^2 = 0.4,
    # ncsnr^2 = (1 - 0.4) / 0.4 = 1.5.
    trials = np.array([[1.0], [3.0], [-1.0], [-3.0]])
    snr = encoding.ncsnr(trials, ["A", "A", "B", "B"])
    assert snr**2 == pytest.approx([1.5])
    # NC = 100 * 1.5 / (1.5 + 1/n): n = 2 -> 75, n = 1 -> 60, counts (2, 1) -> the NSD
    # mix k = (1/2 + 1/1) / 2 = 0.75 -> 100 * 1.5 / 2.25 = 66.67
    assert encoding.noise_ceiling(snr, 2) == pytest.approx([75.0])
    assert encoding.noise_ceiling(snr, 1) == pytest.approx([60.0])
    assert encoding.noise_ceiling(snr, [2, 1]) == pytest.approx([100 * 1.5 / 2.25])
    # identical repeats: no noise -> infinite ncsnr, ceiling 100
    exact = encoding.ncsnr([[1.0], [1.0], [-1.0], [-1.0]], [0, 0, 1, 1])
    assert np.isinf(exact).all()
    assert encoding.noise_ceiling(exact, 3) == pytest.approx([100.0])
    # normalization: r^2 0.3 over NC 60% -> 0.5; undefined where NC = 0
    out = encoding.noise_normalized([0.3, 0.5], [60.0, 0.0])
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])
    # Algonauts: r -0.5 -> 0; 0.5 -> 0.25 / 0.5 = 0.5; 0.9 -> 0.81 / 0.5 = 1.62, capped at 1;
    # NC 0 -> undefined
    out = encoding.noise_normalized_r([-0.5, 0.5, 0.9, 0.3], [50.0, 50.0, 50.0, 0.0])
    np.testing.assert_allclose(out[:3], [0.0, 0.5, 1.0])
    assert np.isnan(out[3])


@pytest.mark.parametrize("noise_var, expected_nc", [(1.0, 75.0), (3.0, 50.0)])
def test_noise_ceiling_of_known_repeat_structure(noise_var, expected_nc):
    # response = signal (variance 1) + noise (variance noise_var), 3 repeats per stimulus.
    # After z-scoring, sigma_noise^2 = v / (1 + v), so ncsnr^2 = 1 / v:
    #   v = 1 -> NC = 100 * 1 / (1 + 1/3) = 75;  v = 3 -> NC = 100 * (1/3) / (2/3) = 50.
    # Sampling error: ~2.2 NC points per pixel (4000 within-stimulus dof); the median over
    # 64 pixels is well within 2.
    rng = np.random.default_rng(2)
    stimuli, pixels = 2000, 64
    signal = rng.normal(size=(stimuli, pixels))
    trials = np.repeat(signal, 3, axis=0) + math.sqrt(noise_var) * rng.normal(
        size=(3 * stimuli, pixels)
    )
    ids = np.repeat(np.arange(stimuli), 3)
    nc = encoding.noise_ceiling(encoding.ncsnr(trials, ids), 3)
    assert np.median(nc) == pytest.approx(expected_nc, abs=2.0)
    # A model that predicts the signal exactly reaches the ceiling: its r^2 against the
    # 3-trial average is 1 / (1 + v/3) = NC / 100, so r^2 / NC ~ 1; and r against the
    # noiseless truth is 1.
    res = encoding.encoding_scores(signal, trials, ids, truth=signal)
    assert res.summary["r2_over_nc_median"] == pytest.approx(1.0, abs=0.05)
    assert 0.95 < res.summary["nnea_median"] <= 1.0  # the same, capped at 1
    assert res.summary["nc_median"] == pytest.approx(expected_nc, abs=2.0)
    assert res.summary["r_truth_mean"] == pytest.approx(1.0)
    assert res.summary["r_mean"] == pytest.approx(math.sqrt(expected_nc / 100), abs=0.02)


def test_held_out_summary_scores_each_prediction_as_the_one_call_form():
    # eval scores a model and its baselines against one summary of a subject's trials;
    # scoring there must not depend on what was scored before
    rng = np.random.default_rng(6)
    ids = np.array([3, 1, 2, 1, 3, 3, 4])  # stimulus 1 twice, 3 three times, 2 and 4 once
    trials = rng.normal(size=(7, 3, 3))
    mask = np.ones((3, 3), bool)
    mask[0, 0] = False
    held = encoding.held_out_maps(trials, ids, mask)
    assert held.ids.tolist() == [1, 2, 3, 4] and held.counts.tolist() == [2, 1, 3, 1]
    np.testing.assert_allclose(held.means[0], (trials[1] + trials[3])[mask] / 2)
    preds = [rng.normal(size=(4, 3, 3)) for _ in range(3)]
    for pred in preds + preds[::-1]:
        a, b = held.score(pred).summary, encoding.encoding_scores(pred, trials, ids, mask).summary
        assert a.keys() == b.keys() and "nc_median" in a
        for key in a:
            assert a[key] == pytest.approx(b[key], nan_ok=True)
    # predictions for stimuli 3 and 1 only: the ceiling averages 1/n over those two
    # (1/3 and 1/2), NSD's generalization, not over all four stimuli
    sub = held.score(preds[0][[2, 0]], pred_ids=[3, 1])
    snr2 = held.snr**2
    np.testing.assert_allclose(sub.nc, 100 * snr2 / (snr2 + (1 / 3 + 1 / 2) / 2))
    assert encoding.held_out_maps(trials[:4], [1, 2, 3, 4]).snr is None  # no repeats


def test_encoding_scores_perfect_and_ids():
    rng = np.random.default_rng(3)
    trials = rng.normal(size=(9, 4, 4))
    ids = np.array([30, 10, 20, 10, 30, 20, 40, 50, 40])
    mask = np.ones((4, 4), bool)
    means, uniq, _ = encoding.average_repeats(trials, ids)
    res = encoding.encoding_scores(means, trials, ids, mask)
    assert res.summary["r_mean"] == pytest.approx(1.0)
    assert res.summary["r_median"] == pytest.approx(1.0)
    assert res.summary["r2_map_mean"] == pytest.approx(1.0)
    # predictions in another order, said by pred_ids
    order = np.array([4, 0, 3, 1, 2])
    res = encoding.encoding_scores(means[order], trials, ids, mask, pred_ids=uniq[order])
    assert res.summary["r_mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pred_ids"):
        encoding.encoding_scores(means, trials, ids, mask, pred_ids=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="unique stimuli"):
        encoding.encoding_scores(means[:3], trials, ids, mask)
    with pytest.raises(ValueError, match="mask"):
        encoding.pearson_per_pixel(means, means, np.ones((3, 3), bool))


# --------------------------------------------------------------------------- retrieval

HAND_SIM = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.95, 0.6, 0.4]])


def test_top1_and_two_way_by_hand():
    # rows (a -> b): row 0 own 0.9 beats 0.1, 0.5 (top, 2 wins); row 1 own 0.3 beats 0.2,
    # loses to 0.8 (1 win); row 2 own 0.4 loses to 0.95 and 0.6 (0 wins):
    # top-1 1/3, two-way 3/6.
    # columns (b -> a): col 0 own 0.9 beats 0.2, loses to 0.95 (1); col 1 own 0.3 beats
    # 0.1, loses to 0.6 (1); col 2 own 0.4 loses to 0.5 and 0.8 (0): top-1 0, two-way 2/6.
    assert retrieval.top1_accuracy(HAND_SIM) == pytest.approx({"a_to_b": 1 / 3, "b_to_a": 0.0})
    assert retrieval.two_way_identification(HAND_SIM) == pytest.approx(
        {"a_to_b": 0.5, "b_to_a": 1 / 3}
    )


def test_ties_count_at_chance():
    # all similarities equal: each query ties with 3 others -> 1/4; every comparison a tie
    flat = np.ones((4, 4))
    assert retrieval.top1_accuracy(flat)["a_to_b"] == pytest.approx(0.25)
    assert retrieval.two_way_identification(flat)["b_to_a"] == pytest.approx(0.5)
    # row 0 ties with one distractor (1/2), rows 1 and 2 are right: top-1 (0.5 + 2) / 3;
    # two-way: row 0 has a tie (1/2) and a win, rows 1 and 2 two wins: 5.5 / 6
    sim = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert retrieval.top1_accuracy(sim)["a_to_b"] == pytest.approx(2.5 / 3)
    assert retrieval.two_way_identification(sim)["a_to_b"] == pytest.approx(5.5 / 6)


def test_similarity_by_hand():
    # cosine: (1,0).(0,2) = 0, (1,0).(3,0)/3 = 1, (1,1).(0,2)/(sqrt2*2) = 1/sqrt2, ...
    sim = retrieval.similarity([[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(sim, [[0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    # pearson: (1,2,3) vs (3,2,1) -> -1; vs (2,4,6) -> 1
    sim = retrieval.similarity([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0], [2.0, 4.0, 6.0]], "pearson")
    np.testing.assert_allclose(sim, [[-1.0, 1.0]])


def test_retrieval_perfect_is_one():
    emb = torch.randn(400, 32, generator=torch.Generator().manual_seed(0))
    out = retrieval.retrieval_top1(emb, emb, num_candidates=300, num_draws=30)
    assert out["a_to_b"] == 1.0 and out["b_to_a"] == 1.0
    assert out["chance"] == pytest.approx(1 / 300)
    assert retrieval.two_way_identification(retrieval.similarity(emb, emb))["a_to_b"] == 1.0


def test_retrieval_of_independent_embeddings_is_chance():
    # 30 draws x 300 queries = 9000 query trials, each right with probability 1/300 under
    # independence: about Binomial(9000, 1/300), mean 30 hits, sd sqrt(9000 p (1 - p)) =
    # 5.47. Five sd: 2.7 to 57.3 hits, i.e. top-1 in [0.0003, 0.0064] (10x chance is 0.033).
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3000, 64)), rng.normal(size=(3000, 64))
    out = retrieval.retrieval_top1(a, b, num_candidates=300, num_draws=30, seed=1)
    for key in ("a_to_b", "b_to_a"):
        assert (30 - 5 * 5.47) / 9000 <= out[key] <= (30 + 5 * 5.47) / 9000
    # two-way over 1000 pairs: each query's win fraction is ~uniform (variance 1/12), so
    # the mean over 1000 queries has sd sqrt(1/12/1000) = 0.0091; five sd = 0.046
    tw = retrieval.two_way_identification(retrieval.similarity(a[:1000], b[:1000]))
    assert abs(tw["a_to_b"] - 0.5) < 0.046 and abs(tw["b_to_a"] - 0.5) < 0.046


@pytest.mark.parametrize("metric", ["cosine", "pearson"])
def test_draws_of_the_whole_similarity_equal_each_draws_own_similarity(metric):
    # top1_among indexes one (N, N) matrix instead of recomputing each draw's (k, k): the
    # same thing only because both metrics normalize every row on its own. Recompute the
    # old way, draw by draw with the same generator, and compare.
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 8))
    b = a + 1.5 * rng.normal(size=(60, 8))  # noisy pairs: top-1 well between 0 and 1
    out = retrieval.top1_among(retrieval.similarity(a, b, metric), 20, num_draws=7, seed=3)
    draws = np.random.default_rng(3)
    expected = []
    for _ in range(7):
        pick = draws.choice(60, size=20, replace=False)
        t = retrieval.top1_accuracy(retrieval.similarity(a[pick], b[pick], metric))
        expected.append((t["a_to_b"], t["b_to_a"]))
    expected = np.array(expected)
    assert 0.1 < expected.mean() < 0.9
    assert out["a_to_b"] == pytest.approx(expected[:, 0].mean())
    assert out["b_to_a"] == pytest.approx(expected[:, 1].mean())
    assert out["a_to_b_std"] == pytest.approx(expected[:, 0].std())
    with pytest.raises(ValueError, match="square"):
        retrieval.top1_among(np.zeros((4, 5)), 2)


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="num_candidates"):
        retrieval.retrieval_top1(np.zeros((10, 3)), np.zeros((10, 3)), num_candidates=300)
    with pytest.raises(ValueError, match="paired"):
        retrieval.retrieval_top1(np.zeros((10, 3)), np.zeros((9, 3)), num_candidates=5)


# --------------------------------------------------------------------------- reconstruction


def test_pixcorr_by_hand():
    # flattened (0, 1, 2, 3) vs (0, 1, 3, 2): centred (-1.5, -.5, .5, 1.5) and
    # (-1.5, -.5, 1.5, .5): dot 2.25 + .25 + .75 + .75 = 4, norms^2 5 and 5 -> r = 0.8
    true = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    recon = np.array([[[0.0, 1.0], [3.0, 2.0]]])
    assert reconstruction.pixcorr_per_image(recon, true).tolist() == pytest.approx([0.8])
    assert reconstruction.pixcorr_per_image(true, true).tolist() == pytest.approx([1.0])


def test_ssim_by_hand():
    rng = np.random.default_rng(5)
    img = rng.random((2, 32, 32, 3))
    assert reconstruction.ssim_per_image(img, img) == pytest.approx([1.0, 1.0])
    # Constant images a and b: the contrast-structure term is C2 / C2 = 1 everywhere and
    # SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * data_range)^2 = 1e-4.
    a, b = np.full((1, 16, 16), 0.2), np.full((1, 16, 16), 0.6)
    expected = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)  # 0.6001
    assert reconstruction.ssim_per_image(a, b) == pytest.approx([expected])
    # uint8 input is divided by 255: 51 -> 0.2, 153 -> 0.6
    a8, b8 = np.full((1, 16, 16), 51, np.uint8), np.full((1, 16, 16), 153, np.uint8)
    assert reconstruction.ssim_per_image(a8, b8) == pytest.approx([expected])
    # RGB goes to luma 0.2125 R + 0.7154 G + 0.0721 B: pure red 0.2125, pure green 0.7154
    red, green = np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 3))
    red[..., 0], green[..., 1] = 1.0, 1.0
    expected = (2 * 0.2125 * 0.7154 + 1e-4) / (0.2125**2 + 0.7154**2 + 1e-4)
    assert reconstruction.ssim_per_image(red, green) == pytest.approx([expected])
    # channels first
    chw = np.moveaxis(img, -1, 1)
    assert reconstruction.ssim_per_image(chw, chw, channel_axis=1) == pytest.approx([1, 1])
    with pytest.raises(ValueError, match="11 x 11"):
        reconstruction.ssim_per_image(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))


def test_ssim_of_contrast_scaled_checkerboard_by_hand():
    # x alternates m + d, m - d pixel by pixel; y = m + k (x - m). Away from the borders
    # the Gaussian-weighted local means are m (to ~1e-6 d), variances d^2 and k^2 d^2,
    # covariance k d^2 (population estimates), so
    #   SSIM = (2 k d^2 + C2) / ((1 + k^2) d^2 + C2),  C2 = (0.03 * 1)^2 = 9e-4.
    # m = 0.5, d = 0.05, k = 0.5: 0.0034 / 0.004025 = 0.844720 (with sample covariances,
    # 121/120 times the variances, it would be 0.844432).
    ii, jj = np.indices((40, 40))
    x = 0.5 + 0.05 * np.where((ii + jj) % 2 == 0, 1.0, -1.0)
    y = 0.5 + 0.5 * (x - 0.5)
    expected = (2 * 0.5 * 0.05**2 + 9e-4) / ((1 + 0.25) * 0.05**2 + 9e-4)
    assert reconstruction.ssim_per_image(y[None], x[None]) == pytest.approx([expected], rel=1e-6)


def test_ssim_follows_its_definition():
    # Wang et al. (2004) written out with scipy: Gaussian (sigma 1.5, truncated at 3.5
    # sigma: an 11-pixel window) local means, population variances and covariance, the
    # SSIM map averaged after dropping the 5-pixel border that the window overhangs.
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7)
    a = rng.random((24, 30))
    b = np.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)

    def g(v):
        return gaussian_filter(v, 1.5, truncate=3.5)

    ua, ub = g(a), g(b)
    va, vb, cov = g(a * a) - ua**2, g(b * b) - ub**2, g(a * b) - ua * ub
    c1, c2 = 0.01**2, 0.03**2
    smap = (2 * ua * ub + c1) * (2 * cov + c2) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    expected = smap[5:-5, 5:-5].mean()
    assert reconstruction.ssim_per_image(a[None], b[None]) == pytest.approx([expected], rel=1e-9)


def test_feature_two_way_by_hand():
    # features e0, e1, e2 in R^4: Pearson r(e_i, e_j) = -1/3 for i != j (centred rows
    # e_k - 1/4: dot -0.25, norm^2 0.75), r(e_i, e_i) = 1.
    true = np.eye(3, 4)
    assert reconstruction.feature_two_way(true, true) == 1.0
    # reconstruction i has the features of true image i + 1: own r = -1/3; it loses to
    # image i + 1 (r = 1) and ties image i + 2 (r = -1/3): (0 + 1/2) / 2 = 0.25
    assert reconstruction.feature_two_way(np.roll(true, -1, axis=0), true) == pytest.approx(0.25)
    scores = reconstruction.reconstruction_scores(
        np.full((2, 16, 16), 0.2), np.full((2, 16, 16), 0.6), true[:2], true[:2]
    )
    assert np.isnan(scores["pixcorr"])  # constant images: correlation undefined
    assert scores["two_way"] == 1.0


# --------------------------------------------------------------------------- probing


def test_confusion_and_accuracy_by_hand():
    # true 0 0 1 1 2 2 2, predicted 0 1 1 1 2 0 2:
    # row 0: one 0, one 1; row 1: two 1; row 2: one 0, two 2 -> 5 correct of 7
    cm = probing.confusion_matrix([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert probing.accuracy_from_confusion(cm) == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="0..2"):
        probing.confusion_matrix([0, 3], [0, 1], 3)


def test_majority_class_by_hand():
    x = np.zeros((6, 2))
    # training labels 2 2 1 0 2 1: majority 2; test 2 0 1 2 -> 2 of 4
    r = probing.evaluate_probe(probing.majority_class, x, [2, 2, 1, 0, 2, 1], x[:4], [2, 0, 1, 2])
    assert r.accuracy == pytest.approx(0.5)
    # a tie between 1 and 3 goes to the smaller label: test 1 3 3 -> 1 of 3
    r = probing.evaluate_probe(probing.majority_class, x[:5], [1, 1, 3, 3, 0], x[:3], [1, 3, 3])
    assert r.accuracy == pytest.approx(1 / 3)


def test_within_and_cross_subject_schemes_by_hand():
    # train: subject 0 labels 0 0 0, subject 1 labels 1 1, subject 2 labels 1 2 2 2
    # test:  subject 0 labels 1 1 0, subject 1 labels 0 1, subject 2 labels 0 2 2 2
    ytr = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    str_ = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    yte = [1, 1, 0, 0, 1, 0, 2, 2, 2]
    ste = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    xtr, xte = np.zeros((9, 1)), np.zeros((9, 1))
    # cross (leave one subject out), majority of the other subjects' labels:
    #  held-out 0: 1 1 1 2 2 2 -> tie -> 1: test 1 1 0 -> 2/3
    #  held-out 1: 0 0 0 1 2 2 2 -> tie 0/2 -> 0: test 0 1 -> 1/2
    #  held-out 2: 0 0 0 1 1 -> 0: test 0 2 2 2 -> 1/4;   pooled 4 of 9
    r = probing.evaluate_probe(probing.majority_class, xtr, ytr, xte, yte, "cross", str_, ste, 3)
    assert r.per_subject == pytest.approx({0: 2 / 3, 1: 1 / 2, 2: 1 / 4})
    assert r.accuracy == pytest.approx(4 / 9)
    assert r.mean_subject_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1 / 4) / 3)
    # within: subject 0 -> 0: 1/3; subject 1 -> 1: 1/2; subject 2 (1 2 2 2) -> 2: 3/4
    r = probing.evaluate_probe(probing.majority_class, xtr, ytr, xte, yte, "within", str_, ste, 3)
    assert r.per_subject == pytest.approx({0: 1 / 3, 1: 1 / 2, 2: 3 / 4})
    assert r.accuracy == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="train_subjects"):
        probing.evaluate_probe(probing.majority_class, xtr, ytr, xte, yte, "cross")


def _category_maps(rng, n, classes=4, pixels=300, signal=1.0):
    """Maps whose label adds a fixed random pattern (scaled by ``signal``) to noise."""
    patterns = np.random.default_rng(99).normal(size=(classes, pixels))
    y = np.arange(n) % classes
    return signal * patterns[y] + rng.normal(size=(n, pixels)), y


def test_classifiers_learn_signal_and_sit_at_chance_on_noise():
    rng = np.random.default_rng(6)
    xtr, ytr = _category_maps(rng, 400)
    xte, yte = _category_maps(rng, 400)
    for make in (lambda: probing.pca_logistic(16), lambda: probing.pca_mlp(16, hidden=32)):
        assert probing.evaluate_probe(make, xtr, ytr, xte, yte, num_classes=4).accuracy > 0.9
    # frozen "embeddings" that carry the label linearly
    emb_tr = np.eye(4)[ytr] + 0.3 * rng.normal(size=(400, 4))
    emb_te = np.eye(4)[yte] + 0.3 * rng.normal(size=(400, 4))
    r = probing.evaluate_probe(probing.linear_probe, emb_tr, ytr, emb_te, yte, num_classes=4)
    assert r.accuracy > 0.9
    # No signal: 400 test rows, chance 1/4, sd sqrt(.25 * .75 / 400) = 0.022; a classifier
    # fitted to noise is no better than chance on new rows: within five sd.
    ntr, _ = _category_maps(rng, 400, signal=0.0)
    nte, _ = _category_maps(rng, 400, signal=0.0)
    r = probing.evaluate_probe(lambda: probing.pca_logistic(16), ntr, ytr, nte, yte, num_classes=4)
    assert abs(r.accuracy - 0.25) < 5 * 0.022
    assert r.chance == 0.25


def test_raw_map_baselines_z_score_each_map():
    # (1, 2, 3): mean 2, population sd sqrt(2/3) -> (-1.2247, 0, 1.2247); a constant map
    # has no pattern -> zeros
    z = probing.standardize_maps([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    np.testing.assert_allclose(z, [[-math.sqrt(1.5), 0.0, math.sqrt(1.5)], [0.0, 0.0, 0.0]])
    # so the baselines ignore each map's overall gain and offset (the benchmark's
    # normalization): the same predictions for a * map + b with per-map a > 0, b
    rng = np.random.default_rng(8)
    x, y = _category_maps(rng, 200)
    gain, offset = rng.uniform(0.5, 3.0, size=(200, 1)), rng.normal(size=(200, 1))
    for make in (lambda: probing.pca_logistic(8), lambda: probing.pca_mlp(8, hidden=16)):
        p1 = make().fit(x, y).predict(x)
        p2 = make().fit(gain * x + offset, y).predict(gain * x + offset)
        assert (p1 == p2).mean() > 0.99


def test_category_labels_from_annotations():
    # COCO contiguous index -> benchmark label: motorcycle (3) is the first of the 24,
    # clock (74) the last; person (0) and e.g. 1 (bicycle) are not among them
    assert probing.coco_to_label([3, 74, 0, 1, 37]).tolist() == [0, 23, -1, -1, 17]
    assert probing.BENCHMARK_CATEGORIES[17] == "surfboard"
    rows = {
        "nsd_id": [5, 9, 2],
        "objects": [{"target": [37, 0]}, {"target": [0, 30]}, {"target": [74]}],
    }
    ids, labels = probing.main_category_labels(rows)
    assert ids.tolist() == [5, 9, 2]
    assert labels.tolist() == [17, -1, 23]  # surfboard, person (not a main category), clock
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "nsd_id": rows["nsd_id"],
            "objects": [
                {"target": o["target"], "category": ["x"] * len(o["target"])}
                for o in rows["objects"]
            ],
        }
    )
    ids, labels = probing.main_category_labels(ds.select([2, 0]))
    assert ids.tolist() == [2, 5] and labels.tolist() == [23, 17]


def test_nsd_benchmark_labels():
    if not (NSD_DIR / probing.TARGETS_FILE).exists():
        pytest.skip(f"{NSD_DIR} not available")
    labels = probing.load_nsd_category_labels(NSD_DIR)
    targets = np.load(NSD_DIR / probing.TARGETS_FILE)
    assert labels.shape == (73000,)
    # nsd_id 0: COCO index 33 (kite, label 15); 1: 15 (bench, not included); 10: 74 (clock)
    assert targets[[0, 1, 10]].tolist() == [33, 15, 74]
    assert labels[[0, 1, 10]].tolist() == [15, -1, 23]
    assert set(np.unique(labels)) == set(range(-1, 24))


def test_nsd_label_order_matches_the_published_constant_baseline(nsd_design_path):
    # The benchmark's constant baseline predicts label 0 and scores 3.64-3.95% on its
    # splits; label 0 (motorcycle) must then hold about that share of the NSD trials
    # whose image is among the 24 (it is 3.75%). The shares of the 24 classes run from
    # 2.4% to 6.3%, so this rules out 19 of the 24 classes as label 0.
    if not (NSD_DIR / probing.TARGETS_FILE).exists():
        pytest.skip(f"{NSD_DIR} not available")
    import pandas as pd

    labels = probing.load_nsd_category_labels(NSD_DIR)
    trial_labels = labels[pd.read_parquet(nsd_design_path, columns=["nsd_id"])["nsd_id"]]
    kept = trial_labels[trial_labels >= 0]
    assert 0.036 < np.mean(kept == 0) < 0.040

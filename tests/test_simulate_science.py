"""The embedded dataset tested as science: does it behave like fMRI data should?

Thresholds come from the generative model's parameters (the SNR, the noise smoothness)
or from statistics (t > 3), never from running the generator.
"""

from __future__ import annotations

import numpy as np
import pytest

from boldgpt.sim import load_ground_truth, load_subject_model, validate
from boldgpt.sim.simulator import DEFAULT_SNR
from sim_data import ci_dataset


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    return ci_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def maps(ci) -> validate.MapSet:
    return validate.read_maps(ci)


@pytest.fixture(scope="module")
def mask(ci) -> np.ndarray:
    return np.load(ci / "mask.npy")


def test_repeats_correlate_at_the_level_the_snr_implies(ci, maps, mask):
    r = validate.repeat_reliability(maps, ci, mask)
    # Signal variance v per pixel against unit noise: two presentations correlate
    # v / (1 + v). Estimated from 200 repeat pairs, averaged over ~18,000 pixels.
    assert r["voxel_r"] == pytest.approx(r["expected_r"], abs=0.03)
    # The calibration SNR (mean v = snr over the mask, on other stimuli) predicts it
    # too, up to which stimuli the dataset happened to draw.
    assert r["nominal_r"] == pytest.approx(r["voxel_r"], abs=0.08)
    snr = DEFAULT_SNR
    assert r["nominal_r"] < snr / (1 + snr)  # v / (1 + v) is concave: below mean-SNR value
    # Pixels with more signal are more reliable.
    assert r["voxel_r_vs_expected_corr"] > 0.6
    # Whole maps: repeats of a stimulus correlate, different stimuli do not.
    assert r["pattern_r_same"] > 0.5 * r["expected_r"]
    assert abs(r["pattern_r_other"]) < 0.03


def test_maps_are_smooth_inside_the_mask_and_constant_outside(maps, mask):
    s = validate.spatial_smoothness(maps, mask)
    assert s["outside_constant"] == 1.0
    # Noise alone gives about 0.77 between neighbours (55% smoothed at sigma 2 mm:
    # exp(-1/16), 25% broad modes, 20% white); the signal is smoother still.
    assert s["neighbor_r"] > s["expected_noise_neighbor_r"] - 0.05
    assert s["neighbor_r"] < 0.98  # not blurred into blobs: the white noise is there
    assert abs(s["neighbor_r_shuffled"]) < 0.02


def test_subjects_differ_but_share_a_plan(ci, maps):
    s = validate.subject_differences(maps, ci)
    # Same stimulus, two brains: related (a shared atlas) but far from identical.
    assert 0.2 < s["truth_cross_r"] < 0.9
    assert abs(s["truth_cross_r_other"]) < 0.15
    # In the data, a subject's own repeat predicts its map better than another subject.
    assert s["data_cross_r"] < s["data_within_r"]
    assert s["data_cross_r"] > 0
    assert s["rf_shift_deg_median"] > 0.1


def test_a_category_raises_its_region(ci, maps):
    c = validate.category_effects(maps, ci)
    for domain in ("faces", "animals", "food", "vehicles", "objects"):
        assert c[f"{domain}_effect"] > 0 and c[f"{domain}_t"] > 3, domain
    for domain in ("animals", "food", "vehicles", "objects"):
        assert c[f"{domain}_own_best"] == 1.0, domain
    # People drive face and body regions alike; one of the two is the best.
    assert c["faces_own_best"] + c["bodies_own_best"] >= 1.0


def test_ridge_on_true_features_explains_most_explainable_variance(ci, maps):
    r = validate.ridge_explained_variance(maps, ci)
    # A single trial is mostly noise (signal share ~0.3), yet a model of the right
    # form fitted on 240 trials recovers most of the noiseless maps' variance.
    assert r["single_trial_ceiling"] < 0.4
    assert r["ridge_r2_truth"] > 0.5


def test_ground_truth_is_in_the_units_of_the_data(ci, maps):
    s = 0
    model = load_subject_model(ci, s)
    idx = np.flatnonzero(maps.subject_id == s)
    data = maps.z(idx).reshape(len(idx), -1)[:, model.pixels]
    truth = load_ground_truth(ci, s, maps.nsd_id[idx]).reshape(len(idx), -1)[:, model.pixels]
    # data = truth + noise / std: regressing data on truth gives a slope of 1.
    t = truth - truth.mean(0)
    slope = (t * (data - data.mean(0))).sum() / (t * t).sum()
    assert slope == pytest.approx(1.0, abs=0.1)
    # And the residual has the noise variance the model implies, 1 / std**2.
    resid = (data - data.mean(0)) - t
    assert resid.var() == pytest.approx(np.mean(1 / model.std**2), rel=0.1)

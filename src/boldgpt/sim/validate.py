"""Science checks of a simulated dataset: numbers that say whether it behaves like data.

Each check reads what a user would (the decoded uint8 maps of the parquet shards) plus,
where it needs it, the stored ground truth, and returns plain floats with the value
the generative model predicts next to the measured one:

* ``repeat_reliability``: repeats of a stimulus correlate more than different stimuli,
  at the level the SNR implies (``snr / (1 + snr)`` per pixel);
* ``spatial_smoothness``: neighbouring pixels correlate as the noise and signal
  smoothness imply, and pixels outside the mask are constant (127);
* ``subject_differences``: subjects' maps of the same stimulus are similar but not
  identical, and a subject's repeat predicts its own map better than another's;
* ``category_effects``: a category raises the activity of its category region;
* ``ridge_explained_variance``: a per-pixel ridge model on the true receptive-field
  features recovers most of the explainable (noiseless) variance of held-out stimuli.

``validate_simulation`` runs them all.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.sim import categories as cats
from boldgpt.sim import noise
from boldgpt.sim.geometry import DOMAINS
from boldgpt.sim.truth import load_ground_truth, load_stimulus_truth, load_subject_model


@dataclass
class MapSet:
    """Trials of a dataset as arrays (n trials; maps (n, 215, 200) uint8)."""

    subject_id: np.ndarray
    session_id: np.ndarray
    trial_id: np.ndarray
    nsd_id: np.ndarray
    shared1000: np.ndarray
    split: np.ndarray
    maps: np.ndarray
    categories: list[list[str]]
    areas: list[list[int]]

    def z(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Decoded z-values of the selected maps, float32."""
        return schema.dequantize(self.maps[index])

    def select(self, keep: np.ndarray) -> MapSet:
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return MapSet(
            *(
                getattr(self, f)[idx]
                for f in (
                    "subject_id",
                    "session_id",
                    "trial_id",
                    "nsd_id",
                    "shared1000",
                    "split",
                    "maps",
                )
            ),  # fmt: skip
            categories=[self.categories[i] for i in idx],
            areas=[self.areas[i] for i in idx],
        )


def read_maps(out_dir: str | os.PathLike, subjects=None, max_trial_id: int | None = None) -> MapSet:
    """Decode the maps of a dataset in the hub layout (both hub splits), optionally only
    of some subjects and of trials with ``trial_id < max_trial_id`` (uint8 maps take
    43 kB each: a full-size dataset does not fit in memory)."""
    root = Path(out_dir)
    cols = ["subject_id", "session_id", "trial_id", "nsd_id", "shared1000"]
    parts: dict[str, list] = {k: [] for k in cols + ["split", "maps"]}
    categories, areas = [], []
    for split, pattern in schema.SPLIT_FILES.items():
        for path in sorted(root.glob(pattern)):
            t = pq.read_table(path, columns=cols)
            keep = np.ones(len(t), bool)
            if subjects is not None:
                keep &= np.isin(t["subject_id"].to_numpy(), list(subjects))
            if max_trial_id is not None:
                keep &= t["trial_id"].to_numpy() < max_trial_id
            rows = np.flatnonzero(keep)
            for c in cols:
                parts[c].append(t[c].to_numpy()[rows])
            parts["split"].append(np.full(len(rows), split))
            # Decoded shard by shard: the PNG bytes never pile up in memory.
            extra = pq.read_table(path, columns=["activity", "objects"]).take(rows)
            for act in extra["activity"].combine_chunks().field("bytes").to_pylist():
                parts["maps"].append(np.asarray(Image.open(io.BytesIO(act))))
            objects = extra["objects"].combine_chunks()
            categories += objects.field("category").to_pylist()
            areas += objects.field("area").to_pylist()
    if not parts["split"]:
        raise DataError(f"{root} has no parquet shards (expected {schema.SPLIT_FILES['train']})")
    if not parts["maps"]:
        raise DataError(f"{root}: no trials of subjects {subjects} with trial_id < {max_trial_id}")
    return MapSet(
        *(np.concatenate(parts[c]) for c in cols),
        split=np.concatenate(parts["split"]),
        maps=np.stack(parts["maps"]),
        categories=categories,
        areas=areas,
    )


def _repeat_pairs(ms: MapSet, subject: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trial indices of the first two presentations of each repeated stimulus."""
    idx = np.flatnonzero(ms.subject_id == subject)
    idx = idx[np.lexsort((ms.trial_id[idx], ms.nsd_id[idx]))]
    ids = ms.nsd_id[idx]
    first = np.r_[True, ids[1:] != ids[:-1]]
    starts = np.flatnonzero(first)
    has2 = np.r_[starts[1:], len(idx)] - starts >= 2
    a = idx[starts[has2]]
    b = idx[starts[has2] + 1]
    return a, b, ms.nsd_id[a]


def _rowwise_r(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    a = a - a.mean(axis, keepdims=True)
    b = b - b.mean(axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis) * (b * b).sum(axis))
    return (a * b).sum(axis) / np.where(den > 0, den, np.nan)


def repeat_reliability(
    ms: MapSet, out_dir: str | os.PathLike, mask: np.ndarray
) -> dict[str, float]:
    """Repeat-to-repeat correlations, measured and predicted by the SNR.

    ``voxel_r``: per pixel, correlation across stimuli between first and second
    presentations (mean over pixels); ``pattern_r_same`` / ``pattern_r_other``: map
    correlation between two presentations of the same / of different stimuli;
    ``expected_r``: mean over pixels of ``v / (1 + v)``, with ``v`` the variance of the
    noiseless signal over the repeated stimuli (noise has unit variance); ``nominal_r``
    the same from the stored calibration SNR map; ``voxel_r_vs_expected_corr``: how well
    the per-pixel reliability follows the per-pixel SNR (correlation across pixels).
    """
    vox, same, other, expected, nominal, vs_snr, n = [], [], [], [], [], [], 0
    for s in np.unique(ms.subject_id):
        a, b, ids = _repeat_pairs(ms, int(s))
        if len(a) < 3:
            continue
        za, zb = ms.z(a)[:, mask], ms.z(b)[:, mask]
        r_pix = _rowwise_r(za, zb, 0)
        vox.append(np.nanmean(r_pix) * len(a))
        same.append(np.nanmean(_rowwise_r(za, zb, 1)) * len(a))
        other.append(np.nanmean(_rowwise_r(za, np.roll(zb, 1, axis=0), 1)) * len(a))
        model = load_subject_model(out_dir, int(s))
        nominal.append(float(np.mean(model.snr / (1 + model.snr))) * len(a))
        # Signal variance over this dataset's stimuli (not the calibration set's).
        truth = load_ground_truth(out_dir, int(s), ids).reshape(len(ids), -1)[:, model.pixels]
        v = (truth * model.std).var(0)
        expected.append(float(np.mean(v / (1 + v))) * len(a))
        vs_snr.append(float(_rowwise_r(r_pix[None], (v / (1 + v))[None], 1)[0]) * len(a))
        n += len(a)
    if n == 0:
        raise DataError("no stimulus is shown twice to a subject: cannot measure reliability")
    return {
        "voxel_r": float(sum(vox) / n),
        "pattern_r_same": float(sum(same) / n),
        "pattern_r_other": float(sum(other) / n),
        "expected_r": float(sum(expected) / n),
        "nominal_r": float(sum(nominal) / n),
        "voxel_r_vs_expected_corr": float(sum(vs_snr) / n),
        "repeat_pairs": float(n),
    }


def expected_noise_neighbor_r() -> float:
    """Correlation of horizontally adjacent pixels of pure noise, from its parameters:
    sigma-2 mm smoothing gives ``exp(-1 / (4 sigma^2))``, the broad modes about 1,
    white noise 0."""
    s = noise.NOISE_SHARES
    smooth = np.exp(-1.0 / (4 * noise.SMOOTH_SIGMA_MM**2))
    broad = np.exp(-1.0 / (4 * noise.BROAD_SIGMA_MM**2))
    return float(s["smooth"] * smooth + s["broad"] * broad)


def spatial_smoothness(ms: MapSet, mask: np.ndarray) -> dict[str, float]:
    """Correlation of horizontally adjacent in-mask pixels (pooled over maps), the same
    after shuffling pixels, and the share of outside-mask pixels equal to 127."""
    pair = mask[:, :-1] & mask[:, 1:]
    rng = np.random.default_rng(0)
    n = len(ms.maps)
    z = ms.z(np.sort(rng.choice(n, size=min(n, 1000), replace=False)))
    # Per map (each map's own mean removed), then averaged over maps.
    r = _rowwise_r(z[:, :, :-1][:, pair], z[:, :, 1:][:, pair], 1)
    inside = z[:, mask][:, rng.permutation(int(mask.sum()))]
    r_shuf = _rowwise_r(inside[:, :-1], inside[:, 1:], 1)
    background = schema.quantize(np.zeros(1))[0]
    return {
        "neighbor_r": float(np.nanmean(r)),
        "neighbor_r_shuffled": float(np.nanmean(r_shuf)),
        "expected_noise_neighbor_r": expected_noise_neighbor_r(),
        "outside_constant": float(np.mean(ms.maps[:, ~mask] == background)),
    }


def subject_differences(ms: MapSet, out_dir: str | os.PathLike) -> dict[str, float]:
    """Between two subjects (the first two): correlation of their noiseless maps of the
    same stimulus (``truth_cross_r``; 1 would mean identical brains), of different
    stimuli (``truth_cross_r_other``), and the data-level repeat correlation within a
    subject vs across subjects on shared stimuli."""
    subjects = np.unique(ms.subject_id)[:2]
    if len(subjects) < 2:
        raise DataError("subject_differences needs a dataset with at least two subjects")
    s0, s1 = (int(s) for s in subjects)
    ids = np.intersect1d(ms.nsd_id[ms.subject_id == s0], ms.nsd_id[ms.subject_id == s1])
    if len(ids) < 3:
        raise DataError("the first two subjects share fewer than 3 stimuli")
    m0, m1 = load_subject_model(out_dir, s0), load_subject_model(out_dir, s1)
    mask = np.zeros(schema.HEIGHT * schema.WIDTH, bool)
    mask[m0.pixels] = True
    mask = mask.reshape(schema.MAP_SHAPE)
    t0 = load_ground_truth(out_dir, s0, ids)[:, mask]
    t1 = load_ground_truth(out_dir, s1, ids)[:, mask]
    cross = np.nanmean(_rowwise_r(t0, t1, 1))
    cross_other = np.nanmean(_rowwise_r(t0, np.roll(t1, 1, axis=0), 1))
    # Data: subject 0's two presentations vs subject 0's first and subject 1's first.
    a, b, rep_ids = _repeat_pairs(ms, s0)
    keep = np.isin(rep_ids, ids)
    first1 = {}
    for i in np.flatnonzero(ms.subject_id == s1)[::-1]:
        first1[int(ms.nsd_id[i])] = i
    c = np.array([first1[int(i)] for i in rep_ids[keep]])
    za, zb, zc = ms.z(a[keep])[:, mask], ms.z(b[keep])[:, mask], ms.z(c)[:, mask]
    rf_shift = np.hypot(m0.rf_x - m1.rf_x, m0.rf_y - m1.rf_y)
    return {
        "truth_cross_r": float(cross),
        "truth_cross_r_other": float(cross_other),
        "data_within_r": float(np.nanmean(_rowwise_r(za, zb, 1))),
        "data_cross_r": float(np.nanmean(_rowwise_r(za, zc, 1))),
        "rf_shift_deg_median": float(np.median(rf_shift)),
        "shared_stimuli": float(len(ids)),
    }


def category_effects(
    ms: MapSet, out_dir: str | os.PathLike, min_trials: int = 5
) -> dict[str, float]:
    """Does a category raise its category region?

    For each domain with object categories (faces and bodies: ``person``; animals,
    food, vehicles, small objects: the categories whose weight on the domain is at
    least 0.9), its region is the 3% of pixels most selective for it (per subject:
    its loading minus the largest loading of another domain, as a localizer would
    define it).
    ``{domain}_effect`` is the mean z in the region on trials whose picture shows such a
    category (at least 2% of the picture) minus on trials showing no category related
    to the domain (weight > 0.2); pictures with a person are left out of both sides
    except for faces and bodies, since people co-occur with many categories.
    ``{domain}_t`` is the Welch t statistic and ``{domain}_own_best`` is 1 when the
    domain's own region shows the largest effect of all regions.
    """
    size = 256.0**2
    person = {"person"}
    out: dict[str, float] = {}
    gathered = {d: ([], []) for d in DOMAINS}
    for s in np.unique(ms.subject_id):
        model = load_subject_model(out_dir, int(s))
        sel = np.flatnonzero(ms.subject_id == s)
        # Regions as a localizer would find them: the pixels most selective for the
        # domain (its loading minus the largest loading of any other domain).
        loads = model.loadings[:, : len(DOMAINS)]
        tops = []
        for j in range(len(DOMAINS)):
            selectivity = loads[:, j] - np.delete(loads, j, axis=1).max(1)
            tops.append(selectivity >= np.quantile(selectivity, 0.97))
        regions = np.empty((len(sel), len(DOMAINS)))  # mean z per (trial, region)
        for c in range(0, len(sel), 500):
            z = ms.z(sel[c : c + 500]).reshape(-1, schema.HEIGHT * schema.WIDTH)[:, model.pixels]
            regions[c : c + 500] = np.stack([z[:, top].mean(1) for top in tops], axis=1)
        names = [set(ms.categories[i]) for i in sel]
        big = [{c for c, a in zip(ms.categories[i], ms.areas[i]) if a / size >= 0.02} for i in sel]
        for d in DOMAINS:
            members = {c.name for c in cats.CATEGORIES if c.domains.get(d, 0) >= 0.9}
            related = {c.name for c in cats.CATEGORIES if c.domains.get(d, 0) > 0.2}
            if not members:
                continue
            social = d in ("faces", "bodies")
            present = np.array(
                [bool(b & members) and (social or not (n & person)) for b, n in zip(big, names)]
            )
            absent = np.array([not (n & (related | person)) for n in names])
            gathered[d][0].append(regions[present])
            gathered[d][1].append(regions[absent])
    for j, d in enumerate(DOMAINS):
        if not gathered[d][0]:
            continue
        pres, rest = np.concatenate(gathered[d][0]), np.concatenate(gathered[d][1])
        if len(pres) < min_trials or len(rest) < min_trials:
            continue
        diff = pres.mean(0) - rest.mean(0)
        se = np.sqrt(pres.var(0, ddof=1) / len(pres) + rest.var(0, ddof=1) / len(rest))
        out[f"{d}_effect"] = float(diff[j])
        out[f"{d}_t"] = float(diff[j] / se[j])
        out[f"{d}_own_best"] = float(np.argmax(diff) == j)
        out[f"{d}_trials"] = float(len(pres))
    return out


def _rf_features(model, stim, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """True receptive-field features of stimuli rows ``pos``: ``(n, P, 3)`` contrast of
    each channel pooled by each pixel's receptive field, and the ``(n, NUM_DRIVES)``
    category drives (the same for every pixel)."""
    pooled = model.pooled_contrast(np.asarray(stim.features[pos], np.float32))
    return pooled, torch.from_numpy(np.asarray(stim.drives[pos], np.float32))


def ridge_explained_variance(
    ms: MapSet, out_dir: str | os.PathLike, subject: int | None = None,
    holdout: float = 0.2, alpha: float | None = None, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """How much of the explainable variance can a model learn from the true features?

    Fits, per pixel, a ridge regression of the measured single-trial maps on the true
    receptive-field features (``_rf_features``: 3 pooled contrast channels, the
    category drives and a constant) on the trials of 80% of the stimuli (``alpha`` on
    standardized features, default 0.1 x trials). On the held-out stimuli,
    ``ridge_r2_truth`` is the share of the noiseless maps' variance it explains
    (1 - SSE / SST pooled over pixels); ``single_trial_ceiling`` is the share of a
    single trial's variance that is signal, for reference.
    """
    s = int(np.unique(ms.subject_id)[0]) if subject is None else subject
    model = load_subject_model(out_dir, s)
    stim = load_stimulus_truth(out_dir)
    sel = np.flatnonzero(ms.subject_id == s)
    ids = np.unique(ms.nsd_id[sel])
    rng = np.random.default_rng(seed)
    test_ids = np.sort(rng.choice(ids, size=max(2, int(holdout * len(ids))), replace=False))
    train = sel[~np.isin(ms.nsd_id[sel], test_ids)]
    # Trials of a stimulus share its features: sums over its trials are all the normal
    # equations need, so nothing of size (trials, pixels, features) is built.
    train_ids, inv, counts = np.unique(ms.nsd_id[train], return_inverse=True, return_counts=True)
    ysum = torch.zeros(len(train_ids), model.num_pixels)
    for c in range(0, len(train), 500):
        z = ms.z(train[c : c + 500]).reshape(-1, schema.HEIGHT * schema.WIDTH)[:, model.pixels]
        ysum.index_add_(0, torch.from_numpy(inv[c : c + 500]), torch.from_numpy(z))
    a, d = _rf_features(model, stim, stim.positions(train_ids))
    w = torch.from_numpy(counts).float()
    n = float(w.sum())

    def wmean(x):
        return torch.tensordot(w, x, dims=1) / n

    # Standardize (pooled contrast per pixel, drives globally) so one alpha fits all.
    a_mu, d_mu = wmean(a), wmean(d)
    a_sd = (wmean(a * a) - a_mu**2).clamp_min(1e-12).sqrt()
    d_sd = (wmean(d * d) - d_mu**2).clamp_min(1e-12).sqrt()

    def design(a, d):
        ones = torch.ones(len(d), 1)
        return (a - a_mu) / a_sd, torch.cat([(d - d_mu) / d_sd, ones], dim=1)

    a, d = design(a, d)
    k_a, k_d = a.shape[2], d.shape[1]
    wa = a * w[:, None, None]
    # X_p = [a_p, d]: X_p'X_p assembled blockwise, weighted by trials per stimulus.
    xtx = torch.empty(model.num_pixels, k_a + k_d, k_a + k_d)
    for i in range(k_a):
        for j in range(k_a):
            xtx[:, i, j] = (wa[:, :, i] * a[:, :, j]).sum(0)
    cross = torch.einsum("spi,sk->pik", wa, d)
    xtx[:, :k_a, k_a:] = cross
    xtx[:, k_a:, :k_a] = cross.transpose(1, 2)
    xtx[:, k_a:, k_a:] = (d * w[:, None]).T @ d
    xty = torch.cat([torch.einsum("spi,sp->pi", a, ysum), (d.T @ ysum).T], dim=1)
    reg = torch.full((k_a + k_d,), 0.1 * n if alpha is None else float(alpha))
    reg[-1] = 0.0  # no penalty on the constant
    beta = torch.linalg.solve(xtx + torch.diag(reg), xty.unsqueeze(-1)).squeeze(-1)
    at, dt = design(*_rf_features(model, stim, stim.positions(test_ids)))
    pred = (torch.einsum("npi,pi->np", at, beta[:, :k_a]) + dt @ beta[:, k_a:].T).numpy()
    truth = load_ground_truth(out_dir, s, test_ids).reshape(len(test_ids), -1)[:, model.pixels]
    sse = ((pred - truth) ** 2).sum()
    sst = ((truth - truth.mean(0)) ** 2).sum()
    return {
        "ridge_r2_truth": float(1 - sse / sst),
        "ridge_r_truth_median": float(np.nanmedian(_rowwise_r(pred, truth, 0))),
        "single_trial_ceiling": float(np.mean(model.snr / (1 + model.snr))),
        "train_trials": float(len(train)),
        "test_stimuli": float(len(test_ids)),
    }


def validate_simulation(
    out_dir: str | os.PathLike,
    subjects=None,
    max_trial_id: int | None = 5000,
    progress: bool = False,
) -> dict[str, float]:
    """Run every check on a simulated dataset; returns ``{"group.metric": value}``.

    By default on the first two subjects and their first 5,000 trials, which bounds
    time and memory at any dataset size (about half a minute for ``demo``)."""
    from tqdm.auto import tqdm

    root = Path(out_dir)
    mask = np.load(root / "mask.npy")
    if subjects is None:
        subjects = json.loads((root / "simulation.json").read_text())["subjects"][:2]
    ms = read_maps(root, subjects, max_trial_id)
    checks = {
        "reliability": lambda: repeat_reliability(ms, root, mask),
        "smoothness": lambda: spatial_smoothness(ms, mask),
        "subjects": lambda: subject_differences(ms, root) if len(subjects) > 1 else {},
        "categories": lambda: category_effects(ms, root),
        "ridge": lambda: ridge_explained_variance(ms, root),
    }
    out = {}
    for group, check in tqdm(checks.items(), desc="validate", disable=not progress):
        out.update({f"{group}.{k}": v for k, v in check().items()})
    return out


__all__ = [
    "MapSet",
    "category_effects",
    "expected_noise_neighbor_r",
    "read_maps",
    "repeat_reliability",
    "ridge_explained_variance",
    "spatial_smoothness",
    "subject_differences",
    "validate_simulation",
]

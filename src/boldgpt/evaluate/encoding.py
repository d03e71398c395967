"""Encoding accuracy (image -> map): per-pixel correlation, R^2 and the noise ceiling.

Definitions (SPEC section 11; the conventions of NSD, Allen et al. 2022, Nature
Neuroscience, and of the Algonauts 2023 challenge, Gifford et al. 2023):

- Measured maps are **averaged over the repeats** of each held-out stimulus
  (:func:`average_repeats`) and compared with one predicted map per stimulus.
- **Pearson r per pixel** across stimuli (:func:`pearson_per_pixel`), summarized by its
  mean and median over the mask.
- **R^2 per map** (:func:`r2_per_map`): ``1 - SSE / SST`` over the in-mask pixels of one
  map, SST around that map's in-mask mean; **R^2 per pixel** (:func:`r2_per_pixel`):
  the same across stimuli for each pixel.
- **Noise ceiling** (:func:`noise_ceiling`), NSD's formula. Per pixel, responses are
  z-scored over all given trials; ``sigma_noise^2`` is the within-stimulus variance
  (unbiased, ``ddof=1``) averaged over the stimuli with at least two trials;
  ``ncsnr = sqrt(max(0, 1 - sigma_noise^2)) / sqrt(sigma_noise^2)``; and for maps that
  average ``n`` trials ``NC = 100 * ncsnr^2 / (ncsnr^2 + 1/n)`` percent of the variance.
  When stimuli average different numbers of trials (A stimuli with 3, B with 2, C with
  1), ``1/n`` becomes ``(A/3 + B/2 + C/1) / (A + B + C)``, NSD's own generalization.
- **Noise-ceiling-normalized accuracy** (:func:`noise_normalized`): explained variance
  (``r^2`` or ``R^2`` per pixel) divided by ``NC / 100``; 1 means the model explains all
  the explainable variance. Undefined (NaN) where ``NC <= 0``. The Algonauts 2023
  variant (:func:`noise_normalized_r`, the challenge's score) first sets negative r to
  0 and caps the ratio at 1 (100%); where NC is 0 the challenge's code divides by
  ``1e-14``, which we leave undefined instead (excluded from means and medians).
- On the embedded dataset, the same Pearson r **against the true noiseless maps**
  (``boldgpt.sim.load_ground_truth``) measures how close a model is to the truth
  without a ceiling: pass the noiseless maps as the target.

How ``boldgpt eval`` (``boldgpt.evaluate.eval``) uses these metric modules:

- It reads the held-out split once (cache arrays: maps ``(T, 215, 200)``, ``nsd_id``,
  ``subject_id``, images) and scores every subject separately, then averages subjects,
  as the literature does. Each task runs the model and its baselines on the same rows
  and puts them in one table with chance and, where it exists, the ceiling.
- Encoding: one predicted map per unique stimulus, scored against each subject's
  trials summarized once (:func:`held_out_maps`: repeat averages and noise ceiling;
  :func:`encoding_scores` is the one-call form); the baselines (mean map, ridge from
  image features, the fit of the simulator's true receptive-field features) are
  scored against the same summary. ``truth=`` comes from
  ``boldgpt.sim.load_ground_truth`` on the embedded data. The per-pixel ``r`` of
  :class:`EncodingResult` is the encoding-accuracy flat map.
- Retrieval (``evaluate.retrieval``): map embeddings averaged over the repeats of a
  stimulus against that stimulus's image embeddings; one similarity matrix per method,
  300 candidates x 30 draws from it (``top1_among``), both directions and
  ``two_way_identification``.
- Reconstruction (``evaluate.reconstruction.reconstruction_scores``): images resized
  to one size, features from whichever image encoder the run has.
- Category decoding (``evaluate.probing.evaluate_probe``): labels from
  ``main_category_labels`` (embedded) or ``load_nsd_category_labels`` (real NSD) looked
  up by ``nsd_id``, rows labelled -1 dropped; the frozen model's embeddings with
  ``linear_probe`` and the raw in-mask maps with ``pca_mlp`` / ``pca_logistic`` /
  ``majority_class``, schemes ``within`` and ``cross`` (train split -> test split).
- JSON: every ``summary`` dict as it is, keyed by task, model and baseline; the
  Markdown table through ``evaluate.report.Report.comparison``.

Every function takes numpy arrays or torch tensors and computes in float64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of an array or tensor (torch tensors are detached to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from exc


def flatten_maps(x: Any, mask: Any | None, name: str) -> np.ndarray:
    """Maps ``(N, H, W)`` (or ``(N, P)``) -> ``(N, P_in)`` in-mask values.

    With ``mask`` (bool, the trailing shape of ``x``) only its pixels are kept; without
    it every trailing value is. A 1-d ``x`` is one value per row.
    """
    a = as_numpy(x, name)
    if a.ndim == 0:
        raise ValueError(f"{name} must have a leading axis of maps, got a scalar")
    if mask is None:
        return a.reshape(a.shape[0], -1)
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
    if a.shape[1:] != m.shape:
        raise ValueError(f"{name} has maps of shape {a.shape[1:]} but the mask has shape {m.shape}")
    return a[:, m]


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {pred.shape} and {target.shape}"
        )


def average_repeats(trials: Any, stimulus_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the trials of each stimulus.

    Args:
        trials: ``(T, ...)`` one response per trial (maps or in-mask values).
        stimulus_ids: ``(T,)`` the stimulus of each trial (e.g. ``nsd_id``).

    Returns:
        ``(means, ids, counts)``: ``(S, ...)`` float64 mean response of each unique
        stimulus, ``(S,)`` the sorted unique ids, ``(S,)`` the number of trials averaged.
    """
    y = as_numpy(trials, "trials")
    ids = np.asarray(stimulus_ids).ravel()
    if len(ids) != len(y):
        raise ValueError(f"stimulus_ids has {len(ids)} entries but trials has {len(y)} rows")
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if len(y) == 0:
        return y.copy(), unique, counts
    sums = np.add.reduceat(y[order], starts, axis=0)
    means = sums / counts.reshape(-1, *([1] * (y.ndim - 1)))
    return means, unique, counts


def pearson_per_pixel(pred: Any, target: Any, mask: Any | None = None) -> np.ndarray:
    """Pearson r of each pixel across stimuli.

    Args:
        pred: ``(S, H, W)`` or ``(S, P)`` one predicted map per stimulus.
        target: same shape, the measured maps (averaged over repeats) or the true maps.
        mask: optional bool ``(H, W)``; only its pixels are scored.

    Returns:
        ``(P_in,)`` r per pixel; NaN where the prediction or the target is constant
        across stimuli (r is undefined there).
    """
    p, t = flatten_maps(pred, mask, "pred"), flatten_maps(target, mask, "target")
    _check_pair(p, t)
    if len(p) < 2:
        raise ValueError(f"Pearson r across stimuli needs at least 2 stimuli, got {len(p)}")
    pc, tc = p - p.mean(0), t - t.mean(0)
    den = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / den
    # exact test for constants: centring a constant in floating point leaves rounding
    # residue whose "correlation" would be +-1
    r[(np.ptp(p, axis=0) == 0) | (np.ptp(t, axis=0) == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _r2(p: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    sse = ((t - p) ** 2).sum(axis)
    sst = ((t - t.mean(axis, keepdims=True)) ** 2).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - sse / sst
    r2[np.ptp(t, axis=axis) == 0] = np.nan
    return r2


def r2_per_map(pred: Any, target: Any, mask: Any | None = None) -> np.ndarray:
    """R^2 of each map over its in-mask pixels: ``1 - SSE / SST``, SST around the map's
    own in-mask mean (predicting that constant scores 0).

    Shapes as in :func:`pearson_per_pixel`; returns ``(S,)`` (NaN for a constant target).
    """
    p, t = flatten_maps(pred, mask, "pred"), flatten_maps(target, mask, "target")
    _check_pair(p, t)
    return _r2(p, t, axis=1)


def r2_per_pixel(pred: Any, target: Any, mask: Any | None = None) -> np.ndarray:
    """R^2 of each pixel across stimuli (SST around the pixel's mean over stimuli).

    Shapes as in :func:`pearson_per_pixel`; returns ``(P_in,)``.
    """
    p, t = flatten_maps(pred, mask, "pred"), flatten_maps(target, mask, "target")
    _check_pair(p, t)
    return _r2(p, t, axis=0)


def ncsnr(trials: Any, stimulus_ids: Any, mask: Any | None = None) -> np.ndarray:
    """NSD's noise-ceiling signal-to-noise ratio of each pixel (see the module docstring).

    Args:
        trials: ``(T, H, W)`` or ``(T, P)`` single-trial responses.
        stimulus_ids: ``(T,)`` stimulus of each trial; at least one stimulus must have
            two or more trials.
        mask: optional bool ``(H, W)``.

    Returns:
        ``(P_in,)`` ``sqrt(max(0, 1 - s2)) / sqrt(s2)`` with ``s2`` the mean unbiased
        within-stimulus variance of the responses z-scored per pixel over all trials
        (population std). ``inf`` where there is no noise, NaN for constant pixels.

    The repeats must be independent measurements. NSD spreads them over sessions;
    repeats within one session share that session's offsets and gains, which look
    like signal, so the ceiling comes out too high. Measured on ``sim:demo``: the true
    noiseless maps reach ``r^2 / NC`` = 1.00 (median over pixels) on the ``val`` split,
    where 194 of 200 stimuli per subject repeat across sessions, but only 0.85-0.90 on
    ``test``, where the 18-28 repeated stimuli repeat within one session.
    """
    y = flatten_maps(trials, mask, "trials")
    ids = np.asarray(stimulus_ids).ravel()
    if len(ids) != len(y):
        raise ValueError(f"stimulus_ids has {len(ids)} entries but trials has {len(y)} rows")
    sd = y.std(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (y - y.mean(0)) / sd
    means, _, counts = average_repeats(z, ids)
    _, inverse = np.unique(ids, return_inverse=True)
    resid2 = (z - means[inverse]) ** 2
    sq, _, _ = average_repeats(resid2, ids)  # mean squared deviation per stimulus
    keep = counts >= 2
    if not keep.any():
        raise ValueError("the noise ceiling needs repeats: no stimulus has two or more trials")
    # unbiased within-stimulus variance: sum of squares / (n - 1)
    var = sq[keep] * (counts[keep] / (counts[keep] - 1))[:, None]
    s2 = var.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(np.maximum(0.0, 1.0 - s2)) / np.sqrt(s2)
    out[np.ptp(y, axis=0) == 0] = np.nan
    return out


def noise_ceiling(ncsnr_values: Any, num_averaged: Any) -> np.ndarray:
    """Noise ceiling in percent of variance: ``100 * ncsnr^2 / (ncsnr^2 + k)``.

    Args:
        ncsnr_values: ``(P,)`` from :func:`ncsnr`.
        num_averaged: the number of trials averaged in each evaluated map: an int (``k =
            1/n``) or ``(S,)`` counts per stimulus (``k = mean(1/n_i)``, NSD's
            ``(A/3 + B/2 + C/1) / (A + B + C)``).

    Returns:
        ``(P,)`` NC in percent (0..100); 100 where ``ncsnr`` is infinite.
    """
    snr2 = as_numpy(ncsnr_values, "ncsnr_values") ** 2
    n = as_numpy(num_averaged, "num_averaged").ravel()
    if len(n) == 0 or (n < 1).any():
        raise ValueError(f"num_averaged must be counts >= 1, got {n[:5].tolist()}")
    k = float(np.mean(1.0 / n))
    with np.errstate(invalid="ignore"):
        nc = 100.0 * snr2 / (snr2 + k)
    nc[np.isinf(snr2)] = 100.0
    return nc


def noise_normalized(explained: Any, nc_percent: Any) -> np.ndarray:
    """Explained variance (``r^2`` or ``R^2`` per pixel) over the noise ceiling.

    Args:
        explained: ``(P,)`` explained-variance fraction per pixel (0..1 scale).
        nc_percent: ``(P,)`` noise ceiling in percent, from :func:`noise_ceiling`.

    Returns:
        ``(P,)`` ``explained / (nc_percent / 100)``; NaN where ``nc_percent <= 0``. Not
        clipped: values above 1 mean the ceiling estimate is low or the data overfit.
    """
    e, nc = as_numpy(explained, "explained"), as_numpy(nc_percent, "nc_percent")
    if e.shape != nc.shape:
        raise ValueError(f"explained {e.shape} and nc_percent {nc.shape} must match")
    out = np.full_like(e, np.nan)
    ok = nc > 0
    out[ok] = e[ok] / (nc[ok] / 100.0)
    return out


def noise_normalized_r(r: Any, nc_percent: Any) -> np.ndarray:
    """Algonauts 2023 noise-normalized encoding accuracy of per-pixel correlations.

    Args:
        r: ``(P,)`` Pearson r per pixel (:func:`pearson_per_pixel`).
        nc_percent: ``(P,)`` noise ceiling in percent (:func:`noise_ceiling`).

    Returns:
        ``(P,)`` ``min(1, max(r, 0)^2 / (nc_percent / 100))`` (a fraction; the challenge
        prints it times 100); NaN where ``nc_percent <= 0`` or r is undefined.
    """
    rr = as_numpy(r, "r")
    out = noise_normalized(np.maximum(rr, 0.0) ** 2, nc_percent)
    out[np.isnan(rr)] = np.nan
    return np.minimum(out, 1.0)


@dataclass
class EncodingResult:
    """Per-pixel and summary encoding scores of one model on one subject's held-out set.

    Attributes:
        r: ``(P_in,)`` Pearson r per pixel against the repeat-averaged measured maps.
        r2_map: ``(S,)`` R^2 of each predicted map.
        r2_pixel: ``(P_in,)`` R^2 per pixel across stimuli.
        nc: ``(P_in,)`` noise ceiling (percent) of the repeat-averaged maps, or None
            when no stimulus has repeats.
        r_truth: ``(P_in,)`` Pearson r against the true noiseless maps, or None.
        summary: the numbers a table shows (see :func:`encoding_scores`).
    """

    r: np.ndarray
    r2_map: np.ndarray
    r2_pixel: np.ndarray
    nc: np.ndarray | None = None
    r_truth: np.ndarray | None = None
    summary: dict[str, float] = field(default_factory=dict)


def _nan_stat(fn: Any, x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(fn(x)) if len(x) else float("nan")


def encoding_scores(
    pred: Any,
    trials: Any,
    stimulus_ids: Any,
    mask: Any | None = None,
    pred_ids: Any | None = None,
    truth: Any | None = None,
) -> EncodingResult:
    """Score one predicted map per stimulus against held-out trials.

    Args:
        pred: ``(S, H, W)`` predicted maps, one per unique stimulus, in the order of
            ``pred_ids`` (default: sorted unique ``stimulus_ids``).
        trials: ``(T, H, W)`` measured single-trial maps.
        stimulus_ids: ``(T,)`` stimulus of each trial.
        mask: bool ``(H, W)`` pixels to score (the cortex mask).
        pred_ids: ``(S,)`` stimulus of each predicted map.
        truth: ``(S, H, W)`` true noiseless maps in the order of ``pred`` (embedded data).

    Returns:
        :class:`EncodingResult`; ``summary`` has ``r_mean``, ``r_median``,
        ``r2_map_mean``, ``r2_pixel_mean`` and, with repeats, ``nc_median`` (percent),
        ``nnea_mean`` / ``nnea_median`` (Algonauts: :func:`noise_normalized_r`),
        ``r2_over_nc_median`` (``r^2 / NC``, uncapped) and ``R2_over_nc_median``
        (``R^2 / NC``, uncapped), and with ``truth`` ``r_truth_mean`` /
        ``r_truth_median``. Means and medians skip undefined (NaN) pixels.
    """
    return held_out_maps(trials, stimulus_ids, mask).score(pred, pred_ids, truth)


@dataclass
class HeldOutMaps:
    """One subject's held-out trials, summarized once so that many predictions (a
    model and its baselines) are scored against them without averaging the repeats and
    estimating the noise ceiling again for each (:func:`held_out_maps`).

    Attributes:
        means: ``(S, P_in)`` repeat-averaged in-mask maps, one per stimulus.
        ids: ``(S,)`` sorted unique stimulus ids.
        counts: ``(S,)`` trials averaged in each row of ``means``.
        snr: ``(P_in,)`` :func:`ncsnr` of the trials, or None when no stimulus repeats.
        mask: the bool ``(H, W)`` mask the maps were scored in, or None.
    """

    means: np.ndarray
    ids: np.ndarray
    counts: np.ndarray
    snr: np.ndarray | None
    mask: np.ndarray | None

    def score(
        self, pred: Any, pred_ids: Any | None = None, truth: Any | None = None
    ) -> EncodingResult:
        """:func:`encoding_scores` of ``pred`` against these trials (arguments as there)."""
        p = flatten_maps(pred, self.mask, "pred")
        means, counts = self.means, self.counts
        if pred_ids is not None:
            want = np.asarray(pred_ids).ravel()
            ids = self.ids
            pos = np.searchsorted(ids, want).clip(0, max(len(ids) - 1, 0))
            if len(want) != len(p) or len(ids) == 0 or (ids[pos] != want).any():
                raise ValueError(
                    "pred_ids must list, for each predicted map, a stimulus present in stimulus_ids"
                )
            means, counts = means[pos], counts[pos]
        elif len(p) != len(self.ids):
            raise ValueError(
                f"pred has {len(p)} maps but the trials show {len(self.ids)} unique stimuli; "
                "pass pred_ids to say which stimulus each prediction is for"
            )
        res = EncodingResult(
            r=pearson_per_pixel(p, means),
            r2_map=r2_per_map(p, means),
            r2_pixel=r2_per_pixel(p, means),
        )
        s = res.summary
        s["r_mean"], s["r_median"] = _nan_stat(np.mean, res.r), _nan_stat(np.median, res.r)
        s["r2_map_mean"] = _nan_stat(np.mean, res.r2_map)
        s["r2_pixel_mean"] = _nan_stat(np.mean, res.r2_pixel)
        if self.snr is not None:
            res.nc = noise_ceiling(self.snr, counts)
            s["nc_median"] = _nan_stat(np.median, res.nc)
            nnea = noise_normalized_r(res.r, res.nc)
            s["nnea_mean"], s["nnea_median"] = _nan_stat(np.mean, nnea), _nan_stat(np.median, nnea)
            s["r2_over_nc_median"] = _nan_stat(np.median, noise_normalized(res.r**2, res.nc))
            s["R2_over_nc_median"] = _nan_stat(np.median, noise_normalized(res.r2_pixel, res.nc))
        if truth is not None:
            res.r_truth = pearson_per_pixel(p, flatten_maps(truth, self.mask, "truth"))
            s["r_truth_mean"] = _nan_stat(np.mean, res.r_truth)
            s["r_truth_median"] = _nan_stat(np.median, res.r_truth)
        return res


def held_out_maps(trials: Any, stimulus_ids: Any, mask: Any | None = None) -> HeldOutMaps:
    """Summarize held-out single trials ``(T, H, W)`` (or ``(T, P)``) of stimuli
    ``stimulus_ids`` ``(T,)`` for scoring: their repeat averages and, when some stimulus
    has two or more trials, their :func:`ncsnr`; ``mask`` as in :func:`encoding_scores`."""
    y = flatten_maps(trials, mask, "trials")
    means, ids, counts = average_repeats(y, stimulus_ids)
    snr = ncsnr(y, stimulus_ids) if (counts >= 2).any() else None
    m = None
    if mask is not None:
        m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool)
    return HeldOutMaps(means, ids, counts, snr, m)

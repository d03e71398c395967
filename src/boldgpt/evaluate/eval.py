"""``boldgpt eval``: every task that fits a model, with its baselines and ceilings.

:func:`evaluate_models` loads each model directory, picks its tasks from its class
(:func:`tasks_for`), scores them on one split of a source, and puts beside every model
number the baselines computed in the same run on the same rows:

==============  ========================================  ===================================
model class     task                                      baselines and ceilings
==============  ========================================  ===================================
IGPT            next-patch prediction, fixed and random   mean map, MaskedPCA next-patch
                orders (in-mask R², MSE; token NLL and    (``evaluate.metrics``); unigram
                accuracy for token models)                tokens (token models)
BEiT            masked prediction of a seeded random 50%  mean map, MaskedPCA from the
                of the patches (R² of the hidden pixels;  visible pixels
                token NLL and accuracy)                   (``evaluate.tasks``)
Image2BOLD      encoding: one map per held-out stimulus   mean map, ridge from the image
                against the repeat-averaged trials        encoder's token features, noise
                (``evaluate.encoding``); per subject,     ceiling; on ``sim:`` sources the
                then averaged over subjects               true noiseless maps and a per-pixel
                                                          fit of the simulator's true
                                                          receptive-field responses
CBIP            retrieval: top-1 among 300 over 30        chance; ridge from MaskedPCA
                draws, both directions; two-way           components of the maps to the
                identification (``evaluate.retrieval``)   image embeddings; identification
                                                          by encoding models (the image
                                                          ridge above; on ``sim:`` sources
                                                          the true-RF fit and the noiseless
                                                          maps: the ceiling)
Bold2Image      reconstruction: PixCorr, SSIM, two-way    the mean training image; chance
                identification (``evaluate.               (two-way)
                reconstruction``)
any map model   ``probe=True``: 24-way category decoding  PCA + logistic, PCA + MLP on the
                from frozen embeddings (within and        raw maps, majority class, chance
                cross subject; ``evaluate.probing``)
==============  ========================================  ===================================

Every metric comes from the metric modules named in the table; this module only reads
the data, runs the models and fits the baselines. Results are plain JSON-able dicts
(``eval.json``; :func:`write_eval` also writes ``eval.md`` and figures).

Ridge baselines (:func:`fit_ridge`) are fitted on the training split, per subject, on
repeat-averaged maps of each training stimulus; the penalty is chosen from a grid on a
held-out fifth of those stimuli, then refitted on all of them.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from boldgpt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, prepare_images
from boldgpt.errors import ConfigError, DataError

if TYPE_CHECKING:
    from boldgpt.evaluate.encoding import HeldOutMaps

TASKS = ("next_patch", "masked", "encoding", "retrieval", "reconstruction", "probe")
"""Task names, the keys of a model's results."""
EVAL_SEED = 1234
"""Seed of the random orders, masks, retrieval draws and subsets."""
MASK_RATIO = 0.5
"""Fraction of patches hidden in the BEiT masked-prediction task."""
RIDGE_ALPHAS = tuple(10.0**k for k in range(-2, 6))
"""Penalties tried by :func:`fit_ridge` (on standardized features)."""


# --------------------------------------------------------------------------- data


@dataclass
class SplitData:
    """The rows of one split: maps and ids, and the stimuli when images are cached.

    Attributes:
        maps: (T, H, W) float32 z-values.
        subject_id: (T,) int64.
        nsd_id: (T,) int64 stimulus of each row.
        mask: (H, W) bool.
        image_ids: (M,) int64 nsd ids of the cached stimuli (sorted), or None.
        images: (M, S, S, 3) uint8 stimuli (memory-mapped), or None; the stimulus of
            ``image_ids[k]`` is ``images[image_rows[k]]``.
        image_rows: (M,) int64.
    """

    maps: torch.Tensor
    subject_id: np.ndarray
    nsd_id: np.ndarray
    mask: np.ndarray
    image_ids: np.ndarray | None = None
    images: np.ndarray | None = None
    image_rows: np.ndarray | None = None

    def rows(self, subject: int) -> np.ndarray:
        """Indices of one subject's rows."""
        return np.flatnonzero(self.subject_id == subject)

    def images_of(self, nsd_ids: Any) -> np.ndarray:
        """(n, S, S, 3) uint8 stimuli of ``nsd_ids``."""
        if self.images is None or self.image_ids is None or self.image_rows is None:
            raise DataError("these rows were read without images")
        ids = np.asarray(nsd_ids, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, ids).clip(0, len(self.image_ids) - 1)
        if (self.image_ids[pos] != ids).any():
            raise DataError("some stimuli of the split have no cached image")
        return np.asarray(self.images[self.image_rows[pos]])


def load_split(
    source: str,
    split: str,
    *,
    image_size: int | None = None,
    subjects: Sequence[int] | None = None,
    max_rows: int | None = None,
    seed: int = EVAL_SEED,
) -> SplitData:
    """Read a split from the cache (built if needed), with stimuli of ``image_size`` px
    when given. ``max_rows`` keeps a seeded random subset of rows (in dataset order)."""
    from boldgpt.data.cache import CachedNSDFlat, build_cache
    from boldgpt.data.maps import cache_splits
    from boldgpt.data.transforms import dequantize

    cache_dir = build_cache(
        source, splits=cache_splits(split), subjects=subjects, image_size=image_size
    )
    ds = CachedNSDFlat(cache_dir, split, images=image_size is not None)
    n = len(ds)
    if n == 0:
        raise DataError(f"{source} has no maps in split {split!r}")
    idx = np.arange(n)
    if max_rows is not None and max_rows < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    maps = torch.cat(
        [
            dequantize(torch.from_numpy(np.asarray(ds.activity[idx[i : i + 1024]])))
            for i in range(0, len(idx), 1024)
        ]
    )
    data = SplitData(maps, ds.subject_ids[idx], ds.nsd_ids[idx], np.asarray(ds.mask, bool))
    if image_size is not None:
        rows = np.argsort(ds.image_nsd_ids)
        data.image_ids, data.image_rows = np.asarray(ds.image_nsd_ids)[rows], rows
        data.images = ds.images  # memory-mapped: only the stimuli asked for are read
    return data


def sim_root(source: str) -> Path | None:
    """The simulated dataset's directory of a ``sim:`` source (its ground truth), else
    None."""
    from boldgpt.data.sources import parse_source, sim_dir

    spec = parse_source(source)
    return sim_dir(spec.preset, spec.seed) if spec.kind == "sim" else None


# --------------------------------------------------------------------------- baselines


@dataclass
class Ridge:
    """A fitted ridge regression ``Y ~ X``, kept factorized:
    ``predict(X) = ((X - mu) / sd) @ v @ w + y0`` with ``v`` (d, k) the right singular
    vectors of the standardized training features and ``w`` (k, P) (k <= min(n, d), so
    wide features and wide targets cost no (d, P) matrix)."""

    mu: np.ndarray
    sd: np.ndarray
    v: np.ndarray
    w: np.ndarray
    y0: np.ndarray
    alpha: float

    def predict(self, x: Any) -> np.ndarray:
        """(m, d) features -> (m, P) predictions."""
        return (((np.asarray(x, np.float64) - self.mu) / self.sd) @ self.v) @ self.w + self.y0


def _ridge_factors(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(v, [w per alpha])`` of standardized ``x`` (n, d) and centred ``y`` (n, P) from
    one SVD: the coefficients are ``v @ w``."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return vt.T, [(s / (s**2 + a))[:, None] * uty for a in alphas]


def fit_ridge(
    x: Any, y: Any, alphas: Sequence[float] = RIDGE_ALPHAS, seed: int = EVAL_SEED
) -> Ridge:
    """Ridge regression of ``y`` (n, P) on ``x`` (n, d), features standardized, the
    penalty picked from ``alphas`` by the pooled R² on a held-out fifth of the rows, then
    refitted on all rows."""
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 5:
        raise ValueError(f"ridge needs >= 5 paired rows; got {len(x)} and {len(y)}")
    perm = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, len(x) // 5)
    val, fit = perm[:cut], perm[cut:]

    def standardize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu, sd = x[rows].mean(0), x[rows].std(0)
        sd = np.where(sd > 0, sd, 1.0)
        return (x[rows] - mu) / sd, mu, sd

    xs, mu, sd = standardize(fit)
    y0 = y[fit].mean(0)
    v, ws = _ridge_factors(xs, y[fit] - y0, alphas)
    xv = ((x[val] - mu) / sd) @ v
    sst = ((y[val] - y[val].mean(0)) ** 2).sum()
    scores = [1 - ((xv @ w + y0 - y[val]) ** 2).sum() / max(sst, 1e-12) for w in ws]
    alpha = float(alphas[int(np.argmax(scores))])
    xs, mu, sd = standardize(np.arange(len(x)))
    y0 = y.mean(0)
    v, (w,) = _ridge_factors(xs, y - y0, [alpha])
    return Ridge(mu, sd, v, w, y0, alpha)


def per_pixel_ols(features: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Least squares of each pixel on its own features: ``features`` (n, P, k), ``y``
    (n, P) -> coefficients (P, k + 1), the intercept first."""
    n, p, _ = features.shape
    f = np.concatenate([np.ones((n, p, 1)), features], axis=2).astype(np.float64)
    gram = np.einsum("npk,npl->pkl", f, f) + eps * np.eye(f.shape[2])
    rhs = np.einsum("npk,np->pk", f, y)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def truth_features(root: Path, subject: int, nsd_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n, P_in, 2) the simulator's true early (receptive-field) and category responses
    of each in-mask pixel to stimuli ``nsd_ids``, before its per-pixel mixing, gain and
    z-scoring (which :func:`per_pixel_ols` refits from training maps)."""
    from boldgpt.sim.truth import load_stimulus_truth, load_subject_model

    model = load_subject_model(root, subject)
    stim = load_stimulus_truth(root)
    pos = stim.positions(nsd_ids)
    early, categ = model.raw_response(np.asarray(stim.features[pos], np.float32), stim.drives[pos])
    return np.stack(
        [model.to_canvas(early)[:, mask], model.to_canvas(categ)[:, mask]], axis=2
    ).astype(np.float32)


# --------------------------------------------------------------------------- model helpers


def model_kind(model: Any) -> str:
    """The class name that decides a model's tasks."""
    return type(model).__name__


def tasks_for(model: Any, probe: bool = False) -> list[str]:
    """The tasks of :data:`TASKS` that fit a model (by its class; probing on request).

    Raises ConfigError for image models (they have no map task)."""
    kind = model_kind(model)
    if getattr(model.config, "is_image_model", False):
        raise ConfigError(
            f"{kind} model {getattr(model, 'registry_name', '')!r} reads images only: "
            "boldgpt eval scores models of BOLD maps"
        )
    tasks = {
        "IGPT": ["next_patch"],
        "BEiT": ["masked"],
        "Image2BOLD": ["encoding"],
        "CBIP": ["retrieval"],
        "Bold2Image": ["reconstruction"],
    }.get(kind)
    if tasks is None:
        raise ConfigError(f"boldgpt eval does not know the tasks of a {kind} model")
    if probe and kind != "Image2BOLD":  # an encoding model has no map embedding
        tasks = [*tasks, "probe"]
    return tasks


def _prepared_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (n, S, S, 3) -> normalized float (n, 3, S, S), as the training loader does."""
    return prepare_images(torch.from_numpy(images).to(device))


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def predict_encoding_maps(
    model: Any, images: np.ndarray, subject: int, batch_size: int = 64
) -> np.ndarray:
    """(n, H, W) the image2bold model's one-pass maps of stimuli ``images`` (n, S, S, 3)
    uint8 for one subject (every slot queried from the picture and the subject)."""
    from boldgpt.generate import complete

    p, dev = model.patchify, model.device
    out = []
    for sl in _batches(len(images), batch_size):
        x = _prepared_images(images[sl], dev)
        B = len(x)
        ctx = model.image_context(x)
        empty = torch.zeros(B, p.num_patches, dtype=torch.bool, device=dev)
        sid = torch.full((B,), subject, dtype=torch.long, device=dev)
        zeros = torch.zeros(B, p.num_patches, p.dim, device=dev)
        done = complete(
            model, zeros, empty, subject_id=sid, context=ctx, method="query", temperature=0.0
        )
        out.append(p.inverse(done).float().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def embed_maps(model: Any, maps: torch.Tensor, subject_id: Any, batch_size: int = 64) -> np.ndarray:
    """(T, D) frozen embeddings of maps (T, H, W): CBIP's BOLD embedding; for other
    models the mean over the backbone's outputs for the whole map (fixed order for
    IGPT, nothing masked for BEiT, the encoder of bold2image)."""
    dev = model.device
    sids = torch.as_tensor(np.asarray(subject_id), dtype=torch.long)
    captured: list[torch.Tensor] = []
    hook = None
    if model_kind(model) != "CBIP":
        hook = model.backbone.register_forward_hook(lambda m, i, o: captured.append(o))
    out = []
    try:
        for sl in _batches(len(maps), batch_size):
            x, s = maps[sl].to(dev), sids[sl].to(dev)
            kind = model_kind(model)
            if kind == "CBIP":
                out.append(model.encode_bold(x, s).float().cpu())
                continue
            captured.clear()
            if kind == "Bold2Image":
                model.bold_context(x, s)
            elif kind == "BEiT":
                model({"activity": x, "subject_id": s}, mask=torch.zeros(
                    len(x), model.num_patches, dtype=torch.bool, device=dev
                ))  # fmt: skip
            else:
                model({"activity": x, "subject_id": s}, order="fixed")
            out.append(captured[-1].float().mean(1).cpu())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- tasks


def _mean_over_subjects(per_subject: dict[int, dict[str, float]]) -> dict[str, float]:
    """Each key's mean over subjects (NaN-skipping; keys missing somewhere are kept from
    the subjects that have them)."""
    keys = {k for d in per_subject.values() for k in d}
    out = {}
    for k in sorted(keys):
        v = [d[k] for d in per_subject.values() if k in d and math.isfinite(d[k])]
        out[k] = float(np.mean(v)) if v else float("nan")
    return out


def next_patch_task(
    model: Any,
    data: SplitData,
    mean_map: torch.Tensor,
    pca: Any,
    batch_size: int = 64,
    train: SplitData | None = None,
) -> dict[str, Any]:
    """Next-patch scores of an IGPT model, the mean map and MaskedPCA, in the fixed order
    and (shuffled models) in random orders: ``{order: {method: scores}}``; token models
    also get the unigram baseline (token frequencies of ``train``)."""
    from boldgpt.evaluate import metrics

    p = _cpu_patchify(model)  # the baselines run on the CPU
    maps, sids = data.maps, torch.as_tensor(data.subject_id)
    kinds = ["fixed", "random"] if model.config.shuffle else ["fixed"]
    out: dict[str, Any] = {}
    mean_scores = metrics.mean_map_scores(mean_map, maps, p)
    for kind in kinds:
        orders = metrics.make_orders(kind, len(maps), p.num_patches, EVAL_SEED, batch_size)
        out[kind] = {
            "model": metrics.model_next_patch_scores(model, maps, sids, orders, batch_size),
            "mean map": mean_scores,
            "MaskedPCA": metrics.pca_next_patch_scores(pca, maps, p, orders, batch_size),
        }
        if model.tokenizer is not None and train is not None:
            nll = unigram_nll(model, train, maps)
            out[kind]["unigram tokens"] = {"loss": nll, "nll": nll}
    return out


@torch.no_grad()
def unigram_nll(model: Any, train: SplitData, maps: torch.Tensor) -> float:
    """NLL (nats per patch) of the token ids of ``maps`` under the token frequencies of
    the training maps (:func:`boldgpt.evaluate.metrics.unigram_nll`)."""
    from boldgpt.evaluate import metrics

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [model.encode_targets(model.patchify(x[sl].to(model.device))).cpu()
             for sl in _batches(len(x), 256)]
        )  # fmt: skip

    return metrics.unigram_nll(tokens(train.maps), tokens(maps), model.tokenizer.vocab_size)


def _cpu_patchify(model: Any) -> Any:
    import copy

    return copy.deepcopy(model.patchify).cpu()


@torch.no_grad()
def masked_task(
    model: Any,
    data: SplitData,
    mean_map: torch.Tensor,
    pca: Any,
    batch_size: int = 64,
    train: SplitData | None = None,
) -> dict[str, Any]:
    """BEiT masked prediction of a seeded random :data:`MASK_RATIO` of each map's
    patches: R² of the hidden in-mask pixels (:func:`boldgpt.evaluate.tasks.hidden_r2`)
    of the model, MaskedPCA from the visible pixels and the mean map; token NLL and
    accuracy on the hidden patches of token models."""
    from boldgpt.evaluate import metrics, tasks

    p, dev = model.patchify, model.device
    maps, sids = data.maps, torch.as_tensor(data.subject_id)
    n_patch = p.num_patches
    observed = tasks.observed_patches(p, len(maps), "random", 1 - MASK_RATIO, EVAL_SEED)
    filled, nll, acc, n_tok = [], 0.0, 0.0, 0
    for sl in _batches(len(maps), batch_size):
        x = maps[sl].to(dev)
        hidden = ~observed[sl].to(dev)
        out = model({"activity": x, "subject_id": sids[sl].to(dev)}, mask=hidden)
        pred = model.output_to_patches(out.output.float())
        done = torch.where(hidden[..., None], pred, out.patches)
        filled.append(p.inverse(done).float().cpu())
        if model.tokenizer is not None:
            m = metrics.token_metrics(out.output[hidden], out.target[hidden])
            k = int(hidden.sum())
            nll, acc, n_tok = nll + m["nll"] * k, acc + m["accuracy"] * k, n_tok + k
    observed_px = tasks.observed_pixels(p, observed)
    mask = p.mask.cpu()
    model_scores = {"r2": tasks.hidden_r2(torch.cat(filled), maps, observed_px, mask)}
    if n_tok:
        model_scores.update(nll=nll / n_tok, accuracy=acc / n_tok)
    pca_done = tasks.pca_completions(pca, maps, observed_px)
    mean_done = tasks.mean_map_completions(mean_map, maps, observed_px)
    rows = {
        "model": model_scores,
        "mean map": {"r2": tasks.hidden_r2(mean_done, maps, observed_px, mask)},
        "MaskedPCA": {"r2": tasks.hidden_r2(pca_done, maps, observed_px, mask)},
    }
    if n_tok and train is not None:
        rows["unigram tokens"] = {"nll": unigram_nll(model, train, maps)}
    return {f"random {MASK_RATIO:.0%} hidden": rows, "num_patches": n_patch}


def _stimulus_means(data: SplitData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeat-averaged in-mask maps (S, P_in) of rows, their sorted nsd ids and counts."""
    from boldgpt.evaluate.encoding import average_repeats

    return average_repeats(data.maps[rows].numpy()[:, data.mask], data.nsd_id[rows])


def encoding_task(
    model: Any,
    data: SplitData,
    train: SplitData,
    mean_map: torch.Tensor,
    truth_root: Path | None = None,
    batch_size: int = 64,
    memo: dict[Any, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Encoding scores per subject, averaged over subjects, of the model and baselines.

    ``memo``: a dict shared by the calls of one evaluation (same data): the baselines'
    maps are computed once per subject and image encoder (identified by its weights).

    Returns ``(results, pixel_r)``: results ``{"mean": {method: summary}, "per_subject":
    {subject: {method: summary}}}`` (summaries of
    :func:`boldgpt.evaluate.encoding.encoding_scores`) and the per-pixel r (P_in,) of
    each method averaged over subjects (the encoding-accuracy map)."""
    mask = data.mask
    per_subject: dict[int, dict[str, dict[str, float]]] = {}
    pixel_r: dict[str, list[np.ndarray]] = {}
    memo = {} if memo is None else memo
    for s in np.unique(data.subject_id):
        held = _held_out(data, int(s), memo)
        ids = held.ids
        truth = None
        if truth_root is not None:
            from boldgpt.sim.truth import load_ground_truth

            truth = load_ground_truth(truth_root, int(s), ids)
        preds: dict[str, np.ndarray] = {
            "model": predict_encoding_maps(model, data.images_of(ids), int(s), batch_size)
        }
        preds.update(
            _encoding_baselines(model, data, train, int(s), ids, truth_root, batch_size, memo)
        )
        preds["mean map"] = np.broadcast_to(mean_map.numpy(), (len(ids), *mask.shape))
        if truth is not None:
            preds["noiseless truth"] = truth
        scores = {}
        for name, pred in preds.items():
            res = held.score(pred, pred_ids=ids, truth=truth)
            scores[name] = res.summary
            pixel_r.setdefault(name, []).append(res.r)
            if name == "model" and res.nc is not None:
                pixel_r.setdefault("noise ceiling (% variance)", []).append(res.nc)
        per_subject[int(s)] = scores
    methods = list(dict.fromkeys(m for d in per_subject.values() for m in d))
    mean = {
        m: _mean_over_subjects({s: d[m] for s, d in per_subject.items() if m in d}) for m in methods
    }
    # the figure: methods with a defined r (not the constant mean map), the ceiling last
    ceiling = pixel_r.pop("noise ceiling (% variance)", None)
    if ceiling is not None:
        pixel_r["noise ceiling (% variance)"] = ceiling
    maps = {}
    for k, v in pixel_r.items():
        stacked = np.stack(v)
        if np.isfinite(stacked).any():
            with warnings.catch_warnings():  # pixels undefined for every subject stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                maps[k] = np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), 0)
    return {"mean": mean, "per_subject": {str(s): d for s, d in per_subject.items()}}, maps


def _held_out(data: SplitData, s: int, memo: dict[Any, Any]) -> HeldOutMaps:
    """Subject ``s``'s held-out trials summarized for scoring (repeat averages, noise
    ceiling), once per evaluation in ``memo``."""
    from boldgpt.evaluate.encoding import held_out_maps

    key = ("held out", s)
    if key not in memo:
        rows = data.rows(s)
        memo[key] = held_out_maps(data.maps[rows].numpy(), data.nsd_id[rows], data.mask)
    return memo[key]


def _encoding_baselines(
    model: Any,
    data: SplitData,
    train: SplitData,
    s: int,
    ids: np.ndarray,
    truth_root: Path | None,
    batch_size: int,
    memo: dict[Any, Any],
) -> dict[str, np.ndarray]:
    """Subject ``s``'s encoding baselines for the stimuli ``ids``: a ridge from the
    model's frozen image encoder's features and, on simulated data, a per-pixel fit of
    the simulator's true receptive-field responses; maps (n, H, W). Computed once per
    subject and image encoder (identified by its weights) in ``memo``."""
    key = ("encoding baselines", s, _weights_key(model.image_encoder))
    if key in memo:
        return memo[key]
    mask = data.mask
    out: dict[str, np.ndarray] = {}
    train_rows = train.rows(s)
    if len(train_rows):
        y, train_ids, _ = _stimulus_means(train, train_rows)
        feats = _encoder_features(model, train.images_of(train_ids), batch_size)
        ridge = fit_ridge(feats, y)
        test_feats = _encoder_features(model, data.images_of(ids), batch_size)
        out["ridge (image features)"] = _to_maps(ridge.predict(test_feats), mask)
        if truth_root is not None:
            # one call for both sets: the simulator's forward model has a fixed cost
            both = truth_features(truth_root, s, np.concatenate([train_ids, ids]), mask)
            coef = per_pixel_ols(both[: len(train_ids)], y)
            f = both[len(train_ids) :]
            fitted = coef[None, :, 0] + np.einsum("npk,pk->np", f, coef[:, 1:])
            out["true RF features (per-pixel fit)"] = _to_maps(fitted, mask)
    memo[key] = out
    return out


def _weights_key(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers: equal only for equal weights."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _to_maps(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros((len(values), *mask.shape), np.float32)
    out[:, mask] = values
    return out


@torch.no_grad()
def _encoder_features(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(n, M * C) the model's frozen image encoder's token features, flattened."""
    enc, dev = model.image_encoder, model.device
    out = [
        enc(_prepared_images(images[sl], dev)).tokens.flatten(1).float().cpu().numpy()
        for sl in _batches(len(images), batch_size)
    ]
    return np.concatenate(out)


@torch.no_grad()
def retrieval_task(
    model: Any,
    data: SplitData,
    train: SplitData,
    pca: Any,
    batch_size: int = 64,
    truth_root: Path | None = None,
    memo: dict[Any, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CBIP retrieval per subject (maps averaged over the repeats of each stimulus
    against that stimulus's image embedding), averaged over subjects; beside chance, a
    ridge from the maps' MaskedPCA components to the image embeddings, and
    identification by encoding models (the classic route: each candidate picture's
    predicted map, Pearson-correlated with the measured map, same candidates and
    draws): the encoding task's ridge from the image encoder's token features and, on
    simulated data (``truth_root``), the fit of the true receptive-field responses and
    the true noiseless maps (the ceiling). ``memo``: as in :func:`encoding_task`.

    Returns ``(results, example)``: results ``{"mean": {method: scores}, "per_subject":
    ...}`` with ``map_to_image`` / ``image_to_map`` top-1 among ``num_candidates`` (300
    or the number of stimuli) over 30 draws, their spread, two-way identification both
    ways and ``chance``; ``example`` the first subject's similarity matrix and ids (the
    retrieval grid figure)."""
    from boldgpt.evaluate.encoding import average_repeats
    from boldgpt.evaluate.retrieval import similarity, top1_among, two_way_identification

    dev = model.device

    def image_embeddings(images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                model.embed_images(_prepared_images(images[sl], dev)).float().cpu().numpy()
                for sl in _batches(len(images), batch_size)
            ]
        )

    def pca_coefs(maps: torch.Tensor) -> np.ndarray:
        return pca.encode(maps).float().numpy()

    per_subject: dict[int, dict[str, dict[str, float]]] = {}
    example: dict[str, Any] = {}
    memo = {} if memo is None else memo
    for s in np.unique(data.subject_id):
        rows = data.rows(s)
        emb = embed_maps(model, data.maps[rows], data.subject_id[rows], batch_size)
        bold, ids, _ = average_repeats(emb, data.nsd_id[rows])
        if len(ids) < 2:
            continue
        img = image_embeddings(data.images_of(ids))
        # method -> (map side (n, d), image side (n, d), similarity metric), row i = ids[i]
        pairs = {"model": (bold, img, "cosine")}
        train_rows = train.rows(s)
        if len(train_rows) >= 5:
            tr_coef, tr_ids, _ = average_repeats(pca_coefs(train.maps[train_rows]),
                                                 train.nsd_id[train_rows])  # fmt: skip
            ridge = fit_ridge(tr_coef, image_embeddings(train.images_of(tr_ids)))
            te_coef, _, _ = average_repeats(pca_coefs(data.maps[rows]), data.nsd_id[rows])
            pairs["ridge (MaskedPCA of maps)"] = (ridge.predict(te_coef), img, "cosine")
        pairs.update(
            _identification_pairs(model, data, train, int(s), ids, truth_root, memo, batch_size)
        )
        k = min(300, len(ids))
        scores = {}
        for name, (a, b, metric) in pairs.items():
            sim = similarity(a, b, metric)
            top = top1_among(sim, k, num_draws=30, seed=EVAL_SEED)
            two = two_way_identification(sim)
            scores[name] = {
                "map_to_image": top["a_to_b"],
                "image_to_map": top["b_to_a"],
                # draws of every stimulus give the same set: a spread of rounding residue
                "map_to_image_std": round(top["a_to_b_std"], 12),
                "image_to_map_std": round(top["b_to_a_std"], 12),
                "two_way_map_to_image": two["a_to_b"],
                "two_way_image_to_map": two["b_to_a"],
                "num_candidates": float(k),
            }
        scores["chance"] = {"map_to_image": 1 / k, "image_to_map": 1 / k,
                            "two_way_map_to_image": 0.5, "two_way_image_to_map": 0.5}  # fmt: skip
        per_subject[int(s)] = scores
        if not example:
            example = {"sim": similarity(bold, img), "nsd_id": ids, "subject": int(s)}
    if not per_subject:
        raise DataError("retrieval needs at least 2 stimuli of one subject in the split")
    methods = list(dict.fromkeys(m for d in per_subject.values() for m in d))
    mean = {
        m: _mean_over_subjects({s: d[m] for s, d in per_subject.items() if m in d}) for m in methods
    }
    return {"mean": mean, "per_subject": {str(s): d for s, d in per_subject.items()}}, example


def _identification_pairs(
    model: Any,
    data: SplitData,
    train: SplitData,
    s: int,
    ids: np.ndarray,
    truth_root: Path | None,
    memo: dict[Any, Any],
    batch_size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Subject ``s``'s identification by encoding models: (repeat-averaged measured
    maps (n, P_in), predicted maps (n, P_in), "pearson") per encoding model, rows in
    the order of the sorted ``ids``."""
    predicted = dict(_encoding_baselines(model, data, train, s, ids, truth_root, batch_size, memo))
    if truth_root is not None:
        from boldgpt.sim.truth import load_ground_truth

        predicted["noiseless truth"] = load_ground_truth(truth_root, s, ids)
    held = _held_out(data, s, memo)
    measured, measured_ids = held.means, held.ids
    if not np.array_equal(measured_ids, ids):
        raise DataError(f"subject {s}: measured and predicted maps of different stimuli")
    names = {
        "ridge (image features)": "identification: ridge encoding (image features -> map)",
        "true RF features (per-pixel fit)": "identification: true RF features encoding",
        "noiseless truth": "identification: noiseless truth (ceiling)",
    }
    return {names[n]: (measured, p[:, data.mask], "pearson") for n, p in predicted.items()}


@torch.no_grad()
def reconstruct_images(
    model: Any, maps: torch.Tensor, subject_id: Any, batch_size: int = 64
) -> np.ndarray:
    """(n, S, S, 3) float images in [0, 1]: bold2image's one-pass reconstruction of maps
    (n, H, W) (the decoder's expected picture, un-normalized with ImageNet's mean and std
    as the training loader normalized the targets)."""
    from boldgpt.generate import complete

    d, dev = model.decoder, model.device
    sids = torch.as_tensor(np.asarray(subject_id), dtype=torch.long)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for sl in _batches(len(maps), batch_size):
        ctx = model.bold_context(maps[sl].to(dev), sids[sl].to(dev))
        B = len(ctx)
        empty = torch.zeros(B, d.num_patches, dtype=torch.bool, device=dev)
        zeros = torch.zeros(B, d.num_patches, d.patchify.dim, device=dev)
        done = complete(d, zeros, empty, context=ctx, method="query", temperature=0.0)
        img = d.patchify.inverse(done).float().cpu() * std + mean
        out.append(img.clamp(0, 1).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def reconstruction_task(
    model: Any,
    data: SplitData,
    train: SplitData,
    feature_encoder: Any = None,
    batch_size: int = 64,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """bold2image reconstructions of the repeat-averaged maps of each held-out stimulus,
    per subject, scored with PixCorr, SSIM and two-way identification (in
    ``feature_encoder``'s pooled features when given, else in pixel space), beside the
    mean training image and chance. Returns ``(results, example)`` (the first subject's
    true and reconstructed images, for the figure)."""
    from boldgpt.evaluate.encoding import average_repeats
    from boldgpt.evaluate.reconstruction import reconstruction_scores

    def features(images: np.ndarray) -> np.ndarray:
        if feature_encoder is None:
            return images.reshape(len(images), -1)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=feature_encoder.image_size, mode="bilinear")
        m = torch.tensor(feature_encoder.mean).view(1, 3, 1, 1)
        sd = torch.tensor(feature_encoder.std).view(1, 3, 1, 1)
        with torch.no_grad():
            return feature_encoder((x - m) / sd).pooled.float().numpy()

    mean_image = train.images_of(np.unique(train.nsd_id)).astype(np.float64).mean(0) / 255.0
    per_subject: dict[int, dict[str, dict[str, float]]] = {}
    example: dict[str, np.ndarray] = {}
    for s in np.unique(data.subject_id):
        rows = data.rows(s)
        maps, ids, _ = average_repeats(data.maps[rows].numpy(), data.nsd_id[rows])
        if len(ids) < 2:
            continue
        recon = reconstruct_images(
            model, torch.from_numpy(maps).float(), np.full(len(ids), s), batch_size
        )
        true = data.images_of(ids).astype(np.float64) / 255.0
        true_f = features(true.astype(np.float32))
        scores = {"model": reconstruction_scores(recon, true, features(recon), true_f)}
        mean_rep = np.broadcast_to(mean_image, true.shape)
        scores["mean image"] = reconstruction_scores(mean_rep, true)
        scores["chance"] = {"two_way": 0.5}
        per_subject[int(s)] = scores
        if not example:
            example = {"true": true, "recon": recon, "nsd_id": ids}
    if not per_subject:
        raise DataError("reconstruction needs at least 2 stimuli of one subject in the split")
    methods = list(dict.fromkeys(m for d in per_subject.values() for m in d))
    mean = {
        m: _mean_over_subjects({s: d[m] for s, d in per_subject.items() if m in d}) for m in methods
    }
    feature_space = "pixels" if feature_encoder is None else feature_encoder.name or "encoder"
    return {
        "mean": mean,
        "per_subject": {str(s): d for s, d in per_subject.items()},
        "two_way_feature_space": feature_space,
    }, example


def category_labeller(
    sim_dir: Path | None, nsd_dir: str | os.PathLike | None
) -> Callable[[np.ndarray], np.ndarray]:
    """nsd ids -> 24-way benchmark labels (-1 outside the 24): from the benchmark's
    metadata files in ``nsd_dir`` (real NSD,
    :func:`boldgpt.evaluate.probing.load_nsd_category_labels`), else from the main object
    of each stimulus of the simulated dataset at ``sim_dir``."""
    from boldgpt.evaluate.probing import coco_to_label, load_nsd_category_labels

    if nsd_dir is not None:
        table = load_nsd_category_labels(nsd_dir)
        return lambda ids: table[np.asarray(ids, dtype=np.int64)]
    if sim_dir is None:
        raise DataError(
            "category decoding needs labels: a sim: source (the simulator's truth) or "
            "--nsd-labels DIR with the benchmark's nsd_clip_coco_targets.npy and "
            "nsd_include_coco_categories.json"
        )
    from boldgpt.sim.truth import load_stimulus_truth

    stim = load_stimulus_truth(sim_dir)
    return lambda ids: coco_to_label(stim.label[stim.positions(ids)])


def probe_task(
    model: Any,
    data: SplitData,
    train: SplitData,
    labels: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    memo: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """24-way category decoding from single trials (``labels``: nsd ids -> label, -1 for
    rows to drop): a linear probe on the model's frozen embeddings beside PCA(96) +
    logistic regression and PCA(96) + MLP on the raw maps and the majority class, within
    subject and across subjects (leave one out; with two or more subjects). Returns
    ``{scheme: {method: {"accuracy", "mean_subject_accuracy"}}}`` plus a ``chance`` row.

    ``memo``: a dict shared by the calls of one evaluation (same data and labels): the
    raw-map baselines, which do not depend on the model, are fitted once."""
    from boldgpt.evaluate import probing

    def labelled(d: SplitData) -> tuple[np.ndarray, np.ndarray]:
        y = labels(d.nsd_id)
        return np.flatnonzero(y >= 0), y

    tr_rows, tr_y = labelled(train)
    te_rows, te_y = labelled(data)
    if len(tr_rows) < 10 or len(te_rows) < 2:
        raise DataError("category decoding needs labelled training and test rows")
    # a within-subject fit sees one subject's rows: PCA needs fewer components than that
    smallest = np.unique(train.subject_id[tr_rows], return_counts=True)[1].min()
    n_comp = int(min(96, smallest - 1))
    schemes = ["within"]
    if len(np.unique(train.subject_id[tr_rows])) >= 2:
        schemes.append("cross")

    def scores(make: Callable[[], Any], xtr: np.ndarray, xte: np.ndarray) -> dict[str, Any]:
        """One classifier's accuracy per scheme."""
        out = {}
        for scheme in schemes:
            res = probing.evaluate_probe(
                make, xtr, tr_y[tr_rows], xte, te_y[te_rows], scheme,
                train.subject_id[tr_rows], data.subject_id[te_rows],
            )  # fmt: skip
            out[scheme] = {
                "accuracy": res.accuracy,
                "mean_subject_accuracy": res.mean_subject_accuracy,
            }
        return out

    methods = {
        "linear probe (model)": scores(
            probing.linear_probe,
            embed_maps(model, train.maps[tr_rows], train.subject_id[tr_rows], batch_size),
            embed_maps(model, data.maps[te_rows], data.subject_id[te_rows], batch_size),
        )
    }
    memo = {} if memo is None else memo
    if "probe baselines" not in memo:  # the raw maps' classifiers: the same for every model
        raw_tr = train.maps[tr_rows].numpy()[:, train.mask]
        raw_te = data.maps[te_rows].numpy()[:, data.mask]
        memo["probe baselines"] = {
            f"PCA({n_comp}) + logistic": scores(
                lambda: probing.pca_logistic(n_comp), raw_tr, raw_te
            ),
            f"PCA({n_comp}) + MLP": scores(lambda: probing.pca_mlp(n_comp), raw_tr, raw_te),
            "majority class": scores(probing.majority_class, raw_tr[:, :1], raw_te[:, :1]),
        }
    methods.update(memo["probe baselines"])
    chance = {"accuracy": 1.0 / probing.NUM_CLASSES}
    return {
        scheme: {**{name: m[scheme] for name, m in methods.items()}, "chance": chance}
        for scheme in schemes
    }


# --------------------------------------------------------------------------- driver


@dataclass
class EvalOptions:
    """What :func:`evaluate_models` reads and how much.

    Attributes:
        source: data source (``sim:demo``, a directory, a hub id).
        split: ``val`` or ``test``.
        subjects: subjects to score (None: all).
        max_maps: at most this many rows of the split (a seeded subset; None: all).
        train_maps: training rows for the mean map, MaskedPCA and the ridge fits.
        components: MaskedPCA components.
        pca: a MaskedPCA file (``boldgpt.models.pca.save_pca``, e.g. the demo's
            ``pca.safetensors``) to use instead of fitting one on ``train_maps``; it must
            be over the data's mask.
        probe: also run category decoding (slow).
        nsd_labels: folder of the NSD decoding benchmark's label files (real NSD); on
            ``sim:`` sources the labels come from the simulator's truth.
        feature_encoder: image-encoder spec for two-way identification of
            reconstructions (None: pixel space).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: maps per forward pass.
        threads: torch and BLAS CPU threads (None: their defaults). Small models on a
            busy machine run many times faster with 1: oversubscribed threads spin-wait.
    """

    source: str = "sim:demo"
    split: str = "val"
    subjects: Sequence[int] | None = None
    max_maps: int | None = None
    train_maps: int | None = 4000
    components: int = 128
    pca: str | os.PathLike | None = None
    probe: bool = False
    nsd_labels: str | None = None
    feature_encoder: str | None = None
    device: str = "auto"
    batch_size: int = 64
    threads: int | None = None


def _baseline_pca(options: EvalOptions, mask: np.ndarray, train_maps: torch.Tensor) -> Any:
    """The MaskedPCA of the baselines: read from ``options.pca``, or fitted on the
    training maps."""
    from boldgpt.models.pca import MaskedPCA, load_pca

    if options.pca is None:
        return MaskedPCA(mask, min(options.components, len(train_maps) - 1)).fit(train_maps, seed=0)
    pca = load_pca(options.pca)
    if not np.array_equal(pca.mask.cpu().numpy(), mask):
        raise ConfigError(
            f"the MaskedPCA in {options.pca} is over another mask ({int(pca.mask.sum())} "
            f"pixels) than {options.source}'s ({int(mask.sum())}): fit it on this data"
        )
    return pca


def evaluate_models(
    model_dirs: Sequence[str | os.PathLike],
    options: EvalOptions,
    figure_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate each model on ``options.split`` of ``options.source`` (see the module
    docstring); figures go to ``figure_dir`` when given. Returns the ``eval.json``
    content: ``source``, ``split``, ``seed``, ``counts``, ``models`` (model dir ->
    ``{"name", "class", "tasks": {task: results}, "figures": [...]}``) and
    ``timings_s``."""
    from threadpoolctl import threadpool_limits

    from boldgpt.utils.threads import cpu_threads

    # numpy / scikit-learn's BLAS threads as well as torch's
    with cpu_threads(options.threads), threadpool_limits(options.threads):
        return _evaluate_models(model_dirs, options, figure_dir, log)


def _evaluate_models(
    model_dirs: Sequence[str | os.PathLike],
    options: EvalOptions,
    figure_dir: Path | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from boldgpt.engine.distributed import resolve_device
    from boldgpt.evaluate import metrics
    from boldgpt.models.registry import describe, load_model

    if options.split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test'; got {options.split!r}")
    t0 = time.perf_counter()
    dev = resolve_device(options.device)
    models = {str(d): load_model(d, device=dev) for d in model_dirs}
    plans = {d: tasks_for(m, options.probe) for d, m in models.items()}
    sizes = {m.config.image_size for d, m in models.items() if _needs_images(plans[d])}
    image_size = _one_image_size(sizes)
    root = sim_root(options.source)
    log(f"reading {options.source} split {options.split} (and training rows for baselines)")
    common = dict(image_size=image_size, subjects=options.subjects)
    data = load_split(options.source, options.split, max_rows=options.max_maps, **common)
    train = load_split(options.source, "train", max_rows=options.train_maps, **common)
    _check_masks(models, data.mask)
    mean_map = metrics.mean_map(train.maps.split(1024))
    pca = _baseline_pca(options, data.mask, train.maps)
    encoder = None
    if options.feature_encoder:
        from boldgpt.models.encoders import build_image_encoder

        encoder = build_image_encoder(options.feature_encoder)
    result: dict[str, Any] = {
        "source": options.source,
        "split": options.split,
        "seed": EVAL_SEED,
        "counts": {
            "eval_maps": len(data.maps),
            "eval_stimuli": int(len(np.unique(data.nsd_id))),
            "subjects": sorted(int(s) for s in np.unique(data.subject_id)),
            "train_maps": len(train.maps),
            "pca_components": pca.n_components,
            **({"pca_file": os.fspath(options.pca)} if options.pca else {}),
        },
        "models": {},
    }
    memo: dict[Any, Any] = {}  # baselines shared by the models (see the tasks)
    for d, model in models.items():
        entry: dict[str, Any] = {
            "name": describe(model)["name"],
            "class": model_kind(model),
            "num_parameters": describe(model)["num_parameters"],
            "tasks": {},
            "figures": [],
        }
        tag = _tag(d, list(models))
        for task in plans[d]:
            t = time.perf_counter()
            log(f"{d}: {task}")
            bs = options.batch_size
            if task == "next_patch":
                res = next_patch_task(model, data, mean_map, pca, bs, train)
            elif task == "masked":
                res = masked_task(model, data, mean_map, pca, bs, train)
            elif task == "encoding":
                res, pixel_r = encoding_task(model, data, train, mean_map, root, bs, memo)
                if figure_dir is not None:
                    entry["figures"].append(
                        _encoding_figure(pixel_r, data.mask, figure_dir / f"{tag}encoding_r.png")
                    )
            elif task == "retrieval":
                res, example = retrieval_task(model, data, train, pca, bs, root, memo)
                if figure_dir is not None:
                    entry["figures"].append(
                        _retrieval_figure(example, data, figure_dir / f"{tag}retrieval.png")
                    )
            elif task == "reconstruction":
                res, example = reconstruction_task(model, data, train, encoder, bs)
                if figure_dir is not None:
                    entry["figures"].append(
                        _reconstruction_figure(example, figure_dir / f"{tag}reconstructions.png")
                    )
            else:  # probe
                labels = category_labeller(root, options.nsd_labels)
                res = probe_task(model, data, train, labels, bs, memo)
            entry["tasks"][task] = res
            entry.setdefault("timings_s", {})[task] = round(time.perf_counter() - t, 1)
        result["models"][d] = entry
    result["timings_s"] = {"total": round(time.perf_counter() - t0, 1)}
    return result


def _needs_images(tasks: list[str]) -> bool:
    return any(t in ("encoding", "retrieval", "reconstruction") for t in tasks)


def _one_image_size(sizes: set[Any]) -> int | None:
    if len(sizes) > 1:
        raise ConfigError(
            f"the models read stimuli of different sizes {sorted(sizes)}; evaluate them in "
            "separate runs"
        )
    return next(iter(sizes), None)


def _check_masks(models: dict[str, Any], mask: np.ndarray) -> None:
    for d, m in models.items():
        if not np.array_equal(m.patchify.mask.cpu().numpy().astype(bool), mask):
            raise DataError(f"model {d} was built over another cortex mask than the data's")


def _tag(model_dir: str, all_dirs: list[str]) -> str:
    """File-name prefix of a model's figures ('' when one model is evaluated)."""
    if len(all_dirs) == 1:
        return ""
    return f"{all_dirs.index(model_dir)}-{Path(model_dir).parent.name or 'model'}-"


def _encoding_figure(pixel_r: dict[str, np.ndarray], mask: np.ndarray, path: Path) -> str:
    from boldgpt.viz import evaluation

    evaluation.save(evaluation.encoding_accuracy_figure(pixel_r, mask), path)
    return path.name


def _retrieval_figure(example: dict[str, Any], data: SplitData, path: Path) -> str:
    from boldgpt.viz import evaluation

    ids = example["nsd_id"]
    fig = evaluation.retrieval_grid_figure(example["sim"], data.images_of(ids))
    evaluation.save(fig, path)
    return path.name


def _reconstruction_figure(example: dict[str, np.ndarray], path: Path) -> str:
    from boldgpt.viz import evaluation

    evaluation.save(evaluation.reconstructions_figure(example["true"], example["recon"]), path)
    return path.name


# --------------------------------------------------------------------------- writing

_ENCODING_COLUMNS = (
    ("r_mean", "r mean"),
    ("r_median", "r median"),
    ("r2_map_mean", "R² per map"),
    ("nnea_median", "r²/NC (Algonauts, median)"),
    ("nc_median", "noise ceiling % (median)"),
    ("r_truth_mean", "r vs noiseless truth"),
)
_RETRIEVAL_COLUMNS = (
    ("map_to_image", "top-1 map→image"),
    ("map_to_image_std", "± (30 draws)"),
    ("image_to_map", "top-1 image→map"),
    ("image_to_map_std", "± (30 draws)"),
    ("two_way_map_to_image", "two-way map→image"),
    ("two_way_image_to_map", "two-way image→map"),
)
_RECON_COLUMNS = (("pixcorr", "PixCorr"), ("ssim", "SSIM"), ("two_way", "two-way"))


def method_table(
    report: Any,
    caption: str,
    results: dict[str, dict[str, float]],
    columns: Sequence[tuple[str, str]],
) -> None:
    """One row per method (the model first, then baselines and ceilings), one column per
    metric; a column none of the methods has is left out, a missing cell is blank."""
    cols = [(k, label) for k, label in columns if any(k in r for r in results.values())]
    rows = [[m, *(results[m].get(k) for k, _ in cols)] for m in results]
    report.table(["", *(label for _, label in cols)], rows, caption)


def add_eval_sections(report: Any, result: dict[str, Any], fig_dir: Path | None) -> None:
    """Append the tables (and figures from ``fig_dir``) of an ``eval.json`` to a
    :class:`boldgpt.evaluate.report.Report`."""
    c = result["counts"]
    report.text(
        f"Evaluated on split `{result['split']}` of `{result['source']}`: {c['eval_maps']:,} "
        f"maps of {c['eval_stimuli']:,} stimuli, subjects {c['subjects']}; baselines fitted "
        f"on {c['train_maps']:,} training maps (MaskedPCA with {c['pca_components']} "
        f"components); seed {result['seed']}. Next-patch and masked scores pool every map; "
        "encoding, retrieval and reconstruction are scored per subject, then averaged."
    )
    for model_dir, entry in result["models"].items():
        report.heading(f"{entry['name']} ({entry['class']}): {model_dir}")
        tasks = entry["tasks"]
        if "next_patch" in tasks:
            np_ = tasks["next_patch"]
            report.comparison(
                "Next-patch prediction: in-mask R² of each patch predicted from the patches "
                "before it (higher is better); last columns: model minus baseline",
                {f"{k} order": {m: v["r2"] for m, v in np_[k].items() if "r2" in v} for k in np_},
                reference="model",
                relation="difference",
            )
            report.comparison(
                "The same as in-mask MSE / token NLL (the model's loss; lower is better); last "
                "columns: baseline / model",
                {f"{k} order": {m: v["loss"] for m, v in np_[k].items()} for k in np_},
                reference="model",
            )
            for k, v in np_.items():
                if "nll" in v["model"]:
                    method_table(
                        report,
                        f"Token metrics, {k} order (NLL in nats per patch, lower is better; "
                        "top-1 token accuracy); unigram: training token frequencies",
                        {m: s for m, s in v.items() if "nll" in s},
                        (("nll", "NLL"), ("accuracy", "accuracy")),
                    )
        if "masked" in tasks:
            cond = {k: v for k, v in tasks["masked"].items() if isinstance(v, dict)}
            report.comparison(
                "Masked prediction: R² of the hidden in-mask pixels (higher is better)",
                {k: {m: s["r2"] for m, s in v.items() if "r2" in s} for k, v in cond.items()},
                reference="model",
                relation="difference",
            )
            for k, v in cond.items():
                if "nll" in v["model"]:
                    method_table(
                        report,
                        f"Token metrics on the hidden patches ({k}; NLL in nats per patch)",
                        {m: s for m, s in v.items() if "nll" in s},
                        (("nll", "NLL"), ("accuracy", "accuracy")),
                    )
        if "encoding" in tasks:
            method_table(
                report,
                "Encoding: Pearson r per pixel across held-out stimuli (maps averaged over "
                "repeats), R² per map, noise-ceiling-normalized r² (Algonauts: r<0 → 0, "
                "capped at 1) and, on simulated data, r against the true noiseless maps. "
                "'noiseless truth' is the ceiling; 'true RF features' a per-pixel fit of the "
                "simulator's own receptive-field responses (the reference upper bound of a "
                "fitted model); the mean map predicts no stimulus variation (r undefined)",
                tasks["encoding"]["mean"],
                _ENCODING_COLUMNS,
            )
        if "retrieval" in tasks:
            k = tasks["retrieval"]["mean"]["model"].get("num_candidates", 300)
            method_table(
                report,
                f"Retrieval: top-1 among min(300, the subject's held-out stimuli) candidates "
                f"({k:.0f} on average here), mean over 30 random draws; maps averaged over "
                "repeats; and two-way identification",
                tasks["retrieval"]["mean"],
                _RETRIEVAL_COLUMNS,
            )
        if "reconstruction" in tasks:
            space = tasks["reconstruction"].get("two_way_feature_space", "pixels")
            method_table(
                report,
                f"Reconstruction: PixCorr, SSIM and two-way identification in the feature "
                f"space of {space}",
                tasks["reconstruction"]["mean"],
                _RECON_COLUMNS,
            )
        if "probe" in tasks:
            pr = tasks["probe"]
            methods = list(next(iter(pr.values())))
            report.table(
                ["", *(f"{s} subject" for s in pr)],
                [[m, *(pr[s].get(m, {}).get("accuracy") for s in pr)] for m in methods],
                "24-way category decoding from single trials (accuracy; within subject and "
                "leave-one-subject-out)",
            )
        if fig_dir is not None:
            for name in entry.get("figures", []):
                report.figure(fig_dir / name, _FIGURE_CAPTIONS.get(_base(name), name))


_FIGURE_CAPTIONS = {
    "encoding_r.png": "Encoding accuracy on the flat map: Pearson r per pixel across held-out "
    "stimuli (mean over subjects), of the model and its baselines, and the noise ceiling",
    "retrieval.png": "Retrieval from maps: each row a held-out map's true stimulus, then the "
    "five stimuli whose image embeddings are closest to the map's embedding",
    "reconstructions.png": "Held-out stimuli (top) and their reconstructions from the "
    "repeat-averaged maps (bottom)",
}


def _base(name: str) -> str:
    for key in _FIGURE_CAPTIONS:
        if name.endswith(key):
            return key
    return name


def write_eval(result: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/eval.json`` and ``out_dir/eval.md`` (figures are expected in
    ``out_dir/figures``); returns both paths."""
    from boldgpt.evaluate.report import Report
    from boldgpt.utils.io import atomic_write, write_json

    out_dir = Path(out_dir)
    write_json(out_dir / "eval.json", _jsonable(result))
    report = Report("boldgpt eval")
    add_eval_sections(report, result, out_dir / "figures")
    md = out_dir / "eval.md"
    with atomic_write(md, "w") as f:
        f.write(report.to_markdown(out_dir))
    return out_dir / "eval.json", md


def _jsonable(x: Any) -> Any:
    """NaN -> None and numpy scalars -> Python (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x

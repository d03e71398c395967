"""24-way category decoding: linear probes on frozen embeddings and the raw-map baselines.

The benchmark (SPEC section 2; clane9/nsd-decoding, built on the Natural Scenes
Dataset): each NSD stimulus gets the COCO category that a CLIP model assigned to it
(``nsd_clip_coco_targets.npy``, contiguous COCO class indices 0..79); stimuli whose
category is one of 24 well-populated ones (``nsd_include_coco_categories.json``) are
kept, and the task is to predict that category (label 0..23, in increasing COCO index)
from the map of one trial. Published cross-subject test accuracy: 27.8% with PCA(96) +
MLP, 3.7% for a constant prediction (chance is 1/24 = 4.2% for balanced classes).

Labels:

- real NSD: :func:`load_nsd_category_labels` (``(73000,)``, -1 outside the 24);
- the embedded dataset: every stimulus has one *main* object of the 24 categories,
  written first in the ``objects`` annotations of its rows
  (``objects["target"][0]``, also ``label`` in ``truth/stimuli.npz``):
  :func:`main_category_labels`.

Classifiers (scikit-learn pipelines from the factories below, fitted on one set of maps
or embeddings and scored on another):

- :func:`linear_probe`: standardized features -> multinomial logistic regression (the
  probe of a frozen embedding);
- :func:`pca_logistic` / :func:`pca_mlp`: the raw-map baselines: each map z-scored over
  its in-mask pixels (as the benchmark does), whitened PCA (96 components), then
  logistic regression or a one-hidden-layer MLP;
- :func:`majority_class`: the most frequent training label (ties: the smallest label).

Schemes (:func:`evaluate_probe`): ``pooled`` (one fit on every training row),
``within`` (one fit per subject on its own training rows, tested on its test rows) and
``cross`` (leave one subject out: fit on the training rows of every other subject, test
on the held-out subject's test rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boldgpt.sim.categories import PRIMARY_CATEGORIES

_BENCHMARK = sorted(PRIMARY_CATEGORIES, key=lambda c: c.index)
BENCHMARK_CATEGORIES: tuple[str, ...] = tuple(c.name for c in _BENCHMARK)
"""Names of the 24 benchmark categories; label ``k`` is ``BENCHMARK_CATEGORIES[k]``."""
BENCHMARK_COCO_INDEX: tuple[int, ...] = tuple(c.index for c in _BENCHMARK)
"""Contiguous COCO class index (0..79) of each label, increasing."""
NUM_CLASSES = len(BENCHMARK_CATEGORIES)

TARGETS_FILE = "nsd_clip_coco_targets.npy"
CATEGORIES_FILE = "nsd_include_coco_categories.json"


def coco_to_label(coco_index: Any) -> np.ndarray:
    """Benchmark label (0..23) of contiguous COCO class indices; -1 for the other 56."""
    idx = np.asarray(coco_index, dtype=np.int64)
    table = np.full(80, -1, dtype=np.int64)
    table[list(BENCHMARK_COCO_INDEX)] = np.arange(NUM_CLASSES)
    out = np.full(idx.shape, -1, dtype=np.int64)
    ok = (idx >= 0) & (idx < 80)
    out[ok] = table[idx[ok]]
    return out


def load_nsd_category_labels(nsd_dir: str | os.PathLike) -> np.ndarray:
    """24-way labels of the 73,000 NSD stimuli from the benchmark's metadata files.

    Args:
        nsd_dir: a directory with ``nsd_clip_coco_targets.npy`` (int ``(73000,)``,
            contiguous COCO index per stimulus) and ``nsd_include_coco_categories.json``
            (``{name: COCO index}`` of the 24 categories).

    Returns:
        ``(73000,)`` int64 label per ``nsd_id``, -1 where the category is not among the 24.
    """
    root = Path(nsd_dir)
    targets_path, cats_path = root / TARGETS_FILE, root / CATEGORIES_FILE
    for p in (targets_path, cats_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found (the NSD decoding benchmark's metadata)")
    with open(cats_path) as f:
        cats = json.load(f)
    if sorted(cats.items(), key=lambda kv: kv[1]) != list(
        zip(BENCHMARK_CATEGORIES, BENCHMARK_COCO_INDEX)
    ):
        raise ValueError(
            f"{cats_path} lists {cats}, not the 24 benchmark categories "
            f"{dict(zip(BENCHMARK_CATEGORIES, BENCHMARK_COCO_INDEX))}"
        )
    targets = np.load(targets_path)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"{targets_path} must hold a 1-d integer array, got {targets.dtype}")
    return coco_to_label(targets)


def main_category_labels(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(nsd_id, label)`` of each row of a simulated NSD-Flat split, from its annotations.

    Args:
        rows: a ``datasets.Dataset`` (e.g. from ``load_nsd_flat(sim_source, split)``)
            or a mapping with ``nsd_id`` (N,) and ``objects`` (N dicts with ``target``).

    Returns:
        ``(N,)`` int64 nsd ids and ``(N,)`` benchmark labels of each row's main object
        (the first annotated object, as the simulator writes it; -1 when it is not
        among the 24). Only the embedded dataset puts the main object first: for real
        NSD use :func:`load_nsd_category_labels`.
    """
    if hasattr(rows, "select_columns"):
        table = rows.select_columns(["nsd_id", "objects"]).with_format("arrow")[:]
        import pyarrow.compute as pc

        nsd_id = table.column("nsd_id").to_numpy().astype(np.int64)
        targets = pc.struct_field(table.column("objects"), "target")
        first = pc.list_element(targets, 0).to_numpy(zero_copy_only=False)
    else:
        nsd_id = np.asarray(rows["nsd_id"], dtype=np.int64)
        objects = rows["objects"]
        if len(objects) != len(nsd_id):
            raise ValueError(f"{len(objects)} objects for {len(nsd_id)} nsd_id values")
        for i, o in enumerate(objects):
            if not o["target"]:
                raise ValueError(f"row {i} (nsd_id {nsd_id[i]}) has no annotated object")
        first = np.array([o["target"][0] for o in objects], dtype=np.int64)
    return nsd_id, coco_to_label(first)


# --------------------------------------------------------------------------- classifiers


def standardize_maps(x: np.ndarray) -> np.ndarray:
    """``(N, P)`` each row z-scored over its values (a constant row becomes zeros); float
    inputs keep their dtype (float32 maps of a whole split stay half the size)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    sd = x.std(1, keepdims=True)
    return (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def linear_probe(c: float = 1.0, max_iter: int = 2000) -> Any:
    """StandardScaler -> multinomial LogisticRegression (inverse L2 strength ``c``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


def _map_pca(n_components: int, seed: int) -> list[Any]:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import FunctionTransformer

    return [
        FunctionTransformer(standardize_maps),
        PCA(n_components=n_components, whiten=True, random_state=seed),
    ]


def pca_logistic(n_components: int = 96, c: float = 1.0, seed: int = 0) -> Any:
    """Per-map z-score -> whitened PCA(``n_components``) -> LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*_map_pca(n_components, seed), LogisticRegression(C=c, max_iter=2000))


def pca_mlp(n_components: int = 96, hidden: int = 256, alpha: float = 1e-2, seed: int = 0) -> Any:
    """Per-map z-score -> whitened PCA(``n_components``) -> MLP (one ReLU hidden layer of
    ``hidden`` units, L2 ``alpha``, Adam, early stopping on 10% of the training rows with
    a patience of 30 epochs)."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline

    mlp = MLPClassifier(
        hidden_layer_sizes=(hidden,),
        alpha=alpha,
        early_stopping=True,
        # sklearn's default patience (10 epochs) can stop a small training set before
        # its first useful step (seen: chance accuracy on 400 separable maps)
        n_iter_no_change=30,
        max_iter=500,
        random_state=seed,
    )
    return make_pipeline(*_map_pca(n_components, seed), mlp)


def majority_class() -> Any:
    """Predicts the most frequent training label (ties: the smallest label)."""
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="most_frequent")


# --------------------------------------------------------------------------- scoring


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``(K, K)`` int64 counts: row = true label, column = predicted label."""
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    for name, v in (("y_true", t), ("y_pred", p)):
        if len(v) and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must hold labels in 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def accuracy_from_confusion(confusion: Any) -> float:
    """Fraction correct: trace / total of a confusion matrix (NaN when empty)."""
    cm = np.asarray(confusion)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


@dataclass
class ProbeResult:
    """Accuracy of one classifier under one scheme.

    Attributes:
        accuracy: fraction correct over every test row (trace / total of ``confusion``).
        confusion: ``(K, K)`` counts summed over the fits.
        per_subject: held-out (``cross``) or own (``within``) subject -> its accuracy;
            empty for ``pooled``.
        chance: ``1 / K``.
    """

    accuracy: float
    confusion: np.ndarray
    per_subject: dict[int, float] = field(default_factory=dict)
    chance: float = 1.0 / NUM_CLASSES

    @property
    def mean_subject_accuracy(self) -> float:
        """Mean of the per-subject accuracies (every subject weighs the same)."""
        v = list(self.per_subject.values())
        return float(np.mean(v)) if v else self.accuracy


def _rows(x: Any, y: Any, name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = a.reshape(len(a), -1)
    labels = np.asarray(y, dtype=np.int64).ravel()
    if len(labels) != len(a):
        raise ValueError(f"{name}: {len(a)} rows of features but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} labels must be in 0..{num_classes - 1} (drop the rows labelled -1, "
            "stimuli outside the 24 categories, first)"
        )
    return a, labels


def evaluate_probe(
    make_classifier: Callable[[], Any],
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    scheme: str = "pooled",
    train_subjects: Any | None = None,
    test_subjects: Any | None = None,
    num_classes: int = NUM_CLASSES,
) -> ProbeResult:
    """Fit classifiers on training rows and score them on test rows.

    Args:
        make_classifier: returns a fresh unfitted scikit-learn classifier (e.g.
            :func:`linear_probe`, ``lambda: pca_mlp(96)``).
        train_x: ``(N, D)`` features (embeddings, or in-mask map values ``(N, P)``).
        train_y: ``(N,)`` labels in ``0..num_classes-1``.
        test_x: ``(M, D)``.
        test_y: ``(M,)``.
        scheme: ``pooled``, ``within`` or ``cross`` (see the module docstring).
        train_subjects: ``(N,)`` subject of each training row (``within`` / ``cross``).
        test_subjects: ``(M,)`` subject of each test row (``within`` / ``cross``).
        num_classes: K.

    Returns:
        :class:`ProbeResult`.
    """
    xtr, ytr = _rows(train_x, train_y, "train", num_classes)
    xte, yte = _rows(test_x, test_y, "test", num_classes)
    if scheme == "pooled":
        cm = confusion_matrix(yte, make_classifier().fit(xtr, ytr).predict(xte), num_classes)
        return ProbeResult(accuracy_from_confusion(cm), cm, chance=1.0 / num_classes)
    if scheme not in ("within", "cross"):
        raise ValueError(f"scheme must be 'pooled', 'within' or 'cross', got {scheme!r}")
    if train_subjects is None or test_subjects is None:
        raise ValueError(f"scheme {scheme!r} needs train_subjects and test_subjects")
    str_ = np.asarray(train_subjects).ravel()
    ste = np.asarray(test_subjects).ravel()
    if len(str_) != len(xtr) or len(ste) != len(xte):
        raise ValueError("train_subjects / test_subjects must give one subject per row")
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    per_subject: dict[int, float] = {}
    for s in np.unique(ste):
        fit_rows = str_ == s if scheme == "within" else str_ != s
        if not fit_rows.any():
            raise ValueError(f"no training rows to fit for subject {s} (scheme {scheme!r})")
        clf = make_classifier().fit(xtr[fit_rows], ytr[fit_rows])
        test_rows = ste == s
        cm = confusion_matrix(yte[test_rows], clf.predict(xte[test_rows]), num_classes)
        per_subject[int(s)] = accuracy_from_confusion(cm)
        total += cm
    return ProbeResult(accuracy_from_confusion(total), total, per_subject, 1.0 / num_classes)

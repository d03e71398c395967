"""Retrieval between paired embeddings: top-1 among 300 candidates, two-way identification.

Definitions (SPEC section 11; the protocol of MindEye, Scotti et al. 2023, NeurIPS):

- Rows ``i`` of two embedding sets ``a`` and ``b`` are a pair (a map and the image it
  was recorded for). The **similarity matrix** ``sim[i, j]`` compares ``a[i]`` with
  ``b[j]`` (cosine for retrieval; Pearson correlation for feature-space identification).
- **Top-1** of one direction: the fraction of queries whose own match has the highest
  similarity among all candidates. ``a -> b`` reads the rows of ``sim``, ``b -> a`` its
  columns. Ties are broken at random in expectation: a query whose true match ties
  with ``k`` other candidates at the top counts ``1 / (k + 1)``, so a constant
  similarity scores exactly chance, ``1 / N``.
- **Top-1 among 300**: for each of 30 random draws, 300 pairs are sampled without
  replacement from the test set, the 300 x 300 similarity matrix is computed and top-1
  is measured in both directions; the result is the mean (and spread) over the draws.
  Chance is ``1 / 300``. (The draws index one similarity matrix of all pairs:
  :func:`top1_among`.)
- **Two-way identification**: the fraction of pairwise comparisons, over every query
  ``i`` and every distractor ``j != i``, in which the true match is more similar than
  the distractor (``sim[i, i] > sim[i, j]``; ties count 1/2). Chance is 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from boldgpt.evaluate.encoding import as_numpy


def _matrix(x: Any, name: str) -> np.ndarray:
    a = as_numpy(x, name)
    if a.ndim < 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def similarity(a: Any, b: Any, metric: str = "cosine") -> np.ndarray:
    """Similarity of every row of ``a`` with every row of ``b``.

    Args:
        a: ``(N, D)`` embeddings (more trailing axes are flattened).
        b: ``(M, D)``.
        metric: ``"cosine"`` or ``"pearson"`` (cosine of the mean-centred rows).

    Returns:
        ``(N, M)``; a zero row has similarity 0 with everything.
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must have the same width, got {x.shape[1]} and {y.shape[1]}")
    if metric == "pearson":
        # a constant row is zeroed exactly (centring it leaves rounding residue)
        x = np.where(np.ptp(x, axis=1, keepdims=True) > 0, x - x.mean(1, keepdims=True), 0.0)
        y = np.where(np.ptp(y, axis=1, keepdims=True) > 0, y - y.mean(1, keepdims=True), 0.0)
    elif metric != "cosine":
        raise ValueError(f"metric must be 'cosine' or 'pearson', got {metric!r}")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    x = x / np.where(nx > 0, nx, 1.0)[:, None]
    y = y / np.where(ny > 0, ny, 1.0)[:, None]
    return x @ y.T


def _square(sim: Any) -> np.ndarray:
    s = as_numpy(sim, "sim")
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"sim must be a square (N, N) matrix with N >= 2, got {s.shape}")
    return s


def top1_per_query(sim: Any) -> np.ndarray:
    """``(N,)`` top-1 credit of each row query of a square ``sim`` whose diagonal holds
    the true matches: 1 if its match is strictly the most similar, ``1 / (k + 1)`` if it
    ties with ``k`` others at the top, 0 otherwise."""
    s = _square(sim)
    own = np.diag(s)[:, None]
    above = (s > own).sum(1)
    ties = (s == own).sum(1) - 1
    return np.where(above == 0, 1.0 / (ties + 1), 0.0)


def top1_accuracy(sim: Any) -> dict[str, float]:
    """Top-1 in both directions of a square similarity matrix (diagonal = true pairs).

    Returns:
        ``{"a_to_b": ..., "b_to_a": ...}``: queries are the rows, then the columns.
    """
    s = _square(sim)
    return {"a_to_b": float(top1_per_query(s).mean()), "b_to_a": float(top1_per_query(s.T).mean())}


def two_way_identification(sim: Any) -> dict[str, float]:
    """Two-way identification in both directions of a square similarity matrix.

    Returns:
        ``{"a_to_b": ..., "b_to_a": ...}``: for rows (then columns), the fraction of the
        ``N (N - 1)`` comparisons in which ``sim[i, i]`` beats ``sim[i, j]``, ties 1/2.
    """
    s = _square(sim)
    n = s.shape[0]

    def rows(m: np.ndarray) -> float:
        own = np.diag(m)[:, None]
        wins = (m < own).sum() + 0.5 * ((m == own).sum() - n)  # minus the diagonal ties
        return float(wins / (n * (n - 1)))

    return {"a_to_b": rows(s), "b_to_a": rows(s.T)}


def retrieval_top1(
    a: Any,
    b: Any,
    num_candidates: int = 300,
    num_draws: int = 30,
    seed: int = 0,
    metric: str = "cosine",
) -> dict[str, float]:
    """Top-1 among ``num_candidates`` random test pairs, averaged over ``num_draws`` draws.

    Args:
        a: ``(N, D)`` embeddings of one modality (e.g. maps), row ``i`` paired with
            ``b[i]`` (average the repeats of a stimulus before calling).
        b: ``(N, D)`` embeddings of the other (e.g. images).
        num_candidates: pairs per draw (300 in MindEye); at most ``N``.
        num_draws: random draws (30 in MindEye).
        seed: seed of the draws (``numpy.random.default_rng``).
        metric: see :func:`similarity`.

    Returns:
        as :func:`top1_among` of ``similarity(a, b, metric)``.
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if len(x) != len(y):
        raise ValueError(f"a and b must be paired row by row, got {len(x)} and {len(y)} rows")
    return top1_among(similarity(x, y, metric), num_candidates, num_draws, seed)


def top1_among(
    sim: Any, num_candidates: int = 300, num_draws: int = 30, seed: int = 0
) -> dict[str, float]:
    """Top-1 among ``num_candidates`` random pairs of a square similarity matrix of all
    ``N`` pairs (diagonal = true matches), averaged over ``num_draws`` draws.

    Both metrics of :func:`similarity` normalize each row on its own, so the similarity
    of a draw's pairs is the draw's rows and columns of the whole matrix: one ``(N, N)``
    product serves every draw (and :func:`two_way_identification`).

    Returns:
        ``a_to_b`` / ``b_to_a`` mean top-1 over the draws (queries the rows, then the
        columns), ``a_to_b_std`` / ``b_to_a_std`` their standard deviation over the
        draws, and ``chance`` (``1 / num_candidates``).
    """
    s = _square(sim)
    if not 2 <= num_candidates <= len(s):
        raise ValueError(
            f"num_candidates must be between 2 and the number of pairs ({len(s)}), "
            f"got {num_candidates}"
        )
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    rng = np.random.default_rng(seed)
    scores = np.empty((num_draws, 2))
    for d in range(num_draws):
        pick = rng.choice(len(s), size=num_candidates, replace=False)
        t = top1_accuracy(s[np.ix_(pick, pick)])
        scores[d] = t["a_to_b"], t["b_to_a"]
    mean, std = scores.mean(0), scores.std(0)
    return {
        "a_to_b": float(mean[0]),
        "b_to_a": float(mean[1]),
        "a_to_b_std": float(std[0]),
        "b_to_a_std": float(std[1]),
        "chance": 1.0 / num_candidates,
    }

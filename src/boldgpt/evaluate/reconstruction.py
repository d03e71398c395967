"""Image reconstruction (map -> image): PixCorr, SSIM, two-way identification of features.

Definitions (SPEC section 11; the conventions of Ozcelik & VanRullen 2023 and MindEye,
Scotti et al. 2023, which the field's tables use):

- Images are compared at one common size (resize before calling; MindEye resizes
  both to 425 x 425), as floats in ``[0, 1]`` (uint8 inputs are divided by 255).
- **PixCorr**: per image pair, the Pearson r between the flattened reconstructed and
  true images (every pixel and channel), averaged over the pairs.
- **SSIM** (Wang et al. 2004): both images converted to grayscale (ITU-R 709 luma,
  ``0.2125 R + 0.7154 G + 0.0721 B``, scikit-image's ``rgb2gray``), then scikit-image's
  ``structural_similarity`` with Gaussian weights (sigma 1.5), population covariances
  (``use_sample_covariance=False``), ``K1 = 0.01``, ``K2 = 0.03`` and ``data_range =
  1``; averaged over the pairs. Images must be at least 11 x 11 pixels (the window).
- **Two-way identification in a feature space**: reconstructed and true images are
  embedded by the same encoder (the caller's choice, e.g. an image model's features);
  for each reconstruction, the fraction of other test images whose features are less
  Pearson-correlated with it than its own true image's are
  (:func:`boldgpt.evaluate.retrieval.two_way_identification`). Chance is 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from boldgpt.evaluate.encoding import as_numpy
from boldgpt.evaluate.retrieval import similarity, two_way_identification


def _images(x: Any, name: str, channel_axis: int | None) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, C)`` float images in [0, 1] (channels moved last)."""
    raw = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = raw.astype(np.float64) / 255.0 if raw.dtype == np.uint8 else as_numpy(raw, name)
    if a.ndim == 4 and channel_axis is not None:
        a = np.moveaxis(a, channel_axis, -1)
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] not in (1, 3)):
        raise ValueError(
            f"{name} must be (N, H, W) grayscale or (N, H, W, 3) RGB images, got {a.shape}"
        )
    return a


def _pair(recon: Any, true: Any, channel_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    r, t = _images(recon, "recon", channel_axis), _images(true, "true", channel_axis)
    if r.shape != t.shape:
        raise ValueError(
            f"recon and true must have the same shape (resize first), got {r.shape} and {t.shape}"
        )
    return r, t


def pixcorr_per_image(recon: Any, true: Any, channel_axis: int | None = -1) -> np.ndarray:
    """``(N,)`` Pearson r between each flattened reconstruction and its true image.

    Args:
        recon: ``(N, H, W[, 3])`` reconstructed images (``channel_axis`` says where the
            channels are in a 4-d input; default last).
        true: same shape, the stimuli.

    NaN for a pair where either image is constant.
    """
    r, t = _pair(recon, true, channel_axis)
    rf, tf = r.reshape(len(r), -1), t.reshape(len(t), -1)
    rc, tc = rf - rf.mean(1, keepdims=True), tf - tf.mean(1, keepdims=True)
    den = np.sqrt((rc**2).sum(1) * (tc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rc * tc).sum(1) / den
    # exact test for constant images (centring leaves rounding residue otherwise)
    out[(np.ptp(rf, axis=1) == 0) | (np.ptp(tf, axis=1) == 0)] = np.nan
    return out


def _gray(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        return a
    if a.shape[-1] == 1:
        return a[..., 0]
    from skimage.color import rgb2gray  # scikit-image loads slowly; only when scoring

    return rgb2gray(a)


def ssim_per_image(
    recon: Any, true: Any, channel_axis: int | None = -1, data_range: float = 1.0
) -> np.ndarray:
    """``(N,)`` SSIM of each grayscale reconstruction with its true image (conventions in
    the module docstring). Shapes as in :func:`pixcorr_per_image`."""
    from skimage.metrics import structural_similarity

    r, t = _pair(recon, true, channel_axis)
    gr, gt = _gray(r), _gray(t)
    if min(gr.shape[1:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {gr.shape[1:]}")
    return np.array(
        [
            structural_similarity(
                a,
                b,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=data_range,
            )
            for a, b in zip(gr, gt)
        ],
        dtype=np.float64,
    )


def feature_two_way(recon_features: Any, true_features: Any) -> float:
    """Two-way identification of reconstructions in a feature space.

    Args:
        recon_features: ``(N, D)`` features of the reconstructions.
        true_features: ``(N, D)`` features of the true images, same encoder, same order.

    Returns:
        The fraction of comparisons in which a reconstruction's features are more
        Pearson-correlated with its own true image's than with another test image's.
    """
    sim = similarity(recon_features, true_features, metric="pearson")
    return two_way_identification(sim)["a_to_b"]


def reconstruction_scores(
    recon: Any,
    true: Any,
    recon_features: Any | None = None,
    true_features: Any | None = None,
    channel_axis: int | None = -1,
) -> dict[str, float]:
    """The table row of a reconstruction model: ``pixcorr``, ``ssim`` (means over the
    pairs, NaN pairs skipped) and, with features, ``two_way``."""
    pc = pixcorr_per_image(recon, true, channel_axis)
    out = {
        "pixcorr": float(np.nanmean(pc)) if np.isfinite(pc).any() else float("nan"),
        "ssim": float(np.mean(ssim_per_image(recon, true, channel_axis))),
    }
    if recon_features is not None and true_features is not None:
        out["two_way"] = feature_two_way(recon_features, true_features)
    return out

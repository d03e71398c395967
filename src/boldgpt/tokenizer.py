"""K-means patch tokenizer: a vocabulary of typical patches for categorical models."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from boldgpt.errors import CheckpointError, DataError
from boldgpt.patching import MaskedPatchify
from boldgpt.utils.io import atomic_write


class KMeansTokenizer(nn.Module):
    """Map patches to the id of their nearest vocabulary entry (and back).

    Args:
        vocab_size: number of tokens V.
        dim: values per patch (``channels * patch_size**2``).

    Buffer ``vocab`` (V, dim) holds the centroids; it starts as zeros and is set by
    :meth:`fit` or by loading a state dict.
    """

    vocab: torch.Tensor

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2; got {vocab_size}")
        self.vocab_size = vocab_size
        self.dim = dim
        self.register_buffer("vocab", torch.zeros(vocab_size, dim))
        self._known_fitted = False

    @property
    def is_fitted(self) -> bool:
        """Whether the vocabulary holds centroids (is not all zeros). Reading the
        buffer syncs an accelerator, so a positive answer is remembered: training
        asks at every step (a vocabulary is never reset to zeros)."""
        if not self._known_fitted:
            self._known_fitted = bool(self.vocab.abs().sum() > 0)
        return self._known_fitted

    @torch.no_grad()
    def fit(
        self,
        patches: np.ndarray | torch.Tensor,
        seed: int = 0,
        batch_size: int = 4096,
        max_iter: int = 100,
    ) -> KMeansTokenizer:
        """Fit the vocabulary by mini-batch k-means on patches (M, dim)."""
        from sklearn.cluster import MiniBatchKMeans

        x = np.asarray(patches.cpu() if torch.is_tensor(patches) else patches, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"expected patches of shape (M, {self.dim}); got {x.shape}")
        if len(x) < self.vocab_size:
            raise DataError(
                f"need at least vocab_size={self.vocab_size} patches to fit; got {len(x)}"
            )
        if not np.isfinite(x).all():
            raise DataError("patches contain NaN or Inf")
        kmeans = MiniBatchKMeans(
            n_clusters=self.vocab_size,
            batch_size=batch_size,
            max_iter=max_iter,
            n_init=3,
            random_state=seed,
        )
        kmeans.fit(x)
        self.vocab.copy_(torch.from_numpy(kmeans.cluster_centers_.astype(np.float32)))
        return self

    @torch.no_grad()
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (..., dim) -> token ids (...) int64 (nearest centroid, Euclidean)."""
        if patches.shape[-1] != self.dim:
            raise ValueError(f"expected patches (..., {self.dim}); got {tuple(patches.shape)}")
        flat = patches.reshape(-1, self.dim).to(self.vocab.dtype)
        tokens = torch.cdist(flat, self.vocab).argmin(dim=-1)
        return tokens.reshape(patches.shape[:-1])

    forward = encode

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> patches (..., dim): the centroids."""
        return self.vocab[tokens]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}"


def interior_patches(maps: torch.Tensor, patchify: MaskedPatchify) -> torch.Tensor:
    """The patches fully inside the mask of maps (B, H, W), flattened to (B * n, dim):
    what the vocabulary is fitted on (border patches are mostly zeros)."""
    return patchify(maps)[:, patchify.interior].reshape(-1, patchify.dim)


def sample_interior_patches(
    load_maps: Callable[[np.ndarray], torch.Tensor],
    num_available: int,
    num_maps: int,
    patchify: MaskedPatchify,
    seed: int = 0,
    chunk: int = 256,
) -> torch.Tensor:
    """Interior patches (M, dim) of ``num_maps`` maps drawn without replacement (seeded)
    from ``num_available``: the training sample of a vocabulary.

    ``load_maps(indices)`` returns the maps (b, H, W) of sorted dataset indices; they
    are read ``chunk`` at a time, so only the patches are ever held in memory.
    """
    n = min(num_maps, num_available)
    chosen = np.sort(np.random.default_rng(seed).choice(num_available, size=n, replace=False))
    parts = [
        interior_patches(load_maps(chosen[i : i + chunk]).to(patchify.mask.device), patchify)
        for i in range(0, n, chunk)
    ]
    return torch.cat(parts).cpu()


def save_tokenizer(
    tokenizer: KMeansTokenizer, path: str | os.PathLike, **metadata: str | int | float
) -> None:
    """Write the vocabulary to a safetensors file (atomically), with ``metadata``
    (e.g. patch_size, source) stored beside it."""
    meta = {"format": "boldgpt.KMeansTokenizer", "vocab_size": str(tokenizer.vocab_size)}
    meta.update({k: str(v) for k, v in metadata.items()})
    with atomic_write(path, "wb") as f:
        f.write(save({"vocab": tokenizer.vocab.contiguous()}, metadata=meta))


def load_tokenizer(path: str | os.PathLike) -> tuple[KMeansTokenizer, dict[str, str]]:
    """Read a vocabulary written by :func:`save_tokenizer`; returns it with its metadata."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        f = safe_open(path, "pt")
    except Exception as exc:  # not safetensors (e.g. a pickle): never unpickled
        raise CheckpointError(f"{path} is not a safetensors vocabulary file ({exc})") from exc
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != "boldgpt.KMeansTokenizer" or "vocab" not in f.keys():  # noqa: SIM118
            raise CheckpointError(
                f"{path} is not a boldgpt vocabulary file (expected format "
                f"'boldgpt.KMeansTokenizer' with a 'vocab' tensor)"
            )
        vocab = f.get_tensor("vocab")
    tokenizer = KMeansTokenizer(vocab.shape[0], vocab.shape[1])
    tokenizer.vocab.copy_(vocab)
    return tokenizer, meta

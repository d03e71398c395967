"""MaskedPCA: the linear baseline every flat-map model is compared with.

PCA of the in-mask pixels. A fully observed map is encoded by projection; a partially
observed map by regularized least squares on the pixels that are observed. Under the
probabilistic-PCA model (coefficients z ~ N(0, diag(lambda)), isotropic residual noise
sigma^2 per pixel) the posterior mean is

    z = (C_o C_o^T + sigma^2 diag(1 / lambda))^{-1} C_o (x_o - mu_o),

where C_o are the component loadings of the observed pixels. With fewer maps than
pixels, and noise that is spatially correlated rather than isotropic, the sample
eigenvalues of the noise-dominated components are inflated and their loadings are
noisy, so the plain posterior over-trusts them (it extrapolates from one hemisphere to
the other worse than the mean map does). :meth:`MaskedPCA.fit` therefore calibrates a
scale ``beta`` of the prior on held-out maps: the default regularizer is
``beta * sigma^2 / lambda``. A plain ridge ``alpha * I`` is available too.

:meth:`MaskedPCA.next_patch_predictions` turns this into the autoregressive baseline
of boldGPT: each next patch of a sequence is predicted from the patches before it.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from boldgpt.errors import CheckpointError, DataError
from boldgpt.patching import MaskedPatchify, permute
from boldgpt.utils.io import atomic_write


class MaskedPCA(nn.Module):
    """PCA of the pixels inside ``mask``.

    Args:
        mask: bool (H, W).
        n_components: number of components K.

    Buffers (set by :meth:`fit`): ``mask`` (H, W), ``mean`` (P,), ``components`` (K, P)
    with orthonormal rows, ``explained_variance`` (K,) and ``noise_variance`` (), the
    mean residual variance per pixel; P is the number of mask pixels.
    """

    mask: torch.Tensor
    mean: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    noise_variance: torch.Tensor

    def __init__(self, mask: np.ndarray | torch.Tensor, n_components: int = 128):
        super().__init__()
        mask = torch.as_tensor(np.asarray(mask)).bool()
        if mask.ndim != 2:
            raise ValueError(f"mask must be (H, W); got shape {tuple(mask.shape)}")
        if n_components < 1:
            raise ValueError(f"n_components must be positive; got {n_components}")
        num_pixels = int(mask.sum())
        self.n_components = n_components
        self.register_buffer("mask", mask)
        self.register_buffer("mean", torch.zeros(num_pixels))
        self.register_buffer("components", torch.zeros(n_components, num_pixels))
        self.register_buffer("explained_variance", torch.zeros(n_components))
        self.register_buffer("noise_variance", torch.zeros(()))
        self.register_buffer("prior_scale", torch.ones(()))

    @property
    def num_pixels(self) -> int:
        return self.mean.numel()

    def _pixels(self, maps: np.ndarray | torch.Tensor, name: str = "maps") -> torch.Tensor:
        """(B, H, W) maps -> (B, P) float32 in-mask pixels, with shape/NaN checks."""
        x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
        if x.ndim != 3 or x.shape[1:] != self.mask.shape:
            raise DataError(
                f"{name} must have shape (B, {self.mask.shape[0]}, {self.mask.shape[1]}); "
                f"got {tuple(x.shape)}"
            )
        x = x.to(device=self.mean.device, dtype=torch.float32)[:, self.mask]
        if not torch.isfinite(x).all():
            raise DataError(f"{name} contain NaN or Inf inside the mask")
        return x

    @torch.no_grad()
    def fit(
        self,
        maps: np.ndarray | torch.Tensor,
        seed: int = 0,
        calibrate: bool = True,
        holdout: float = 0.1,
    ) -> MaskedPCA:
        """Fit on maps (M, H, W).

        Uses a randomized SVD (K + 20 columns, 4 power iterations), exact enough for
        the leading components at a fraction of the cost. With ``calibrate`` (and at
        least 200 maps), the prior scale is first chosen on a held-out ``holdout``
        share of the maps (at most 64) (see :meth:`calibrate_prior`), then the components are
        refitted on all maps.
        """
        x = self._pixels(maps)
        m = x.shape[0]
        if m <= self.n_components:
            raise DataError(
                f"need more maps than n_components={self.n_components} to fit PCA; got {m}"
            )
        # 64 held-out maps pin the scale down well; more only cost time
        n_held = min(int(round(holdout * m)), 64)
        if calibrate and m >= 200 and m - n_held > self.n_components and n_held >= 16:
            perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
            self._fit_pixels(x[perm[n_held:]], seed)
            held = x.new_zeros(n_held, *self.mask.shape)
            held[:, self.mask] = x[perm[:n_held]]
            self.calibrate_prior(held, seed=seed)
        self._fit_pixels(x, seed)
        return self

    def _fit_pixels(self, x: torch.Tensor, seed: int) -> None:
        m, k = x.shape[0], self.n_components
        mean = x.mean(dim=0)
        x = x - mean
        total_var = x.pow(2).sum() / (m - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            q = min(k + 20, m, x.shape[1])
            _, s, v = torch.svd_lowrank(x, q=q, niter=4)
        var = s[:k].pow(2) / (m - 1)
        self.mean.copy_(mean)
        self.components.copy_(v[:, :k].T)
        self.explained_variance.copy_(var)
        residual = (total_var - var.sum()).clamp_min(0) / max(x.shape[1] - k, 1)
        # A floor keeps the prior-weighted ridge well posed when the fit is near exact.
        self.noise_variance.fill_(max(float(residual), 1e-6 * float(var[0])))

    @torch.no_grad()
    def calibrate_prior(
        self,
        maps: np.ndarray | torch.Tensor,
        scales: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
        patch_size: int = 10,
        num_orders: int = 4,
        seed: int = 0,
    ) -> float:
        """Choose the prior scale ``beta`` that best predicts held-out ``maps``
        (M, H, W) not used for the fit: the mean squared error of predicting each
        ``patch_size`` patch from the patches before it, over ``num_orders`` random
        orders (every fraction of observed pixels, from none to nearly all). Sets and
        returns it."""
        self._check_fitted()
        patchify = MaskedPatchify(self.mask, patch_size, ordering="raster")
        target = patchify(torch.as_tensor(maps, dtype=torch.float32))
        weight = patchify.patch_mask.float()
        g = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(patchify.num_patches, generator=g) for _ in range(num_orders)]
        errors = []
        for beta in scales:
            self.prior_scale.fill_(beta)
            err = 0.0
            for order in orders:
                pred = self.next_patch_predictions(maps, patchify, order)
                err += float(((pred - target[:, order]).square() * weight[order]).sum())
            errors.append(err)
        best = scales[int(np.argmin(errors))]
        self.prior_scale.fill_(best)
        return best

    def _check_fitted(self) -> None:
        if not bool(self.explained_variance.any()):
            raise RuntimeError("MaskedPCA is not fitted: call fit() or load a fitted one")

    def encode(self, maps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Fully observed maps (B, H, W) -> coefficients (B, K)."""
        self._check_fitted()
        return (self._pixels(maps) - self.mean) @ self.components.T

    def decode(self, coefs: torch.Tensor) -> torch.Tensor:
        """Coefficients (B, K) -> maps (B, H, W), zero outside the mask."""
        self._check_fitted()
        pixels = coefs.to(self.components.dtype) @ self.components + self.mean
        maps = pixels.new_zeros(coefs.shape[0], *self.mask.shape)
        maps[:, self.mask] = pixels
        return maps

    def regularizer(self, alpha: float | None = None) -> torch.Tensor:
        """(K, K) diagonal regularizer: the calibrated PPCA prior
        ``beta * sigma^2 / lambda`` when ``alpha`` is None, else ``alpha * I``."""
        if alpha is None:
            prior = self.noise_variance / self.explained_variance.clamp_min(1e-12)
            return torch.diag(self.prior_scale * prior)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        return alpha * torch.eye(self.n_components, device=self.mean.device)

    def encode_partial(
        self,
        maps: np.ndarray | torch.Tensor,
        observed: np.ndarray | torch.Tensor,
        alpha: float | None = None,
    ) -> torch.Tensor:
        """Partially observed maps -> coefficients (B, K).

        Args:
            maps: (B, H, W); values at unobserved pixels are ignored.
            observed: bool (H, W) shared by the batch or (B, H, W).
            alpha: ridge strength; None for the calibrated PPCA prior (see module docstring).
        """
        self._check_fitted()
        x = self._pixels(maps) - self.mean
        obs = torch.as_tensor(np.asarray(observed) if not torch.is_tensor(observed) else observed)
        if obs.shape not in (self.mask.shape, (x.shape[0], *self.mask.shape)):
            raise DataError(
                f"observed must be (H, W) or (B, H, W) matching maps; got {tuple(obs.shape)}"
            )
        obs = obs.bool().to(x.device)[..., self.mask].float()  # (P,) or (B, P)
        c = self.components
        reg = self.regularizer(alpha)
        rhs = (x * obs) @ c.T  # (B, K)
        if obs.ndim == 1:
            gram = (c * obs) @ c.T + reg
            return torch.linalg.solve(gram, rhs.T).T
        gram = torch.einsum("kp,bp,lp->bkl", c, obs, c) + reg
        return torch.linalg.solve(gram, rhs)

    @torch.no_grad()
    def next_patch_predictions(
        self,
        maps: np.ndarray | torch.Tensor,
        patchify: MaskedPatchify,
        order: torch.Tensor | None = None,
        alpha: float | None = None,
        chunk_size: int = 8,
    ) -> torch.Tensor:
        """The autoregressive PCA baseline: predict each patch of a sequence from the
        patches before it.

        Args:
            maps: (B, H, W).
            patchify: defines the patches and their fixed order (its mask must lie
                inside this PCA's mask).
            order: the sequence, as slots of the fixed order: (N,) shared, (B, N) per
                sample, or None for the fixed order itself.
            alpha: as in :meth:`encode_partial`.
            chunk_size: samples solved at a time when orders differ per sample
                (memory is ``chunk_size * N * K * K`` floats).

        Returns:
            (B, N, D) predictions in sequence order: ``out[b, t]`` predicts the patch
            at slot ``order[b, t]`` from the patches at slots ``order[b, :t]``, zero
            outside the mask (the same convention as a boldGPT model's output).
        """
        self._check_fitted()
        if bool((patchify.mask & ~self.mask.to(patchify.mask.device)).any()):
            raise DataError("the patchify mask has pixels outside the PCA mask")
        x = self._pixels(maps)
        B = x.shape[0]
        N, K = patchify.num_patches, self.n_components

        def as_patches(pixels: torch.Tensor) -> torch.Tensor:
            full = pixels.new_zeros(pixels.shape[0], *self.mask.shape)
            full[:, self.mask] = pixels
            return patchify(full)  # (., N, D), zero outside the patchify mask

        comp = as_patches(self.components)  # (K, N, D)
        mean = as_patches(self.mean[None])[0]  # (N, D)
        resid = as_patches(x - self.mean)  # (B, N, D)
        gram_parts = torch.einsum("knd,lnd->nkl", comp, comp)  # (N, K, K)
        rhs_parts = torch.einsum("knd,bnd->bnk", comp, resid)  # (B, N, K)
        reg = self.regularizer(alpha)

        if order is None:
            order = torch.arange(N, device=x.device)
        order = order.to(x.device)
        if order.shape not in ((N,), (B, N)):
            raise ValueError(f"order must be (N,) or (B, N) with N={N}; got {tuple(order.shape)}")

        def exclusive_cumsum(t: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(t, dim=1) - t

        rhs = exclusive_cumsum(permute(rhs_parts, order))  # (B, N, K)
        if order.ndim == 1:
            grams = exclusive_cumsum(gram_parts[order][None])[0] + reg  # (N, K, K)
            coefs = torch.linalg.solve(grams[:, None], rhs.transpose(0, 1).unsqueeze(-1))
            coefs = coefs.squeeze(-1).transpose(0, 1)  # (B, N, K)
        else:
            coefs = torch.empty(B, N, K, device=x.device)
            for start in range(0, B, chunk_size):
                sl = slice(start, start + chunk_size)
                grams = exclusive_cumsum(gram_parts[order[sl]]) + reg  # (b, N, K, K)
                coefs[sl] = torch.linalg.solve(grams, rhs[sl].unsqueeze(-1)).squeeze(-1)
        comp_seq = comp.permute(1, 0, 2)[order]  # (N, K, D) or (B, N, K, D)
        mean_seq = mean[order]
        if order.ndim == 1:
            pred = torch.einsum("bnk,nkd->bnd", coefs, comp_seq) + mean_seq
        else:
            pred = torch.einsum("bnk,bnkd->bnd", coefs, comp_seq) + mean_seq
        return pred * permute(patchify.patch_mask.expand(B, -1, -1), order)


def save_pca(pca: MaskedPCA, path: str | os.PathLike) -> None:
    """Write a fitted MaskedPCA to a safetensors file (atomically)."""
    tensors = {k: v.contiguous() for k, v in pca.state_dict().items()}
    meta = {"format": "boldgpt.MaskedPCA", "n_components": str(pca.n_components)}
    with atomic_write(path, "wb") as f:
        f.write(save(tensors, metadata=meta))


def load_pca(path: str | os.PathLike) -> MaskedPCA:
    """Read a MaskedPCA written by :func:`save_pca`."""
    try:
        with safe_open(os.fspath(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # not safetensors (e.g. a pickle): never unpickled
        raise CheckpointError(f"{path} is not a safetensors MaskedPCA file ({exc})") from exc
    if meta.get("format") != "boldgpt.MaskedPCA":
        raise CheckpointError(
            f"{path} is not a boldgpt MaskedPCA file (metadata format={meta.get('format')!r})"
        )
    state = load_file(os.fspath(path))
    pca = MaskedPCA(state["mask"], int(meta["n_components"]))
    pca.load_state_dict(state)
    return pca

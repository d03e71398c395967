"""Cutting masked maps into patches, fixed patch orderings and per-sample shuffles.

A flat map only has signal inside the cortex mask, so :class:`MaskedPatchify` keeps
only the patches that touch the mask (253 of 440 for NSD-Flat at 10 px) and lists them
in a fixed order (the model's default generation order). Shuffled-order models
additionally permute that sequence per sample with :func:`random_order` and
:func:`permute`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

ORDERINGS = ("raster", "radial", "reverse_radial", "radial_original", "random")
ORDER_MIX_KINDS = ("random", "outward", "region", "hemisphere")
"""Kinds of per-sample training orders :func:`mixed_orders` draws (see there)."""
RANDOM_ORDER_SEED = 0


def infer_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """Padding ``(left, right, top, bottom)`` that makes both sides multiples of
    ``multiple``, split evenly with the odd pixel at the end (right / bottom)."""
    pad_h = -height % multiple
    pad_w = -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class MaskedPatchify(nn.Module):
    """Cut (B, H, W) or (B, C, H, W) maps into the patches that touch a mask.

    Args:
        mask: bool (H, W); the pixels that carry signal.
        patch_size: side of the square patches, in pixels.
        channels: values per pixel (1 for BOLD maps, 3 for RGB images).
        ordering: the fixed order of the kept patches: ``raster``; ``radial`` (by the
            distance of the patch centre from the mask centroid, nearest first);
            ``reverse_radial``; ``radial_original`` (the original boldGPT's radial
            priority: the mean distance from the centroid over the patch's p x p pixels
            of the zero-padded canvas, so padding pixels count as distance 0 and
            patches on a padded border come earlier than their centre says; on the
            NSD-Flat mask (2 rows of padding on top, 3 below) 46 of the 253 positions
            differ from ``radial``); ``random`` (a fixed seed); or a float (H, W)
            priority map, patches ordered by the mean priority of their in-mask pixels,
            lowest first.
        patch_indices: the kept patches as raster indices into the padded patch grid,
            already in their fixed order. Given, it replaces ``ordering`` (used to
            honour an order stored with a model).

    Patches are flattened in ``(c, p, p)`` order (the layout of a ``Conv2d`` patch
    embedding); pixels outside the mask are zero in every patch.

    Buffers: ``mask`` (H, W) bool, ``patch_mask`` (N, C*p*p) bool and
    ``patch_indices`` (N,) int64.
    """

    mask: torch.Tensor
    patch_mask: torch.Tensor
    patch_indices: torch.Tensor

    def __init__(
        self,
        mask: np.ndarray | torch.Tensor,
        patch_size: int,
        channels: int = 1,
        ordering: str | np.ndarray | torch.Tensor = "radial",
        patch_indices: Sequence[int] | torch.Tensor | None = None,
    ):
        super().__init__()
        mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W); got shape {tuple(mask.shape)}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer; got {patch_size}")
        mask = mask.bool()
        if not mask.any():
            raise ValueError("mask is empty: it must select at least one pixel")
        self.height, self.width = mask.shape
        self.patch_size = patch_size
        self.channels = channels
        self.dim = channels * patch_size**2
        self.padding = infer_padding(self.height, self.width, patch_size)
        left, right, top, bottom = self.padding
        self.grid = (
            (self.height + top + bottom) // patch_size,
            (self.width + left + right) // patch_size,
        )
        self.num_total_patches = self.grid[0] * self.grid[1]

        channel_mask = mask[None, None].expand(1, channels, -1, -1).float()
        pixel_mask = self._to_all_patches(channel_mask)[0] > 0  # (Np, C*p*p)
        touched = torch.nonzero(pixel_mask.any(dim=1)).squeeze(1)
        if patch_indices is None:
            self.ordering = ordering if isinstance(ordering, str) else "priority"
            rank_key = self._ordering_key(mask, ordering, touched)
            order = np.argsort(rank_key, kind="stable")
            patch_indices = touched[torch.from_numpy(order)]
        else:
            self.ordering = "stored"
            patch_indices = torch.as_tensor(patch_indices, dtype=torch.int64).flatten()
            if sorted(patch_indices.tolist()) != touched.tolist():
                raise ValueError(
                    f"patch_indices do not match the mask: expected a permutation of the "
                    f"{len(touched)} patches that touch the mask (patch_size={patch_size})"
                )
        self.num_patches = len(patch_indices)
        self.register_buffer("mask", mask)
        self.register_buffer("patch_indices", patch_indices)
        self.register_buffer("patch_mask", pixel_mask[patch_indices])

    def _ordering_key(
        self, mask: torch.Tensor, ordering: str | np.ndarray | torch.Tensor, touched: torch.Tensor
    ) -> np.ndarray:
        """A value per touched patch (raster order); patches are sorted ascending."""
        n = len(touched)
        if not isinstance(ordering, str):
            priority = torch.as_tensor(np.asarray(ordering), dtype=torch.float32)
            if priority.shape != mask.shape:
                raise ValueError(
                    f"priority map must have the mask's shape {tuple(mask.shape)}; "
                    f"got {tuple(priority.shape)}"
                )
            weighted = self._to_all_patches((priority * mask)[None, None])[0][touched]
            counts = self._to_all_patches(mask[None, None].float())[0][touched]
            return (weighted.sum(1) / counts.sum(1)).numpy()
        if ordering == "raster":
            return np.arange(n)
        if ordering == "random":
            return np.random.default_rng(RANDOM_ORDER_SEED).permutation(n)
        if ordering in ("radial", "reverse_radial", "radial_original"):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            cy, cx = ys.float().mean().item(), xs.float().mean().item()
            if ordering == "radial_original":
                yy, xx = torch.meshgrid(
                    torch.arange(self.height, dtype=torch.float64),
                    torch.arange(self.width, dtype=torch.float64),
                    indexing="ij",
                )
                dist_map = torch.hypot(yy - cy, xx - cx)[None, None]
                return self._to_all_patches(dist_map)[0][touched].mean(1).numpy()
            left, _, top, _ = self.padding
            p = self.patch_size
            rows, cols = touched // self.grid[1], touched % self.grid[1]
            # patch centres in canvas pixel coordinates
            py = (rows.double() * p + (p - 1) / 2 - top).numpy()
            px = (cols.double() * p + (p - 1) / 2 - left).numpy()
            dist = np.hypot(py - cy, px - cx)
            return dist if ordering == "radial" else -dist
        raise ValueError(f"unknown ordering {ordering!r}; expected one of {ORDERINGS}")

    @property
    def interior(self) -> torch.Tensor:
        """(N,) bool: patches that lie fully inside the mask."""
        return self.patch_mask.all(dim=1)

    def patch_centres(self) -> torch.Tensor:
        """(N, 2) float64 (row, column) of every kept patch's centre in map pixel
        coordinates, in the fixed order."""
        left, _, top, _ = self.padding
        p = self.patch_size
        idx = self.patch_indices.cpu()
        rows, cols = idx // self.grid[1], idx % self.grid[1]
        return torch.stack(
            [rows.double() * p + (p - 1) / 2 - top, cols.double() * p + (p - 1) / 2 - left], 1
        )

    def midline(self) -> float:
        """The column that splits the map into its two hemispheres: the mean column of
        the mask's pixels."""
        return float(self.mask.nonzero()[:, 1].double().mean())

    def _as_bchw(self, maps: torch.Tensor) -> tuple[torch.Tensor, bool]:
        squeeze = maps.ndim == 3
        if squeeze:
            maps = maps[:, None]
        if maps.ndim != 4 or maps.shape[1:] != (self.channels, self.height, self.width):
            expected = (
                f"(B, {self.height}, {self.width})"
                if self.channels == 1
                else f"(B, {self.channels}, {self.height}, {self.width})"
            )
            raise ValueError(f"expected maps of shape {expected}; got {tuple(maps.shape)}")
        return maps, squeeze

    def _to_all_patches(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, Np, C*p*p) over the whole padded grid."""
        left, right, top, bottom = self.padding
        x = nn.functional.pad(maps, (left, right, top, bottom))
        B, C = x.shape[:2]
        p = self.patch_size
        gh, gw = self.grid
        x = x.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, gh * gw, C * p * p)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps (B, H, W) or (B, C, H, W) -> patches (B, N, C*p*p) in the fixed order,
        zero outside the mask."""
        maps, _ = self._as_bchw(maps)
        patches = self._to_all_patches(maps)[:, self.patch_indices]
        return patches * self.patch_mask

    def inverse(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (B, N, C*p*p) in the fixed order -> maps (B, H, W) (or (B, C, H, W)
        for C > 1), zero outside the mask."""
        if patches.ndim != 3 or patches.shape[1:] != (self.num_patches, self.dim):
            raise ValueError(
                f"expected patches of shape (B, {self.num_patches}, {self.dim}); "
                f"got {tuple(patches.shape)}"
            )
        B = patches.shape[0]
        p, C = self.patch_size, self.channels
        gh, gw = self.grid
        full = patches.new_zeros(B, self.num_total_patches, self.dim)
        full[:, self.patch_indices] = patches * self.patch_mask
        x = full.reshape(B, gh, gw, C, p, p).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(B, C, gh * p, gw * p)
        left, _, top, _ = self.padding
        x = x[:, :, top : top + self.height, left : left + self.width]
        return x[:, 0] if C == 1 else x

    def inverse_values(self, values: torch.Tensor) -> torch.Tensor:
        """One value per patch (B, N) -> maps (B, H, W) painting each patch with its
        value inside the mask (e.g. an order map or per-patch loss)."""
        if values.ndim != 2 or values.shape[1] != self.num_patches:
            raise ValueError(
                f"expected values of shape (B, {self.num_patches}); got {tuple(values.shape)}"
            )
        patches = values[..., None].expand(-1, -1, self.dim)
        maps = self.inverse(patches)
        return maps if self.channels == 1 else maps[:, 0]

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, channels={self.channels}, "
            f"shape=({self.height}, {self.width}), num_patches={self.num_patches}, "
            f"ordering={self.ordering}"
        )


def num_patches(mask: np.ndarray, patch_size: int) -> tuple[int, int]:
    """``(touched, interior)`` patch counts of a mask, without building a module."""
    patchify = MaskedPatchify(mask, patch_size, ordering="raster")
    return patchify.num_patches, int(patchify.interior.sum())


def random_order(
    batch_size: int,
    num_patches: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent random permutations per sample.

    Returns ``(order, ranking)``, both (B, N) int64: ``order[b, t]`` is the slot shown
    at step t; ``ranking = argsort(order)`` is the step at which each slot is shown.
    """
    keys = torch.rand(batch_size, num_patches, generator=generator, device=device)
    order = keys.argsort(dim=1)
    return order, order.argsort(dim=1)


def permute(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Reorder a sequence per sample: ``out[b, t] = x[b, order[b, t]]``.

    ``x`` is (B, N) or (B, N, ...); ``order`` is (B, N) or (N,) (shared by the batch).
    """
    if order.ndim == 1:
        return x[:, order]
    if order.shape != x.shape[:2]:
        raise ValueError(
            f"order shape {tuple(order.shape)} does not match the sequence {tuple(x.shape[:2])}"
        )
    index = order.reshape(*order.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def unpermute(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Undo :func:`permute`: ``unpermute(permute(x, order), order) == x``."""
    return permute(x, order.argsort(dim=-1))


def mixed_orders(
    batch_size: int,
    centres: torch.Tensor,
    mix: dict[str, float],
    *,
    midline: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    return_cuts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample training orders (B, N) from a mixture of kinds (no loop over samples).

    Each sample draws its kind with probability ``mix[kind]`` (weights of
    :data:`ORDER_MIX_KINDS`, normalised):

    - ``random``: a uniformly random permutation;
    - ``outward``: outward from a random centre slot, by distance (ties in random
      order): every prefix of the order is a contiguous disc-like region;
    - ``region``: a disc-like region first (the slots nearest a random centre slot,
      outward by distance, between 10% and 70% of the slots), then the other slots in
      random order: the steps after the region ask for slots anywhere, far ones
      included, given a region, which is what completing a region asks;
    - ``hemisphere``: the slots on one side of ``midline`` (a random side), then the
      other side, each in random order.

    Args:
        centres: (N, 2) (row, column) of every slot (e.g.
            :meth:`MaskedPatchify.patch_centres`).
        midline: the column between the hemispheres (default: the mean column of
            ``centres``).
        generator: RNG (default: torch's global RNG); ``device``: of the result.
        return_cuts: also return each order's natural prompt size (B,) long: the
            number of slots of the side shown first for ``hemisphere`` orders, of
            the region for ``region`` orders, 0 for the kinds whose every prefix is a
            natural prompt.
    """
    kinds = [k for k in ORDER_MIX_KINDS if mix.get(k, 0) > 0]
    unknown = sorted(set(mix) - set(ORDER_MIX_KINDS))
    if unknown or not kinds:
        raise ValueError(f"mix must weigh some of {ORDER_MIX_KINDS}; got {mix!r}")
    N = centres.shape[0]
    centres = centres.to(device=device, dtype=torch.float64)
    weights = torch.tensor([float(mix[k]) for k in kinds], dtype=torch.float64, device=device)
    kind = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    keys = torch.zeros(batch_size, N, dtype=torch.float64, device=device)  # random: all tie
    cuts = torch.zeros(batch_size, dtype=torch.long, device=device)
    if "outward" in kinds or "region" in kinds:
        start = torch.randint(N, (batch_size,), generator=generator, device=device)
        dist = (centres[None] - centres[start][:, None]).square().sum(-1)  # (B, N)
    if "outward" in kinds:
        keys = torch.where((kind == kinds.index("outward"))[:, None], dist, keys)
    if "region" in kinds:
        # the `size` slots nearest the centre, ties broken at random once, so that
        # the region and its order agree
        jitter = torch.rand(batch_size, N, generator=generator, device=device, dtype=keys.dtype)
        near = dist + 1e-3 * jitter  # distinct squared distances on a grid differ by >= 1
        rank = near.argsort(dim=1).argsort(dim=1)
        frac = 0.1 + 0.6 * torch.rand(batch_size, 1, generator=generator, device=device)
        size = (frac * N).long().clamp(1, N - 1)  # (B, 1)
        region_keys = torch.where(rank < size, near, near.new_tensor(float("inf")))
        is_region = kind == kinds.index("region")
        keys = torch.where(is_region[:, None], region_keys, keys)
        cuts = torch.where(is_region, size[:, 0], cuts)
    if "hemisphere" in kinds:
        mid = float(centres[:, 1].mean()) if midline is None else midline
        left = (centres[:, 1] < mid).double()  # (N,)
        first_left = torch.rand(batch_size, 1, generator=generator, device=device) < 0.5
        side = torch.where(first_left, 1.0 - left, left)  # 0 for the side shown first
        is_hemi = kind == kinds.index("hemisphere")
        keys = torch.where(is_hemi[:, None], side, keys)
        cuts = torch.where(is_hemi, (side == 0).sum(dim=1), cuts)
    order = _argsort_random_ties(keys, generator)
    return (order, cuts) if return_cuts else order


def _argsort_random_ties(keys: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """argsort of each row of ``keys`` (B, N), ties broken uniformly at random: sort a
    random permutation of the row stably, then map back."""
    shuffle = torch.rand(keys.shape, generator=generator, device=keys.device).argsort(dim=1)
    idx = torch.gather(keys, 1, shuffle).argsort(dim=1, stable=True)
    return torch.gather(shuffle, 1, idx)

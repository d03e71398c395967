"""Vertex values <-> NSD-Flat pixels: rasterization inside flat triangles and its inverse.

Pixel (i, j) of the 215 x 200 canvas has its centre at ``x = -100 + j + 0.5`` mm and
``y = 95 - i - 0.5`` mm (row 0 is the top: the largest y), as in NSD-Flat.

- **Vertices -> pixels** (:meth:`FlatRaster.to_flat`): a pixel whose centre lies inside
  a triangle of the flat mesh gets the barycentric (linear) interpolation of the
  triangle's three vertex values. The pixel mask is the set of covered pixels. Where
  triangles overlap (flattening leaves a few folded ones) or share an edge, the pixel
  takes the triangle it lies deepest inside. The weights of a pixel sum to 1, so a
  constant field is reproduced exactly.
- **Pixels -> vertices** (:meth:`FlatRaster.to_vertices`): a vertex gets the bilinear
  interpolation of the (up to) four pixel centres around its flat position, using only
  mask pixels of its own hemisphere, with the weights renormalized; a vertex with none of
  the four in the mask (at a ragged edge) takes the nearest mask pixel of its
  hemisphere. Vertices in no triangle get NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from boldgpt.data import schema

_EPS = 1e-9


def canvas_to_pixel(xy: np.ndarray) -> np.ndarray:
    """Canvas mm (..., 2) as (x, y) -> continuous pixel coordinates (..., 2) as (row, col),
    pixel centres at integers."""
    left, _, _, top = schema.MAP_RECT_MM
    col = xy[..., 0] - left - 0.5
    row = top - xy[..., 1] - 0.5
    return np.stack([row, col], axis=-1)


def _triangle_pixels(rc: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, ...]:
    """All (triangle, pixel) pairs with the pixel centre inside the triangle.

    Returns ``tri`` (K,), ``pixel`` (K,) flat pixel indices, ``weights`` (K, 3) and
    ``depth`` (K,) (the smallest weight: how far inside)."""
    h, w = schema.MAP_SHAPE
    corners = rc[faces]  # (F, 3, 2)
    lo = np.ceil(corners.min(axis=1) - _EPS).astype(np.int64)
    hi = np.floor(corners.max(axis=1) + _EPS).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [h - 1, w - 1])
    n_rows = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    n_cols = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = n_rows * n_cols
    tri = np.repeat(np.arange(len(faces)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    rows = lo[tri, 0] + k // n_cols[tri]
    cols = lo[tri, 1] + k % n_cols[tri]
    a, b, c = corners[tri, 0], corners[tri, 1], corners[tri, 2]
    p = np.stack([rows, cols], axis=1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    ok = np.abs(det) > 1e-12  # degenerate (zero-area) triangles cover nothing
    det = np.where(ok, det, 1.0)
    wb = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det
    wc = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det
    weights = np.stack([1.0 - wb - wc, wb, wc], axis=1)
    depth = weights.min(axis=1)
    keep = ok & (depth >= -_EPS)
    weights = np.clip(weights[keep], 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return tri[keep], rows[keep] * w + cols[keep], weights, depth[keep]


class FlatRaster:
    """The linear maps between the vertices of two placed flat hemispheres and the
    NSD-Flat pixel grid.

    Args:
        coords: per hemisphere (left, right), flat coordinates (V_h, 2) in canvas mm
            (already placed; see :func:`boldgpt.surface.geometry.place_hemispheres`).
        faces: per hemisphere, the triangles (F_h, 3) to rasterize (e.g. the ROI's).

    Attributes:
        mask: bool (215, 200), the pixels covered by a triangle.
        pixels: (P,) flat indices of the mask pixels (row-major, ascending).
        pixel_hemi: (P,) 0 (left) or 1 (right).
        num_vertices: (V_left, V_right).
        has_value: per hemisphere, bool (V_h,): vertices that :meth:`to_vertices` fills.
    """

    def __init__(self, coords: Sequence[np.ndarray], faces: Sequence[np.ndarray]):
        if len(coords) != 2 or len(faces) != 2:
            raise ValueError("expected (left, right) coordinates and faces")
        self.num_vertices = tuple(int(len(c)) for c in coords)
        offsets = (0, self.num_vertices[0])
        rcs = [canvas_to_pixel(np.asarray(c, np.float64)[:, :2]) for c in coords]
        parts = []
        for hemi, (rc, f) in enumerate(zip(rcs, faces)):
            f = np.asarray(f, np.int64)
            tri, pix, wts, depth = _triangle_pixels(rc, f)
            parts.append((pix, f[tri] + offsets[hemi], wts, depth, np.full(len(pix), hemi)))
        pix, verts, wts, depth, hemi = (np.concatenate(x) for x in zip(*parts))
        # one triangle per pixel: the one the pixel centre lies deepest inside
        order = np.lexsort((-depth, pix))
        first = np.ones(len(order), dtype=bool)
        first[1:] = pix[order][1:] != pix[order][:-1]
        pick = order[first]
        self.pixels = pix[pick]
        self.pixel_vertices = verts[pick]  # (P, 3) global vertex ids (right offset by V_left)
        self.pixel_weights = wts[pick]  # (P, 3)
        self.pixel_hemi = hemi[pick]
        self.mask = np.zeros(schema.HEIGHT * schema.WIDTH, dtype=bool)
        self.mask[self.pixels] = True
        self.mask = self.mask.reshape(schema.MAP_SHAPE)
        self._build_inverse(rcs, faces, offsets)

    def _build_inverse(
        self, rcs: list[np.ndarray], faces: Sequence[np.ndarray], offsets: tuple[int, int]
    ) -> None:
        from scipy.spatial import cKDTree

        h, w = schema.MAP_SHAPE
        # position in the pixel list of every canvas pixel, -1 outside the mask
        slot = np.full(h * w, -1, dtype=np.int64)
        slot[self.pixels] = np.arange(len(self.pixels))
        hemi_of = np.full(h * w, -1, dtype=np.int64)
        hemi_of[self.pixels] = self.pixel_hemi
        total = sum(self.num_vertices)
        self.vertex_pixels = np.zeros((total, 4), dtype=np.int64)  # slots into self.pixels
        self.vertex_weights = np.zeros((total, 4), dtype=np.float64)
        self.has_value = []
        for hemi, (rc, f) in enumerate(zip(rcs, faces)):
            used = np.zeros(len(rc), dtype=bool)
            used[np.asarray(f, np.int64).ravel()] = True
            ids = np.flatnonzero(used)
            base = np.floor(rc[ids]).astype(np.int64)
            frac = rc[ids] - base
            cand_pix, cand_w = [], []
            for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
                r, c = base[:, 0] + dr, base[:, 1] + dc
                inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
                flat = np.where(inside, r * w + c, 0)
                valid = inside & (hemi_of[flat] == hemi)
                wr = frac[:, 0] if dr else 1.0 - frac[:, 0]
                wc = frac[:, 1] if dc else 1.0 - frac[:, 1]
                cand_pix.append(np.where(valid, slot[flat], 0))
                cand_w.append(np.where(valid, wr * wc, 0.0))
            cand_pix, cand_w = np.stack(cand_pix, 1), np.stack(cand_w, 1)
            total_w = cand_w.sum(axis=1)
            lonely = total_w <= _EPS
            if lonely.any():
                own = np.flatnonzero(self.pixel_hemi == hemi)
                centres = np.stack(np.divmod(self.pixels[own], w), axis=1)
                _, nearest = cKDTree(centres).query(rc[ids[lonely]])
                cand_pix[lonely] = 0
                cand_w[lonely] = 0.0
                cand_pix[lonely, 0] = own[nearest]
                cand_w[lonely, 0] = 1.0
                total_w[lonely] = 1.0
            self.vertex_pixels[ids + offsets[hemi]] = cand_pix
            self.vertex_weights[ids + offsets[hemi]] = cand_w / total_w[:, None]
            self.has_value.append(used)

    @cached_property
    def forward_matrix(self):  # -> scipy.sparse.csr_matrix
        """Sparse (P, V_left + V_right): the pixels' barycentric weights."""
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(len(self.pixels)), 3)
        shape = (len(self.pixels), sum(self.num_vertices))
        return csr_matrix((self.pixel_weights.ravel(), (rows, self.pixel_vertices.ravel())), shape)

    @cached_property
    def inverse_matrix(self):  # -> scipy.sparse.csr_matrix
        """Sparse (V_left + V_right, P): the vertices' bilinear weights."""
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(sum(self.num_vertices)), 4)
        shape = (sum(self.num_vertices), len(self.pixels))
        return csr_matrix((self.vertex_weights.ravel(), (rows, self.vertex_pixels.ravel())), shape)

    def to_flat(self, left: np.ndarray, right: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Vertex values (..., V_left) and (..., V_right) -> flat maps (..., 215, 200),
        float32, ``fill`` outside the mask."""
        left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
        for name, v, n in (
            ("left", left, self.num_vertices[0]),
            ("right", right, self.num_vertices[1]),
        ):
            if v.shape[-1] != n:
                raise ValueError(f"{name} hemisphere: {v.shape[-1]} values; the mesh has {n}")
        values = np.concatenate([left, right], axis=-1)
        batch = values.shape[:-1]
        flat = values.reshape(-1, values.shape[-1])
        inside = (self.forward_matrix @ flat.T).T  # (B, P)
        out = np.full((*batch, schema.HEIGHT * schema.WIDTH), fill, dtype=np.float32)
        out[..., self.pixels] = inside.reshape(*batch, -1)
        return out.reshape(*batch, *schema.MAP_SHAPE)

    def to_vertices(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat maps (..., 215, 200) -> vertex values ((..., V_left), (..., V_right)),
        float32; NaN at vertices in no rasterized triangle. Pixels outside the mask are
        never read."""
        maps = np.asarray(maps, np.float64)
        if maps.shape[-2:] != schema.MAP_SHAPE:
            raise ValueError(
                f"expected maps (..., {schema.HEIGHT}, {schema.WIDTH}); got {maps.shape}"
            )
        batch = maps.shape[:-2]
        values = maps.reshape(-1, schema.HEIGHT * schema.WIDTH)[:, self.pixels]  # (B, P)
        out = (self.inverse_matrix @ values.T).T.astype(np.float32)
        out = out.reshape(*batch, -1)
        has = np.concatenate(self.has_value)
        out[..., ~has] = np.nan
        n = self.num_vertices[0]
        return out[..., :n], out[..., n:]

"""The flat geometry of a dataset: two flat hemispheres, an ROI, and their placement on
the NSD-Flat canvas.

**Placement** (``placement=``):

- ``"fit"`` (default): the flat mesh's units are taken as mm (nilearn's fsaverage5 flat
  mesh is FreeSurfer's flattening, in mm). The two ROI patches keep their orientation
  (in nilearn's and pycortex's flat meshes dorsal is up and the occipital pole of each
  hemisphere points to the midline) and are placed side by side: the left hemisphere's
  ROI ends ``gap / 2`` mm left of x = 0, the right one starts ``gap / 2`` mm right of it
  (so no pixel mixes hemispheres), each centred vertically in the canvas
  (y from -120 to 95 mm). If an ROI patch is wider than 100 mm minus half the gap and a
  1 mm margin, or taller than 213 mm, both are shrunk by the same factor to fit
  (``scale`` < 1, then pixels are no longer 1 mm of flat cortex); otherwise
  ``scale`` = 1. With the built-in occipital ROI the patches are about 92 x 187 mm:
  scale 1, about 31,000 pixels (NSD-Flat's ``nsdgeneral`` mask: 18,577).
- ``"pycortex"``: the coordinates are kept, except that, as pycortex does when it
  draws both hemispheres of a flat map, the left hemisphere is shifted so that the
  rightmost vertex of its flat patch is at x = 0 and the right one so that its leftmost
  is at x = 0. Meant for pycortex's own flat surfaces, whose merged map NSD-Flat's bounding
  box was cut from (this correspondence is pycortex's convention as we understand it;
  it was not checked against pycortex here, which is not installed).
- ``"none"``: the flat coordinates are already canvas mm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.surface import meshes
from boldgpt.surface.raster import FlatRaster
from boldgpt.utils.io import atomic_write

PLACEMENTS = ("fit", "pycortex", "none")
GAP_MM = 2.0
"""Space between the two hemispheres' ROI patches with ``placement="fit"``."""
MARGIN_MM = 1.0
GEOMETRY_FILE = "surface_geometry.npz"
"""Written beside a flattened dataset's ``data/``: everything needed to rebuild its
:class:`FlatRaster` (and so to send model outputs back to the surface)."""


@dataclass
class SurfaceGeometry:
    """Placed flat hemispheres and the ROI triangles that are rasterized.

    ``coords`` (left, right): (V_h, 2) canvas mm; ``faces``: (F_h, 3) ROI triangles;
    ``roi``: (V_h,) bool, the ROI vertices; ``info``: where it came from and the
    placement (``scale``, per-hemisphere ``offset_mm``)."""

    coords: tuple[np.ndarray, np.ndarray]
    faces: tuple[np.ndarray, np.ndarray]
    roi: tuple[np.ndarray, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_vertices(self) -> tuple[int, int]:
        return (len(self.coords[0]), len(self.coords[1]))

    @cached_property
    def raster(self) -> FlatRaster:
        """The rasterizer of this geometry (built once, ~0.1 s)."""
        return FlatRaster(self.coords, self.faces)

    @property
    def mask(self) -> np.ndarray:
        """bool (215, 200): the pixels covered by the ROI's triangles."""
        return self.raster.mask

    def save(self, path: str | os.PathLike) -> None:
        """Write the geometry as one ``.npz`` (atomically)."""
        with atomic_write(path) as f:
            np.savez_compressed(
                f,
                coords_left=self.coords[0],
                coords_right=self.coords[1],
                faces_left=self.faces[0],
                faces_right=self.faces[1],
                roi_left=self.roi[0],
                roi_right=self.roi[1],
                info=np.array(json.dumps(self.info)),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SurfaceGeometry:
        """Read a geometry written by :meth:`save` (e.g. a flattened dataset's
        :data:`GEOMETRY_FILE`)."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / GEOMETRY_FILE
        if not path.is_file():
            raise DataError(
                f"{path} does not exist: expected a surface geometry written by "
                "`boldgpt data flatten` (surface_geometry.npz beside the dataset's data/)"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                pair = lambda key: (z[f"{key}_left"], z[f"{key}_right"])  # noqa: E731
                return cls(pair("coords"), pair("faces"), pair("roi"), json.loads(str(z["info"])))
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path}: not a surface geometry file ({exc})") from exc


def place_hemispheres(
    coords: Sequence[np.ndarray],
    faces: Sequence[np.ndarray],
    placement: str = "fit",
    gap: float = GAP_MM,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Move flat coordinates (left, right) (V_h, 2) onto the canvas (see the module
    docstring). ``faces`` are the triangles whose vertices set the extent (the ROI's
    for ``"fit"``, the whole flat patch's for ``"pycortex"``). Returns the placed
    coordinates and ``{"placement", "scale", "offset_mm"}``."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    pts = [np.asarray(c, np.float64)[:, :2] for c in coords]
    used = [p[np.unique(np.asarray(f).ravel())] for p, f in zip(pts, faces)]
    if placement == "none":
        return [p.copy() for p in pts], {
            "placement": placement,
            "scale": 1.0,
            "offset_mm": [[0, 0], [0, 0]],
        }
    if placement == "pycortex":
        offsets = [[-used[0][:, 0].max(), 0.0], [-used[1][:, 0].min(), 0.0]]
        placed = [p + np.array(o) for p, o in zip(pts, offsets)]
        return placed, {"placement": placement, "scale": 1.0, "offset_mm": offsets}
    left, right, bottom, top = schema.MAP_RECT_MM
    width = max(float(np.ptp(u[:, 0])) for u in used)
    height = max(float(np.ptp(u[:, 1])) for u in used)
    room_w = (right - left) / 2 - gap / 2 - MARGIN_MM
    room_h = (top - bottom) - 2 * MARGIN_MM
    scale = min(1.0, room_w / width, room_h / height)
    centre_y = (top + bottom) / 2
    offsets = []
    for hemi, u in enumerate(used):
        u = u * scale
        x = -gap / 2 - u[:, 0].max() if hemi == 0 else gap / 2 - u[:, 0].min()
        y = centre_y - (u[:, 1].min() + u[:, 1].max()) / 2
        offsets.append([float(x), float(y)])
    placed = [p * scale + np.array(o) for p, o in zip(pts, offsets)]
    return placed, {"placement": placement, "scale": float(scale), "offset_mm": offsets}


def build_geometry(
    flat: Sequence[str | os.PathLike | None] = (None, None),
    roi: Sequence[str | os.PathLike | np.ndarray | None] = (None, None),
    placement: str = "fit",
) -> SurfaceGeometry:
    """The geometry of a flattening.

    Args:
        flat: (left, right) flat GIfTI surfaces; ``None`` = nilearn's fsaverage5 flat mesh.
        roi: (left, right) vertex masks: bool arrays (V_h,), ``.label`` files or map files
            (nonzero = inside); ``None`` = the built-in occipital ROI
            (:func:`boldgpt.surface.meshes.occipital_roi`, fsaverage5 only).
        placement: ``"fit"``, ``"pycortex"`` or ``"none"`` (module docstring).

    The ROI triangles are the flat mesh's triangles whose three vertices are in the ROI.
    """
    from boldgpt.surface.io import read_mesh, read_vertex_mask

    coords, faces, patches, rois, sources = [], [], [], [], {}
    for hemi, flat_path, roi_spec in zip(meshes.HEMIS, flat, roi):
        if flat_path is None:
            xyz, tri = meshes.load_surface("flat", hemi)
            sources[f"flat_{hemi}"] = "nilearn fsaverage5 flat"
        else:
            xyz, tri = read_mesh(flat_path)
            sources[f"flat_{hemi}"] = str(flat_path)
        n = len(xyz)
        where = str(flat_path) if flat_path is not None else "fsaverage5"
        if roi_spec is None:
            if n != meshes.FSAVERAGE5_VERTICES:
                raise DataError(
                    f"{where}: the built-in occipital ROI is defined on fsaverage5 "
                    f"({meshes.FSAVERAGE5_VERTICES:,} vertices) but this flat mesh has {n:,}; "
                    "give an ROI (vertex mask) for this mesh"
                )
            mask = meshes.occipital_roi(hemi)
            sources[f"roi_{hemi}"] = f"occipital: pial y < {meshes.OCCIPITAL_Y_MM:g} mm"
        elif isinstance(roi_spec, (str, os.PathLike)):
            mask = read_vertex_mask(roi_spec, n)
            sources[f"roi_{hemi}"] = str(roi_spec)
        else:
            mask = np.asarray(roi_spec)
            if mask.shape != (n,):
                raise DataError(
                    f"{hemi} ROI: shape {mask.shape}; expected ({n},) for the flat mesh {where}"
                )
            mask = mask.astype(bool)
            sources[f"roi_{hemi}"] = "array"
        roi_faces = tri[mask[tri].all(axis=1)]
        if not len(roi_faces):
            raise DataError(f"{hemi} ROI: no triangle of the flat mesh {where} lies inside it")
        coords.append(xyz[:, :2])
        faces.append(roi_faces)
        patches.append(tri)
        rois.append(mask)
    # pycortex's shift is set by the whole flat patch; "fit" places the ROI
    placed, info = place_hemispheres(
        coords, patches if placement == "pycortex" else faces, placement
    )
    info.update(sources)
    geometry = SurfaceGeometry(tuple(placed), tuple(faces), tuple(rois), info)
    if not geometry.mask.any():
        raise DataError(
            f"no ROI triangle covers a pixel of the {schema.HEIGHT}x{schema.WIDTH} canvas "
            f"with placement {placement!r}; check the flat coordinates"
        )
    return geometry

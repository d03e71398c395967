"""Real anatomy on the flat canvas: the calcarine check (its figures are drawn by
:mod:`boldgpt.viz.surface`).

**Where the calcarine sulcus is.** FreeSurfer's flat patch of fsaverage5 (the one nilearn
ships) is cut along the calcarine sulcus: besides the medial wall, the only triangles of
the closed mesh missing from the patch in occipital cortex lie on the medial surface at
the level of the calcarine (pial z of about 5 mm, from the occipital pole at y = -100
forward to y = -60; left centroid (-15, -81, 5) mm). So the calcarine fundus is the
patch's cut edge, and its two banks face each other across the cut.
:func:`calcarine_check` measures, independently of the rasterizer, that on the canvas

- the cut-edge vertices are deep (their real sulcal depth is high within the ROI),
- the cortex above the calcarine in 3-D (the cuneus: medial, pial z > 10 mm) lies above the
  cut on the canvas and the cortex below it (the lingual gyrus: z < 0) lies below it,
- each hemisphere's calcarine is on its own side, near the canvas midline, where the
  occipital poles of the two hemispheres face each other (as in NSD-Flat's pycortex
  flat map).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from boldgpt.surface import meshes
from boldgpt.surface.geometry import SurfaceGeometry, build_geometry

CALCARINE_Y_MM = (-101.0, -60.0)
"""Posterior extent searched for the calcarine cut (pial y, mm)."""


def calcarine_cut(hemi: str, y_range: tuple[float, float] = CALCARINE_Y_MM) -> np.ndarray:
    """Vertex ids (K,) on the occipital cut edge of nilearn's fsaverage5 flat patch:
    vertices with pial y in ``y_range`` that lie on a boundary edge of the patch (an
    edge of one patch triangle only)."""
    _, faces = meshes.load_surface("flat", hemi)
    pial, _ = meshes.load_surface("pial", hemi)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, count = np.unique(edges, axis=0, return_counts=True)
    boundary = np.unique(unique[count == 1])
    y = pial[boundary, 1]
    return boundary[(y > y_range[0]) & (y < y_range[1])]


def calcarine_check(geometry: SurfaceGeometry | None = None) -> dict[str, Any]:
    """Numbers that say whether the calcarine sits where anatomy puts it (module
    docstring), per hemisphere: the cut vertices' pial centroid (mm), their sulcal-depth
    percentile among ROI vertices, their mean canvas position, and the mean canvas y of
    the cuneus and of the lingual gyrus (medial occipital vertices above z = 10 mm and
    below z = 0 mm)."""
    geometry = geometry or build_geometry()
    out: dict[str, Any] = {}
    for h, hemi in enumerate(meshes.HEMIS):
        pial, _ = meshes.load_surface("pial", hemi)
        sulc = meshes.load_anatomy("sulc", hemi)
        roi = np.zeros(len(pial), dtype=bool)
        roi[np.unique(geometry.faces[h])] = True
        cut = calcarine_cut(hemi)
        cut = cut[roi[cut]]
        xy = geometry.coords[h]
        medial = np.abs(pial[:, 0]) < 15
        occipital = roi & medial & (pial[:, 1] < -70)
        cuneus, lingual = occipital & (pial[:, 2] > 10), occipital & (pial[:, 2] < 0)
        out[hemi] = {
            "cut_vertices": int(len(cut)),
            "cut_pial_centroid_mm": pial[cut].mean(axis=0).round(1).tolist(),
            "cut_sulc_percentile": float((sulc[roi][None, :] < sulc[cut][:, None]).mean() * 100),
            "cut_canvas_mm": xy[cut].mean(axis=0).round(1).tolist(),
            "cuneus_canvas_y_mm": float(xy[cuneus, 1].mean()),
            "lingual_canvas_y_mm": float(xy[lingual, 1].mean()),
        }
    return out

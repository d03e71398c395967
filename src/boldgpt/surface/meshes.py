"""fsaverage meshes and anatomical maps that ship inside nilearn, and the reduction of data
on denser fsaverage meshes to the mesh in use.

Everything here reads files installed with the ``nilearn`` package
(``nilearn/datasets/data/fsaverage5``: flat, sphere, inflated, pial and white meshes and
the sulcal depth, curvature, thickness and area maps of each hemisphere); nothing is
downloaded. The paths are the ones ``nilearn.datasets.fetch_surf_fsaverage("fsaverage5")``
returns (a test checks this with the network blocked); they are located without
importing ``nilearn.datasets``, which takes seconds.

**Nested icosahedra.** fsaverage meshes are recursive subdivisions of an icosahedron:
each level adds the midpoints of the previous level's edges *after* the previous level's
vertices, so fsaverage3 (642 vertices), fsaverage4 (2,562), fsaverage5 (10,242),
fsaverage6 (40,962) and fsaverage/fsaverage7 (163,842) each begin with the vertices of
all coarser levels, at the same positions. Data on fsaverage6 or fsaverage are therefore
reduced to fsaverage5 by keeping their first 10,242 values per hemisphere (sampling at
the coarse vertices; no averaging). Checked on nilearn's fsaverage5 sphere for every level
it contains (12 -> 42 -> ... -> 10,242: every vertex past each level's count is the
normalized midpoint of two earlier vertices, within 1.3e-4 rad; see
``tests/test_surface.py``); the denser meshes are not shipped offline, so their nesting
is FreeSurfer's construction rather than something checked here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from boldgpt.errors import DataError

HEMIS = ("left", "right")
"""Hemisphere names, in the order of the canvas (left hemisphere on the left)."""

MESH_VERTICES: dict[str, int] = {
    "fsaverage3": 642,
    "fsaverage4": 2562,
    "fsaverage5": 10242,
    "fsaverage6": 40962,
    "fsaverage7": 163842,
    "fsaverage": 163842,
}
"""Vertices per hemisphere of the nested fsaverage meshes."""

FSAVERAGE5_VERTICES = MESH_VERTICES["fsaverage5"]
SURFACES = ("flat", "sphere", "infl", "pial", "white")
"""Meshes of nilearn's fsaverage5 (``infl`` = inflated)."""
ANATOMY = {"sulc": "sulcal depth", "curv": "curvature", "thick": "cortical thickness (mm)"}
"""Real per-vertex anatomical maps of fsaverage5 shipped with nilearn."""

OCCIPITAL_Y_MM = -60.0
"""The built-in occipital ROI: fsaverage5 vertices whose pial surface lies posterior to
this y (MNI305 mm; the occipital pole is at y = -104)."""


def check_hemi(hemi: str) -> str:
    """``"left"``/``"right"`` (also accepts ``lh``/``rh``/``L``/``R``)."""
    names = {
        "left": "left",
        "lh": "left",
        "l": "left",
        "right": "right",
        "rh": "right",
        "r": "right",
    }
    key = str(hemi).strip().lower()
    if key not in names:
        raise ValueError(f"bad hemisphere {hemi!r}: expected 'left' or 'right'")
    return names[key]


def fsaverage5_dir() -> Path:
    """The directory of nilearn's bundled fsaverage5 files (no import of nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the fsaverage5 meshes come from the 'nilearn' package, which is not installed "
            "(pip install nilearn)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "fsaverage5"
    if not path.is_dir():
        raise DataError(f"nilearn is installed but has no bundled fsaverage5 data at {path}")
    return path


def fsaverage5_file(name: str, hemi: str) -> Path:
    """Path of a bundled fsaverage5 file: ``name`` is a surface (:data:`SURFACES`) or a
    map (:data:`ANATOMY`), e.g. ``fsaverage5_file("flat", "left")``."""
    if name not in SURFACES and name not in ANATOMY:
        raise ValueError(
            f"unknown fsaverage5 file {name!r}; expected one of {SURFACES + tuple(ANATOMY)}"
        )
    path = fsaverage5_dir() / f"{name}_{check_hemi(hemi)}.gii.gz"
    if not path.exists():
        raise DataError(f"nilearn's fsaverage5 data lacks {path.name} (looked in {path.parent})")
    return path


def load_surface(name: str, hemi: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled fsaverage5 mesh: coordinates (10242, 3) float64 in mm and faces (F, 3)
    int64. The flat mesh keeps only the triangles of the cut patch (the medial wall is
    removed); its z coordinate is not used."""
    from boldgpt.surface.io import read_mesh

    return read_mesh(fsaverage5_file(name, hemi))


def load_anatomy(name: str, hemi: str) -> np.ndarray:
    """A real fsaverage5 anatomical map (:data:`ANATOMY`): (10242,) float32.
    ``sulc`` is FreeSurfer's sulcal depth (positive = deep, in sulci)."""
    from boldgpt.surface.io import read_maps

    if name not in ANATOMY:
        raise ValueError(f"unknown anatomical map {name!r}; expected one of {sorted(ANATOMY)}")
    return read_maps(fsaverage5_file(name, hemi))[0]


def occipital_roi(hemi: str, y_max: float = OCCIPITAL_Y_MM) -> np.ndarray:
    """The built-in occipital region of fsaverage5: bool (10242,), the vertices whose pial
    position is posterior to ``y_max`` mm (default :data:`OCCIPITAL_Y_MM`). With the
    default it covers the occipital lobe and the posterior ends of the parietal and
    temporal lobes: on the flat mesh about 90 x 190 mm per hemisphere, the extent of
    NSD-Flat's visual-cortex mask."""
    pial, _ = load_surface("pial", hemi)
    return pial[:, 1] < y_max


def reduce_to_mesh(values: np.ndarray, num_vertices: int, where: str) -> np.ndarray:
    """Values (N, V) on a nested fsaverage mesh reduced to the first ``num_vertices``
    (the coarser mesh in use; see the module docstring). ``V == num_vertices`` is
    returned unchanged; any other count, or a count that is not a denser fsaverage
    mesh, is a :class:`DataError` naming ``where``."""
    count = values.shape[-1]
    if count == num_vertices:
        return values
    nested = sorted(set(MESH_VERTICES.values()))
    if count > num_vertices and count in nested and num_vertices in nested:
        return values[..., :num_vertices]
    meshes = ", ".join(f"{k} {v:,}" for k, v in MESH_VERTICES.items())
    raise DataError(
        f"{where}: {count:,} vertices; the mesh in use has {num_vertices:,} per hemisphere "
        f"(data on a denser nested fsaverage mesh are reduced to it; vertices per "
        f"hemisphere: {meshes})"
    )

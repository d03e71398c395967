"""Reading and writing per-vertex surface data: GIfTI, MGH/MGZ and NumPy.

Maps are always returned as float32 (N, V): N maps of one hemisphere's V vertices.

- GIfTI (``.gii``, e.g. ``.func.gii``, ``.shape.gii``, ``.label.gii``; also ``.gii.gz``):
  one data array per map (fMRIPrep's layout), or one 2-D array (V, N) or (N, V) (the
  longer axis is taken as the vertices);
- MGH/MGZ (``.mgh``, ``.mgz``; FreeSurfer's volume-shaped surface data (V, 1, 1[, N]));
- NumPy (``.npy``): (V,) or (N, V).

Any other suffix is a :class:`~boldgpt.errors.DataError` naming the file. Meshes
(coordinates and triangles) are read from GIfTI surfaces (``.surf.gii``, ``.gii``), the
format of nilearn's and pycortex's surfaces.

A file's hemisphere is read from its GIfTI ``AnatomicalStructurePrimary`` metadata
(``CortexLeft``/``CortexRight``) or, failing that, from its name (BIDS ``hemi-L``/
``hemi-R``, FreeSurfer ``lh.``/``rh.``, or the words ``left``/``right``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from boldgpt.errors import DataError
from boldgpt.utils.io import atomic_write

MAP_FORMATS = {
    ".gii": "GIfTI",
    ".gii.gz": "GIfTI (gzipped)",
    ".mgh": "MGH",
    ".mgz": "MGZ",
    ".npy": "NumPy",
}
"""Suffixes of the per-vertex map formats read by :func:`read_maps`."""

_GIFTI_HEMI = {"cortexleft": "left", "cortexright": "right"}
_NAME_HEMI = {"hemi-l": "left", "hemi-r": "right", "lh": "left", "rh": "right", "left": "left"}
_NAME_HEMI["right"] = "right"


def file_format(path: str | os.PathLike) -> str:
    """The format of a map file from its suffix (a key of :data:`MAP_FORMATS`)."""
    name = Path(path).name.lower()
    for suffix in sorted(MAP_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    known = ", ".join(f"{s} ({f})" for s, f in MAP_FORMATS.items())
    raise DataError(f"{path}: unknown surface data format; expected one of {known}")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"surface file {path} does not exist")
    return path


def _load_gifti(path: Path):  # -> nibabel GiftiImage
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as GIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.gifti.GiftiImage):
        raise DataError(f"{path}: not a GIfTI image (nibabel read a {type(img).__name__})")
    return img


def read_maps(path: str | os.PathLike) -> np.ndarray:
    """Per-vertex maps of one hemisphere from a GIfTI, MGH/MGZ or ``.npy`` file:
    float32 (N, V). NaNs are kept (the caller decides what they mean)."""
    path = _existing(path)
    fmt = file_format(path)
    if fmt in (".gii", ".gii.gz"):
        img = _load_gifti(path)
        arrays = [np.asarray(d.data) for d in img.darrays]
        if not arrays:
            raise DataError(f"{path}: GIfTI file has no data arrays")
        if any(d.intent in (1008, 1009) for d in img.darrays):  # POINTSET / TRIANGLE
            raise DataError(f"{path}: is a surface mesh (coordinates, triangles), not maps")
        if len(arrays) == 1 and arrays[0].ndim == 2:
            # one 2-D array: vertices are the longer axis, whichever way it was written
            a = arrays[0]
            out = a.T if a.shape[0] >= a.shape[1] else a
        elif all(a.ndim == 1 for a in arrays) and len({a.shape for a in arrays}) == 1:
            out = np.stack(arrays)
        else:
            shapes = [a.shape for a in arrays]
            raise DataError(
                f"{path}: GIfTI data arrays of shapes {shapes}; expected one 1-D array of V "
                "values per map (or a single (V, N) array)"
            )
    elif fmt in (".mgh", ".mgz"):
        import nibabel as nib

        try:
            data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
        except Exception as exc:
            raise DataError(
                f"{path}: cannot read as MGH/MGZ ({type(exc).__name__}: {exc})"
            ) from exc
        if data.ndim < 1 or data.ndim > 4 or any(s != 1 for s in data.shape[1:3]):
            raise DataError(
                f"{path}: MGH data of shape {data.shape}; expected surface data (V, 1, 1[, N])"
            )
        out = data.reshape(data.shape[0], -1).T
    else:
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{path}: cannot read as .npy ({type(exc).__name__}: {exc})") from exc
        if data.ndim not in (1, 2):
            raise DataError(f"{path}: array of shape {data.shape}; expected (V,) or (N, V)")
        out = data.reshape(1, -1) if data.ndim == 1 else data
    if not np.issubdtype(out.dtype, np.number) or np.issubdtype(out.dtype, np.complexfloating):
        raise DataError(f"{path}: data of dtype {out.dtype}; expected real numbers")
    return np.ascontiguousarray(out, dtype=np.float32)


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A GIfTI surface: coordinates (V, 3) float64 and faces (F, 3) int64."""
    path = _existing(path)
    if not path.name.lower().endswith((".gii", ".gii.gz")):
        raise DataError(f"{path}: a surface mesh must be a GIfTI file (.surf.gii / .gii)")
    img = _load_gifti(path)
    coords = [d.data for d in img.darrays if d.intent == 1008]
    faces = [d.data for d in img.darrays if d.intent == 1009]
    if len(coords) != 1 or len(faces) != 1:
        raise DataError(
            f"{path}: expected one POINTSET and one TRIANGLE data array (a surface mesh); "
            f"found {len(coords)} and {len(faces)}"
        )
    xyz, tri = np.asarray(coords[0], np.float64), np.asarray(faces[0], np.int64)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3) or tri.ndim != 2 or tri.shape[1] != 3:
        raise DataError(
            f"{path}: coordinates {xyz.shape} / faces {tri.shape}; expected (V, 3)/(F, 3)"
        )
    if len(tri) and (tri.min() < 0 or tri.max() >= len(xyz)):
        raise DataError(f"{path}: faces index vertices outside 0..{len(xyz) - 1}")
    return xyz, tri


def read_vertex_mask(path: str | os.PathLike, num_vertices: int) -> np.ndarray:
    """A vertex mask (ROI) of one hemisphere: bool (num_vertices,). From a FreeSurfer
    ``.label`` file (the listed vertices) or any map file (nonzero = inside)."""
    path = _existing(path)
    if path.name.lower().endswith(".label"):
        import nibabel as nib

        try:
            idx = np.asarray(nib.freesurfer.read_label(path), dtype=np.int64)
        except Exception as exc:
            raise DataError(f"{path}: cannot read a FreeSurfer label ({exc})") from exc
        if len(idx) and (idx.min() < 0 or idx.max() >= num_vertices):
            raise DataError(f"{path}: label lists vertices outside 0..{num_vertices - 1}")
        mask = np.zeros(num_vertices, dtype=bool)
        mask[idx] = True
        return mask
    maps = read_maps(path)
    if len(maps) != 1:
        raise DataError(f"{path}: a vertex mask must be one map; found {len(maps)}")
    from boldgpt.surface.meshes import reduce_to_mesh

    mask = reduce_to_mesh(maps, num_vertices, str(path))[0]
    if np.isnan(mask).any():
        raise DataError(f"{path}: vertex mask has NaN values")
    return mask != 0


def file_hemisphere(path: str | os.PathLike) -> str | None:
    """``"left"``/``"right"`` as the file says (GIfTI metadata, then its name), or None."""
    path = Path(path)
    if path.name.lower().endswith((".gii", ".gii.gz")) and path.is_file():
        img = _load_gifti(path)
        structure = str(img.meta.get("AnatomicalStructurePrimary", "")).lower()
        if structure in _GIFTI_HEMI:
            return _GIFTI_HEMI[structure]
    tokens = re.split(r"[._]", path.name.lower())
    found = {_NAME_HEMI[t] for t in tokens if t in _NAME_HEMI}
    return found.pop() if len(found) == 1 else None


def check_file_hemisphere(path: str | os.PathLike, hemi: str) -> None:
    """Raise a :class:`DataError` if ``path`` says it holds the other hemisphere."""
    said = file_hemisphere(path)
    if said is not None and said != hemi:
        raise DataError(
            f"{path}: given as the {hemi} hemisphere, but the file is marked as the {said} "
            "hemisphere (GIfTI AnatomicalStructurePrimary or its name); swap left and right"
        )


def write_gifti(path: str | os.PathLike, maps: np.ndarray, hemi: str) -> Path:
    """Write maps (N, V) (or (V,)) of one hemisphere as a GIfTI ``.func.gii``, one float32
    data array per map, marked with the hemisphere (atomically). Returns the path."""
    import nibabel as nib

    from boldgpt.surface.meshes import check_hemi

    hemi = check_hemi(hemi)
    maps = np.asarray(maps, dtype=np.float32)
    maps = maps.reshape(1, -1) if maps.ndim == 1 else maps
    if maps.ndim != 2:
        raise ValueError(f"expected maps (N, V) or (V,); got shape {maps.shape}")
    structure = "CortexLeft" if hemi == "left" else "CortexRight"
    img = nib.gifti.GiftiImage(
        meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure})
    )
    for m in maps:
        img.add_gifti_data_array(
            nib.gifti.GiftiDataArray(m, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32")
        )
    path = Path(path)
    with atomic_write(path) as f:
        f.write(img.to_bytes())
    return path

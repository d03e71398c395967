"""``flatten_dataset``: per-hemisphere surface maps -> a dataset in the NSD-Flat layout.

The output directory is read by the same loader, cache and training as NSD-Flat
(``boldgpt.data.nsd_flat.load_nsd_flat``, ``boldgpt data cache``, ``boldgpt train
data.source=DIR``)::

    DIR/data/train-00000-of-00001.parquet   rows: subject_id, trial_id, session_id,
    DIR/data/test-00000-of-00001.parquet    nsd_id, activity (PNG), subject, shared1000
                                            [, image (PNG)]
    DIR/mask.npy                 bool (215, 200): the pixels covered by ROI triangles
    DIR/surface_geometry.npz     the placed flat meshes and ROI (for the way back)
    DIR/flatten.json             inputs, geometry, counts
    DIR/README.md

Per map, as NSD-Flat: the vertex values of each (subject, session) are z-scored per
vertex over the session's maps (``zscore=False`` keeps them as given, e.g. maps that are
already z- or t-statistics), rasterized (barycentric interpolation inside the flat
triangles), clipped to [-2.5, 2.5] and coded as uint8 ``floor(255 * (z + 2.5) / 5)``;
every pixel outside the mask is 127 (z = 0).

**Inputs** are *entries*, one per map or per file pair (a manifest CSV has the same
columns; paths in it are relative to the manifest):

- ``left``, ``right``: the two hemispheres' files (GIfTI, MGH/MGZ, ``.npy``; see
  :mod:`boldgpt.surface.io`) or arrays (N, V) / (V,). Data on fsaverage6 or fsaverage
  are reduced to the flat mesh's fsaverage5 (:mod:`boldgpt.surface.meshes`);
- ``subject`` (0-based id or ``subj01``-style name), ``session`` (int): required;
- ``map``: index of the map in the files; absent = every map of the files, in order;
- ``stimulus``: the stimulus id (``nsd_id`` column), an int, or for an entry of
  several maps a list (``;``-separated in a CSV); absent = a new id per map;
- ``image``: path of the stimulus picture (stored as an RGB PNG);
- ``shared``: true for maps of the validation split (NSD's ``shared1000`` convention);
- ``split``: ``train`` or ``test`` (default: ``train``, or ``test`` for each subject's
  last ``test_sessions`` sessions).

**Bad values.** Non-finite vertex values (NaN, inf) inside the ROI: with
``nan="mask"`` (default) those vertices are dropped from the ROI of the whole dataset
(the mask must be the same for every map) with a warning naming the files; with
``nan="error"`` a :class:`~boldgpt.errors.DataError` names the first such file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.surface import meshes
from boldgpt.surface.geometry import GEOMETRY_FILE, SurfaceGeometry, build_geometry
from boldgpt.utils.io import atomic_dir, atomic_write, write_json

ROWS_PER_SHARD = 2000
MANIFEST_COLUMNS = (
    "left",
    "right",
    "subject",
    "session",
    "map",
    "stimulus",
    "image",
    "shared",
    "split",
)
_REQUIRED = ("left", "right", "subject", "session")


@dataclass
class _Map:
    """One map to write: where its values come from and its metadata."""

    left: Any
    right: Any
    index: int
    subject: int
    session: int
    stimulus: int | None
    image: str | None
    shared: bool
    split: str | None
    where: str


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries from a CSV manifest (header row; columns as in the module docstring).
    Relative paths are resolved against the manifest's directory."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    unknown = sorted(set(rows[0]) - set(MANIFEST_COLUMNS))
    missing = [c for c in _REQUIRED if c not in rows[0]]
    if unknown or missing:
        raise DataError(
            f"{path}: manifest columns {sorted(rows[0])}; required {list(_REQUIRED)}, optional "
            f"{[c for c in MANIFEST_COLUMNS if c not in _REQUIRED]}"
            + (f"; unknown {unknown}" if unknown else "")
            + (f"; missing {missing}" if missing else "")
        )
    entries = []
    for i, row in enumerate(rows, start=2):
        entry: dict[str, Any] = {
            k: v.strip() for k, v in row.items() if v is not None and v.strip()
        }
        for key in ("left", "right", "image"):
            if key in entry:
                entry[key] = str((path.parent / entry[key]).expanduser())
        if "stimulus" in entry and ";" in entry["stimulus"]:
            entry["stimulus"] = [s for s in entry["stimulus"].split(";") if s.strip()]
        entry["_where"] = f"{path} line {i}"
        entries.append(entry)
    return entries


def _as_int(value: Any, key: str, where: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key}={value!r} is not an integer") from None
    if out < 0:
        raise DataError(f"{where}: {key}={out} must be >= 0")
    return out


def _as_bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise DataError(f"{where}: {key}={value!r}; expected true or false")


class _Reader:
    """Reads (and checks) the files of entries, keeping the last few in memory."""

    def __init__(self, num_vertices: tuple[int, int], keep: int = 8):
        self.num_vertices = num_vertices
        self.keep = keep
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def maps(self, source: Any, hemi: str, where: str) -> np.ndarray:
        """(N, V_h) float32 values of one hemisphere."""
        from boldgpt.surface.io import check_file_hemisphere, read_maps

        n = self.num_vertices[meshes.HEMIS.index(hemi)]
        if not isinstance(source, (str, os.PathLike)):
            arr = np.asarray(source, dtype=np.float32)
            arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
            if arr.ndim != 2:
                raise DataError(f"{where}: {hemi} values of shape {arr.shape}; expected (N, V)")
            return meshes.reduce_to_mesh(arr, n, f"{where} ({hemi} array)")
        key = f"{os.fspath(source)}|{hemi}"
        if key not in self._cache:
            check_file_hemisphere(source, hemi)
            self._cache[key] = meshes.reduce_to_mesh(read_maps(source), n, str(source))
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return self._cache[key]

    def pair(self, m: _Map) -> tuple[np.ndarray, np.ndarray]:
        """The (V_left,), (V_right,) values of one map."""
        return tuple(  # type: ignore[return-value]
            self.maps(src, hemi, m.where)[m.index]
            for src, hemi in zip((m.left, m.right), meshes.HEMIS)
        )


def _expand(
    entries: Sequence[dict[str, Any]], reader: _Reader, non_finite: _NonFinite
) -> list[_Map]:
    """One :class:`_Map` per map of the entries, checked; each entry's files are read
    once here (and scanned for non-finite values while they are in memory)."""
    from boldgpt.data.sources import normalize_subjects

    out: list[_Map] = []
    for k, entry in enumerate(entries):
        where = entry.get("_where", f"entry {k}")
        missing = [key for key in _REQUIRED if entry.get(key) is None]
        if missing:
            raise DataError(f"{where}: missing {missing} (required: {list(_REQUIRED)})")
        counts = []
        for hemi in meshes.HEMIS:
            src = entry[hemi]
            label = os.fspath(src) if isinstance(src, (str, os.PathLike)) else f"{hemi} array"
            counts.append((reader.maps(src, hemi, where).shape[0], label))
        if counts[0][0] != counts[1][0]:
            raise DataError(
                f"{where}: {counts[0][1]} has {counts[0][0]} map(s) but {counts[1][1]} has "
                f"{counts[1][0]}; left and right files must hold the same maps"
            )
        try:
            subject = normalize_subjects(entry["subject"])[0]
        except (ValueError, DataError) as exc:
            raise DataError(f"{where}: {exc}") from None
        session = _as_int(entry["session"], "session", where)
        if entry.get("map") is not None:
            indexes = [_as_int(entry["map"], "map", where)]
            if indexes[0] >= counts[0][0]:
                raise DataError(
                    f"{where}: map={indexes[0]} but the files hold {counts[0][0]} map(s)"
                )
        else:
            indexes = list(range(counts[0][0]))
        stim = entry.get("stimulus")
        if stim is None:
            stimuli: list[int | None] = [None] * len(indexes)
        else:
            stim_list = list(stim) if isinstance(stim, (list, tuple, np.ndarray)) else [stim]
            if len(stim_list) != len(indexes):
                raise DataError(
                    f"{where}: {len(stim_list)} stimulus id(s) for {len(indexes)} map(s)"
                )
            stimuli = [_as_int(s, "stimulus", where) for s in stim_list]
        if entry.get("image") is not None and len(indexes) != 1:
            raise DataError(f"{where}: an image is given for {len(indexes)} maps; give one per map")
        split = entry.get("split")
        if split is not None and split not in ("train", "test"):
            raise DataError(f"{where}: split={split!r}; expected 'train' or 'test'")
        shared = _as_bool(entry.get("shared", False), "shared", where)
        for i, stim_id in zip(indexes, stimuli):
            m = _Map(
                left=entry["left"],
                right=entry["right"],
                index=i,
                subject=subject,
                session=session,
                stimulus=stim_id,
                image=entry.get("image"),
                shared=shared,
                split=split,
                where=where,
            )
            non_finite.scan(m, reader)
            out.append(m)
    if not out:
        raise DataError("no maps to flatten: the entries hold no maps")
    return out


class _NonFinite:
    """Collects the ROI vertices that are non-finite in some map (per hemisphere, bool
    (V_h,) in ``bad``), or raises at the first one with ``nan="error"``."""

    def __init__(self, geometry: SurfaceGeometry, nan: str):
        self.roi = geometry.roi
        self.nan = nan
        self.bad = [np.zeros(n, dtype=bool) for n in geometry.num_vertices]
        self.files: dict[str, int] = {}

    def scan(self, m: _Map, reader: _Reader) -> None:
        for h, values in enumerate(reader.pair(m)):
            wrong = ~np.isfinite(values) & self.roi[h]
            if not wrong.any():
                continue
            src = (m.left, m.right)[h]
            label = os.fspath(src) if isinstance(src, (str, os.PathLike)) else m.where
            if self.nan == "error":
                raise DataError(
                    f"{label}: map {m.index} has {int(wrong.sum())} non-finite (NaN/inf) "
                    f"value(s) at ROI vertices of the {meshes.HEMIS[h]} hemisphere "
                    "(nan='mask' drops such vertices from the ROI instead)"
                )
            self.files[label] = self.files.get(label, 0) + int(wrong.sum())
            self.bad[h] |= wrong

    def warn(self) -> None:
        if not self.files:
            return
        listed = "; ".join(f"{f}: {n}" for f, n in list(self.files.items())[:5])
        more = f" and {len(self.files) - 5} more file(s)" if len(self.files) > 5 else ""
        warnings.warn(
            f"non-finite (NaN/inf) values at {int(self.bad[0].sum())} left and "
            f"{int(self.bad[1].sum())} right ROI vertices (values per file: {listed}{more}); "
            "these vertices are left out of the ROI (and so out of the mask) for the whole "
            "dataset",
            stacklevel=3,
        )


def _encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, "L" if array.ndim == 2 else "RGB").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def _image_png(path: str) -> bytes:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _encode_png(np.asarray(img.convert("RGB")))
    except FileNotFoundError:
        raise DataError(f"stimulus image {path} does not exist") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read the stimulus image ({exc})") from exc


def _arrow_schema(with_image: bool):  # -> pa.Schema
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [
        ("subject_id", pa.int64(), {"dtype": "int64", "_type": "Value"}),
        ("trial_id", pa.int64(), {"dtype": "int64", "_type": "Value"}),
        ("session_id", pa.int64(), {"dtype": "int64", "_type": "Value"}),
        ("nsd_id", pa.int64(), {"dtype": "int64", "_type": "Value"}),
        ("activity", image, {"_type": "Image"}),
        ("subject", pa.string(), {"dtype": "string", "_type": "Value"}),
        ("shared1000", pa.bool_(), {"dtype": "bool", "_type": "Value"}),
    ]
    if with_image:
        fields.insert(4, ("image", image, {"_type": "Image"}))
    # the Hugging Face `datasets` schema, so that it restores the Image columns
    hf = {"info": {"features": {name: feat for name, _, feat in fields}}}
    return pa.schema([(n, t) for n, t, _ in fields], metadata={"huggingface": json.dumps(hf)})


def _write_split(root: Path, split: str, rows: list[dict[str, Any]], with_image: bool) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_schema = _arrow_schema(with_image)
    n_shards = max(1, math.ceil(len(rows) / ROWS_PER_SHARD))
    names = []
    for s in range(n_shards):
        chunk = rows[s * ROWS_PER_SHARD : (s + 1) * ROWS_PER_SHARD]
        columns = {}
        for field in arrow_schema:
            values = [r[field.name] for r in chunk]
            if pa.types.is_struct(field.type):
                values = [{"bytes": v, "path": None} for v in values]
            columns[field.name] = pa.array(values, type=field.type)
        name = f"data/{split}-{s:05d}-of-{n_shards:05d}.parquet"
        (root / "data").mkdir(exist_ok=True)
        pq.write_table(pa.table(columns, schema=arrow_schema), root / name)
        names.append(name)
    return names


def flatten_dataset(
    out_dir: str | os.PathLike,
    entries: Sequence[dict[str, Any]],
    *,
    flat: Sequence[str | os.PathLike | None] = (None, None),
    roi: Sequence[str | os.PathLike | np.ndarray | None] = (None, None),
    placement: str = "fit",
    zscore: bool = True,
    nan: str = "mask",
    test_sessions: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write surface maps as an NSD-Flat-layout dataset (see the module docstring).

    Args:
        out_dir: the dataset directory to create (replaced atomically with
            ``overwrite``).
        entries: dicts with the keys of the module docstring (or :func:`read_manifest`).
        flat, roi, placement: the geometry (:func:`boldgpt.surface.geometry.build_geometry`).
        zscore: z-score each vertex over each (subject, session)'s maps, as NSD-Flat.
        nan: ``"mask"`` or ``"error"``: what non-finite ROI values do.
        test_sessions: put each subject's last this-many sessions in the test split
            (entries with a ``split`` keep theirs).

    Returns:
        the summary also written to ``flatten.json`` (counts, mask pixels, geometry).
    """
    if nan not in ("mask", "error"):
        raise ValueError(f"nan={nan!r}; expected 'mask' or 'error'")
    if test_sessions < 0:
        raise ValueError(f"test_sessions={test_sessions}; expected >= 0")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    geometry = build_geometry(flat, roi, placement)
    reader = _Reader(geometry.num_vertices)
    non_finite = _NonFinite(geometry, nan)
    maps = _expand(entries, reader, non_finite)
    non_finite.warn()
    with_image = any(m.image is not None for m in maps)
    for m in maps if with_image else []:
        if m.image is None:
            raise DataError(f"{m.where}: no image, but other entries have one; give all or none")
        if not Path(m.image).is_file():
            raise DataError(f"{m.where}: stimulus image {m.image} does not exist")
    bad = non_finite.bad
    if any(b.any() for b in bad):
        rois = [r & ~b for r, b in zip(geometry.roi, bad)]
        geometry = build_geometry(flat, rois, placement)
        geometry.info["non_finite_vertices"] = [int(b.sum()) for b in bad]
    raster = geometry.raster

    # splits: explicit, else each subject's last `test_sessions` sessions
    sessions: dict[int, list[int]] = {}
    for m in maps:
        sessions.setdefault(m.subject, []).append(m.session)
    last = {s: set(sorted(set(v))[::-1][:test_sessions]) for s, v in sessions.items()}
    next_stimulus = 1 + max((m.stimulus for m in maps if m.stimulus is not None), default=-1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault((m.subject, m.session), []).append(i)
        if m.stimulus is None:
            m.stimulus, next_stimulus = next_stimulus, next_stimulus + 1

    activity: list[bytes | None] = [None] * len(maps)
    for (subject, session), idx in groups.items():
        values = [np.stack(v).astype(np.float64) for v in zip(*(reader.pair(maps[i]) for i in idx))]
        if zscore:
            if len(idx) < 2:
                raise DataError(
                    f"{maps[idx[0]].where}: subject {subject} session {session} has one map; "
                    "z-scoring per session needs at least 2 (or use zscore=False / --no-zscore)"
                )
            for v in values:
                std = v.std(axis=0)
                # a vertex constant over the session carries no signal: z = 0
                v -= v.mean(axis=0)
                np.divide(v, std, out=v, where=std > 0)
                v[:, std == 0] = 0.0
        flat_maps = raster.to_flat(values[0], values[1], fill=0.0)
        coded = schema.quantize(flat_maps)
        for i, u in zip(idx, coded):
            activity[i] = _encode_png(u)

    images: dict[str, bytes] = {}
    trial_counter: dict[int, int] = {}
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for m, png in zip(maps, activity):
        split = m.split or ("test" if m.session in last[m.subject] else "train")
        row = {
            "subject_id": m.subject,
            "trial_id": trial_counter.setdefault(m.subject, 0),
            "session_id": m.session,
            "nsd_id": m.stimulus,
            "activity": png,
            "subject": schema.subject_name(m.subject),
            "shared1000": m.shared,
        }
        trial_counter[m.subject] += 1
        if with_image:
            if m.image not in images:
                images[m.image] = _image_png(m.image)
            row["image"] = images[m.image]
        rows[split].append(row)

    summary = {
        "maps": {split: len(r) for split, r in rows.items()},
        "subjects": sorted(sessions),
        "sessions": {schema.subject_name(s): sorted(set(v)) for s, v in sessions.items()},
        "mask_pixels": int(raster.mask.sum()),
        "zscore": zscore,
        "geometry": geometry.info,
        "inputs": sorted(
            {
                os.fspath(x)
                for m in maps
                for x in (m.left, m.right)
                if isinstance(x, (str, os.PathLike))
            }
        ),
    }
    with atomic_dir(out_dir) as tmp:
        for split, split_rows in rows.items():
            # an empty split still gets its (empty) shard, as the simulator's do
            _write_split(tmp, split, split_rows, with_image)
        with atomic_write(tmp / "mask.npy") as f:
            np.save(f, raster.mask)
        geometry.save(tmp / GEOMETRY_FILE)
        write_json(tmp / "flatten.json", summary)
        (tmp / "README.md").write_text(_card(summary))
    return summary


def _card(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{split} {n:,}" for split, n in summary["maps"].items())
    return f"""# Flattened surface data

Written by `boldgpt data flatten`: surface maps rasterized onto NSD-Flat's 215 x 200
canvas (1 mm pixels) and stored in its layout and uint8 code, so boldgpt's loader,
cache and training read it like NSD-Flat.

- maps: {counts}; subjects: {", ".join(schema.subject_name(s) for s in summary["subjects"])}
- mask: {summary["mask_pixels"]:,} pixels (`mask.npy`); z-scored per session: {summary["zscore"]}
- geometry: `surface_geometry.npz`; details in `flatten.json`
- back to the surface: `boldgpt data to-surface MAPS.npy --geometry THIS_DIR`
"""


def maps_to_surface(
    maps: np.ndarray, geometry: SurfaceGeometry, *, fill: float = float("nan")
) -> tuple[np.ndarray, np.ndarray]:
    """Flat maps (H, W) or (B, H, W) -> vertex values ((B, V_left), (B, V_right)).

    uint8 maps are decoded with NSD-Flat's code first (z = 5 u / 255 - 2.5); float maps
    are taken as z-values. Vertices outside the ROI get ``fill``."""
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[1:] != schema.MAP_SHAPE:
        raise DataError(
            f"maps of shape {maps.shape}; expected ({schema.HEIGHT}, {schema.WIDTH}) or "
            f"(B, {schema.HEIGHT}, {schema.WIDTH})"
        )
    if maps.dtype == np.uint8:
        maps = schema.dequantize(maps)
    left, right = geometry.raster.to_vertices(maps.astype(np.float32))
    for v in (left, right):
        v[np.isnan(v)] = fill
    return left, right

"""NSD-Flat schema validation, splits, the cortex mask of a source and checked PNG
decoding.

Sources (``sim:<preset>``, a local directory, a hub id) are parsed and made local by
:mod:`boldgpt.data.sources`; every source ends up as local parquet shards, so one code
path validates, splits and decodes all three. Splits: ``train`` = hub train split minus
``shared1000`` rows, ``val`` = the ``shared1000`` rows of the hub train split, ``test`` =
the hub test split.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from boldgpt.data import schema
from boldgpt.data.masks import read_mask_file
from boldgpt.data.sources import (
    DEFAULT_SOURCE,
    Source,
    normalize_subjects,
    resolve_source,
)
from boldgpt.errors import DataError

SPLITS = ("train", "val", "test")
HUB_SPLIT = {"train": "train", "val": "train", "test": "test"}
"""The hub split each boldgpt split is drawn from."""
META_COLUMNS = ("subject_id", "trial_id", "session_id", "nsd_id", "shared1000")
READ_BATCH = 64
"""Rows read from a parquet row group at a time."""
MASK_SAMPLE_MAPS = 256
"""Maps decoded to estimate a mask when the source ships none."""


# --------------------------------------------------------------------------- validation


def check_file_schema(path: Path, columns: Sequence[str] = tuple(schema.REQUIRED_COLUMNS)) -> None:
    """Check that a parquet shard is readable and has ``columns`` with the right types.

    Raises :class:`DataError` naming the file, the column and what was expected.
    """
    try:
        arrow_schema = pq.read_schema(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    for name in columns:
        expected = schema.REQUIRED_COLUMNS.get(name, "image (PNG)")
        if name not in arrow_schema.names:
            raise DataError(
                f"{path}: missing column {name!r} (expected {expected}); "
                f"columns present: {', '.join(arrow_schema.names)}"
            )
        dtype = arrow_schema.field(name).type
        if not _type_ok(name, dtype):
            raise DataError(f"{path}: column {name!r} has type {dtype}; expected {expected}")


def _type_ok(name: str, dtype: pa.DataType) -> bool:
    if name in ("activity", "image"):
        if pa.types.is_struct(dtype):
            try:
                return pa.types.is_binary(dtype.field("bytes").type) or pa.types.is_large_binary(
                    dtype.field("bytes").type
                )
            except KeyError:
                return False
        return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)
    if name == "shared1000":
        return pa.types.is_boolean(dtype)
    return pa.types.is_integer(dtype)


def _open_png(value: Any, where: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if data is not None else path
    if value is None:
        raise DataError(f"{where}: the image is empty (no PNG bytes and no path)")
    try:
        src = io.BytesIO(value) if isinstance(value, (bytes, bytearray, memoryview)) else value
        img = Image.open(src)
        img.load()
    except Exception as exc:
        raise DataError(f"{where}: cannot decode the image ({type(exc).__name__}: {exc})") from exc
    return img


def decode_activity(value: Any, where: str = "activity") -> np.ndarray:
    """Decode one activity map and check it: a PNG, 8-bit grayscale (mode ``L``), 200 wide
    and 215 high. ``value`` is PNG bytes, a ``{"bytes", "path"}`` dict (the parquet
    layout), a path or a decoded PIL image. Returns uint8 (215, 200).

    ``where`` (e.g. ``"data/train-0.parquet row 12"``) is put in the error message.
    """
    img = _open_png(value, where)
    if img.format not in (None, "PNG"):
        raise DataError(f"{where}: activity is a {img.format} image; expected a lossless PNG")
    if img.mode != "L":
        raise DataError(f"{where}: activity PNG has mode {img.mode!r}; expected 'L' (8-bit gray)")
    if img.size != (schema.WIDTH, schema.HEIGHT):
        raise DataError(
            f"{where}: activity map is {img.size[1]}x{img.size[0]} (rows x columns); "
            f"expected {schema.HEIGHT}x{schema.WIDTH}"
        )
    return np.asarray(img, dtype=np.uint8)


def decode_image(value: Any, where: str = "image", size: int | None = None) -> np.ndarray:
    """Decode one stimulus image as RGB uint8 (H, W, 3).

    With ``size``, the image is centre-cropped to a square and resized (antialiased
    bicubic) to (size, size, 3).
    """
    img = _open_png(value, where)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except Exception as exc:
            raise DataError(f"{where}: cannot convert a {img.mode!r} image to RGB") from exc
    if size is not None:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
    return np.asarray(img, dtype=np.uint8)


def png_bytes(column: pa.ChunkedArray | pa.Array) -> list[bytes | None]:
    """The PNG bytes of an image column as stored in parquet (struct with ``bytes``, or
    plain binary)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return column.to_pylist()


# --------------------------------------------------------------------------- splits


@dataclass
class SplitIndex:
    """The rows of one split of a source, with their metadata.

    ``rows`` (N,) are row numbers in the concatenated hub split (its shards in order);
    ``meta`` holds the (N,) arrays of :data:`META_COLUMNS` for those rows;
    ``file_offsets`` (F+1,) the first hub-split row of each shard.
    """

    source: Source
    split: str
    files: tuple[Path, ...]
    file_offsets: np.ndarray
    rows: np.ndarray
    meta: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, i: int) -> tuple[Path, int]:
        """``(shard, row within the shard)`` of the i-th row of this split."""
        row = int(self.rows[i])
        f = int(np.searchsorted(self.file_offsets, row, side="right")) - 1
        return self.files[f], row - int(self.file_offsets[f])

    def where(self, i: int) -> str:
        """Human-readable location of the i-th row, for error messages."""
        path, row = self.locate(i)
        return f"{path} row {row}"


def index_split(
    source: Source | str | os.PathLike,
    split: str,
    subjects: int | str | Sequence[int | str] | None = None,
    *,
    progress: bool = True,
) -> SplitIndex:
    """Validate a source's shards for ``split`` and list the split's rows.

    Reads only the small metadata columns (fast even for the full 27 GB dataset); checks
    required columns, their types and missing values, naming the shard and row.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    src = source if isinstance(source, Source) else resolve_source(source, progress=progress)
    hub_split = HUB_SPLIT[split]
    files = src.files[hub_split]
    if not files:
        raise DataError(
            f"{src.root}: no shards for the hub split {hub_split!r} "
            f"(expected {schema.SPLIT_FILES[hub_split]})"
        )
    offsets = [0]
    chunks: dict[str, list[np.ndarray]] = {c: [] for c in META_COLUMNS}
    for path in files:
        check_file_schema(path)
        try:
            table = pq.read_table(path, columns=list(META_COLUMNS))
        except Exception as exc:
            raise DataError(f"{path}: cannot read columns {list(META_COLUMNS)} ({exc})") from exc
        for name in META_COLUMNS:
            col = table.column(name)
            if col.null_count:
                row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{path} row {row}: column {name!r} is missing (null)")
            dtype = np.bool_ if name == "shared1000" else np.int64
            chunks[name].append(col.to_numpy().astype(dtype, copy=False))
        # ids index subject embeddings and stimuli: out of range fails here, by row
        for name, top in (
            ("subject_id", schema.NUM_NSD_SUBJECTS),
            ("nsd_id", schema.NUM_NSD_IMAGES),
        ):
            ids = chunks[name][-1]
            bad = np.flatnonzero((ids < 0) | (ids >= top))
            if len(bad):
                raise DataError(
                    f"{path} row {int(bad[0])}: {name} {int(ids[bad[0]])} is out of range "
                    f"({len(bad)} such rows); expected 0..{top - 1}"
                )
        offsets.append(offsets[-1] + table.num_rows)
    meta = {c: np.concatenate(v) for c, v in chunks.items()}

    keep = np.ones(len(meta["subject_id"]), dtype=bool)
    if split == "train":
        keep = ~meta["shared1000"]
    elif split == "val":
        keep = meta["shared1000"].copy()
    wanted = normalize_subjects(subjects)
    if wanted is not None:
        present = np.unique(meta["subject_id"])
        missing = sorted(set(wanted) - set(present.tolist()))
        if missing:
            raise DataError(
                f"subject_id {missing} not in {src.spec!r} (hub split {hub_split!r}); "
                f"available subject_id values: {present.tolist()}"
            )
        keep &= np.isin(meta["subject_id"], wanted)
    rows = np.flatnonzero(keep)
    return SplitIndex(
        source=src,
        split=split,
        files=files,
        file_offsets=np.asarray(offsets, dtype=np.int64),
        rows=rows,
        meta={c: v[rows] for c, v in meta.items()},
    )


def read_rows(path: Path, rows: Sequence[int], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Raw values of ``columns`` at ``rows`` (row numbers within the shard ``path``), in the
    order given. Image columns come back as PNG bytes.

    Only the row groups that hold the rows are read, in slices of ``READ_BATCH`` rows up to
    the last row needed: memory stays small and reading row 0 does not read a whole
    (up to ~100 MB) row group."""
    pf = pq.ParquetFile(path)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise ValueError(f"{path}: rows out of range 0..{starts[-1] - 1}")
    groups = np.searchsorted(starts, rows, side="right") - 1
    out: dict[str, list[Any]] = {c: [None] * len(rows) for c in columns}
    for g in np.unique(groups).tolist():
        sel = np.flatnonzero(groups == g)
        local = rows[sel] - starts[g]
        lo = 0
        for batch in pf.iter_batches(READ_BATCH, row_groups=[g], columns=list(columns)):
            hi = lo + batch.num_rows
            hit = np.flatnonzero((local >= lo) & (local < hi))
            for name in columns if len(hit) else ():
                col = batch.column(name).take(pa.array(local[hit] - lo))
                values = png_bytes(col) if name in ("activity", "image") else col.to_pylist()
                for j, v in zip(sel[hit].tolist(), values):
                    out[name][j] = v
            lo = hi
            if lo > local.max():
                break
    return out


def read_maps(index: SplitIndex, positions: Sequence[int]) -> np.ndarray:
    """Decode and check the activity maps of rows ``positions`` of a split: uint8 (K, 215, 200)."""
    positions = list(positions)
    out = np.empty((len(positions), *schema.MAP_SHAPE), dtype=np.uint8)
    located = [index.locate(i) for i in positions]
    for path in dict.fromkeys(p for p, _ in located):
        sel = [j for j, (p, _) in enumerate(located) if p == path]
        values = read_rows(path, [located[j][1] for j in sel], ["activity"])["activity"]
        for j, value in zip(sel, values):
            out[j] = decode_activity(value, f"{path} row {located[j][1]} column 'activity'")
    return out


# --------------------------------------------------------------------------- loading


def load_nsd_flat(
    source: str | os.PathLike | Source = DEFAULT_SOURCE,
    split: str = "train",
    subjects: int | str | Sequence[int | str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Any:
    """Load one split of NSD-Flat (or the simulator's output) as a ``datasets.Dataset``.

    Args:
        source: ``sim:<preset>``, a local directory in the hub layout, or a hub id.
        split: ``train`` (hub train minus shared1000), ``val`` (shared1000 rows of hub
            train) or ``test`` (hub test).
        subjects: 0-based subject ids or names (``"subj01"``); None for all.
        cache_dir: where ``datasets`` keeps its Arrow copy (default: its own cache).

    The schema is validated first (every shard, naming file, column and row on failure),
    and the first map of every shard is decoded and checked (PNG, gray, 215x200). Rows
    keep every column of the source; ``activity`` and ``image`` decode to PIL images.
    """
    import datasets

    index = index_split(source, split, subjects, progress=progress)
    for path in index.files:
        if pq.ParquetFile(path).metadata.num_rows:
            value = read_rows(path, [0], ["activity"])["activity"][0]
            decode_activity(value, f"{path} row 0 column 'activity'")
    hub_split = HUB_SPLIT[split]
    if not progress:
        datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(
            "parquet",
            data_files={hub_split: [str(p) for p in index.files]},
            split=hub_split,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        )
    except Exception as exc:
        raise DataError(f"cannot load the parquet shards of {index.source.root}: {exc}") from exc
    finally:
        if not progress:
            datasets.enable_progress_bars()
    if len(ds) != int(index.file_offsets[-1]):
        raise DataError(
            f"{index.source.root}: datasets read {len(ds)} rows but the shards hold "
            f"{int(index.file_offsets[-1])}"
        )
    # Parquet written without Hugging Face metadata stores images as plain structs.
    for name in ("activity", "image"):
        if name in ds.column_names and not isinstance(ds.features[name], datasets.Image):
            ds = ds.cast_column(name, datasets.Image())
    if len(index.rows) != len(ds):
        ds = ds.select(index.rows)
    return ds


# --------------------------------------------------------------------------- mask


def estimate_mask(maps: np.ndarray) -> np.ndarray:
    """Pixels that vary across maps (K, 215, 200): outside the cortex every map holds the
    same background value, inside z-scored activity essentially never repeats exactly."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1:] != schema.MAP_SHAPE or len(maps) < 2:
        raise DataError(
            f"estimating a mask needs at least 2 maps of shape {schema.MAP_SHAPE}; "
            f"got an array of shape {maps.shape}"
        )
    mask = maps.min(axis=0) != maps.max(axis=0)
    if not mask.any():
        raise DataError(f"all {len(maps)} maps are identical: no mask can be estimated")
    return mask


def load_mask(
    source: str | os.PathLike | Source | None = None,
    mask_file: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> np.ndarray:
    """The cortex mask, bool (215, 200).

    ``mask_file`` (a ``.npy`` array or a PNG, nonzero = inside) wins when given.
    Otherwise ``mask.npy`` beside the source's ``data/`` is used, or, when the source
    ships none, the mask is estimated from the first maps of the train (else test) split
    (pixels that are not constant background).
    """
    if mask_file is not None:
        return read_mask_file(mask_file, schema.MAP_SHAPE)
    if source is None:
        raise ValueError("load_mask needs a source or a mask_file")
    src = source if isinstance(source, Source) else resolve_source(source, progress=progress)
    shipped = src.root / "mask.npy"
    if shipped.exists():
        return read_mask_file(shipped, schema.MAP_SHAPE)
    # Estimate from the first maps of the hub train split (train and val rows alike).
    files = src.files["train"] or src.files["test"]
    for path in files:
        check_file_schema(path, ["activity"])
    maps: list[np.ndarray] = []
    for path in files:
        n = min(MASK_SAMPLE_MAPS - len(maps), pq.ParquetFile(path).metadata.num_rows)
        values = read_rows(path, range(n), ["activity"])["activity"]
        maps += [
            decode_activity(v, f"{path} row {r} column 'activity'") for r, v in enumerate(values)
        ]
        if len(maps) >= MASK_SAMPLE_MAPS:
            break
    return estimate_mask(np.stack(maps) if maps else np.empty((0, *schema.MAP_SHAPE), np.uint8))

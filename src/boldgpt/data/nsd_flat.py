"""NSD-Flat sources, schema validation, splits, the cortex mask and checked PNG decoding.

A *source* is one of (see docs/DESIGN.md):

- ``sim:<preset>`` or ``sim:<preset>:<seed>``: the embedded simulator's output, generated
  on first use into ``$BOLDGPT_HOME/sim/<preset>-seed<seed>`` and reused afterwards;
- a local directory in the hub layout (``data/train-*.parquet``, ``data/test-*.parquet``,
  optionally ``mask.npy``), e.g. the simulator's output or a local copy of NSD-Flat;
- a hub id ``owner/name`` (e.g. ``clane9/NSD-Flat``), fetched with ``huggingface_hub``
  only where the network allows (offline it must already be in the local hub cache).

Every source ends up as local parquet shards, so one code path validates, splits and
decodes all three. Splits: ``train`` = hub train split minus ``shared1000`` rows, ``val``
= the ``shared1000`` rows of the hub train split, ``test`` = the hub test split.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from boldgpt.data import schema
from boldgpt.errors import ConfigError, DataError
from boldgpt.utils.io import file_lock

DEFAULT_SOURCE = "sim:demo"
SPLITS = ("train", "val", "test")
HUB_SPLIT = {"train": "train", "val": "train", "test": "test"}
"""The hub split each boldgpt split is drawn from."""
META_COLUMNS = ("subject_id", "trial_id", "session_id", "nsd_id", "shared1000")
HUB_PROBE_TIMEOUT_S = 3.0
READ_BATCH = 64
"""Rows read from a parquet row group at a time."""
MASK_SAMPLE_MAPS = 256
"""Maps decoded to estimate a mask when the source ships none."""

_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_PATTERNS = ["data/*.parquet", "mask.npy", "README.md"]


def boldgpt_home() -> Path:
    """``$BOLDGPT_HOME`` (default ``~/.cache/boldgpt``): simulated data and caches."""
    return Path(os.environ.get("BOLDGPT_HOME", "~/.cache/boldgpt")).expanduser()


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A resolved data source: local parquet shards in the hub layout.

    ``spec`` is the string the user gave; ``kind`` is ``"sim"``, ``"local"`` or ``"hub"``;
    ``root`` the local directory; ``files`` maps hub split (``train``/``test``) to its
    shards, sorted by name (the row order of the split).
    """

    spec: str
    kind: str
    root: Path
    files: dict[str, tuple[Path, ...]] = field(hash=False)
    identity: str = ""

    @property
    def name(self) -> str:
        """A short file-name-safe label, e.g. ``sim-demo-seed0`` or ``clane9--NSD-Flat``."""
        if self.kind == "hub":
            label = self.identity.replace("/", "--")
        elif self.kind == "sim":
            label = "sim-" + self.root.name
        else:
            label = self.root.name or "source"
        return re.sub(r"[^\w.-]+", "_", label)

    def fingerprint(self) -> str:
        """A hash of the shards' names, sizes and modification times (and of
        ``mask.npy``): it changes whenever the data on disk changes."""
        entries = []
        paths = [p for files in self.files.values() for p in files]
        mask = self.root / "mask.npy"
        if mask.exists():
            paths.append(mask)
        for path in sorted(paths):
            st = path.stat()
            entries.append([path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns])
        blob = json.dumps(entries).encode()
        return hashlib.sha256(blob).hexdigest()


def resolve_source(source: str | os.PathLike = DEFAULT_SOURCE, *, progress: bool = True) -> Source:
    """Turn a source string into local parquet shards, generating or downloading as needed.

    ``sim:<preset>[:<seed>]`` runs the simulator once; a hub id is fetched only when the
    network allows (``HF_HUB_OFFLINE=1`` or an unreachable hub gives a :class:`DataError`
    within a few seconds unless the dataset is already in the local hub cache).
    """
    spec = os.fspath(source)
    if spec.startswith("sim:"):
        root, identity = _resolve_sim(spec, progress), None
        kind = "sim"
    else:
        path = Path(spec).expanduser()
        if path.exists():
            if not path.is_dir():
                raise DataError(
                    f"source {spec!r} is a file; expected a directory in the NSD-Flat hub "
                    "layout (data/train-*.parquet, data/test-*.parquet)"
                )
            root, kind, identity = path.resolve(), "local", None
        elif _HUB_ID_RE.fullmatch(spec) and not spec.startswith((".", "~")):
            root, kind, identity = _fetch_hub(spec, progress), "hub", spec
        else:
            raise DataError(
                f"source {spec!r} does not exist: expected 'sim:<preset>', a local directory "
                "in the NSD-Flat hub layout, or a hub id 'owner/name'"
            )
    files = {}
    for hub_split, pattern in schema.SPLIT_FILES.items():
        files[hub_split] = tuple(sorted(root.glob(pattern)))
    if not files["train"] and not files["test"]:
        raise DataError(
            f"{root} has no parquet shards: expected the hub layout "
            f"{schema.SPLIT_FILES['train']} and {schema.SPLIT_FILES['test']}"
        )
    return Source(spec, kind, root, files, identity or str(root))


def _resolve_sim(spec: str, progress: bool) -> Path:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1] or (len(parts) == 3 and not parts[2].isdigit()):
        raise ConfigError(f"bad simulator source {spec!r}: expected 'sim:<preset>[:<seed>]'")
    preset, seed = parts[1], int(parts[2]) if len(parts) == 3 else 0
    out_dir = boldgpt_home() / "sim" / f"{preset}-seed{seed}"
    if _sim_ready(out_dir):
        return out_dir
    try:
        from boldgpt.data.simulate import simulate_dataset
    except ImportError as exc:
        raise ConfigError(
            f"source {spec!r} needs the embedded simulator (boldgpt.data.simulate), which is "
            f"not available: {exc}"
        ) from exc
    # Several processes (e.g. torchrun ranks) may ask for the same dataset at once.
    with file_lock(out_dir.with_name(f".{out_dir.name}.lock")):
        if not _sim_ready(out_dir):
            simulate_dataset(
                out_dir, preset, seed=seed, overwrite=out_dir.exists(), progress=progress
            )
    if not _sim_ready(out_dir):
        raise DataError(f"the simulator did not write a complete dataset to {out_dir}")
    return out_dir


def _sim_ready(out_dir: Path) -> bool:
    return (out_dir / "simulation.json").exists() and any(out_dir.glob(schema.SPLIT_FILES["train"]))


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to the hub endpoint? DNS lookups ignore socket
    timeouts, so the probe runs in a thread that we stop waiting for."""
    import socket

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _fetch_hub(hub_id: str, progress: bool) -> Path:
    offline = _hub_offline()
    reason = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    if not offline and not _hub_reachable():
        offline = True
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        reason = f"{endpoint} did not accept a connection (timeout {HUB_PROBE_TIMEOUT_S:g} s)"
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        # Offline, a copy already in the local hub cache still works.
        path = snapshot_download(
            hub_id, repo_type="dataset", allow_patterns=_HUB_PATTERNS, local_files_only=offline
        )
    except Exception as exc:
        if offline:
            raise DataError(
                f"source {hub_id!r} is not a local directory, and as a hub dataset id it cannot "
                f"be fetched: {reason}, and it is not in the local hub cache. Use 'sim:demo' or "
                "a local directory in the NSD-Flat layout."
            ) from exc
        raise DataError(f"could not fetch hub dataset {hub_id!r}: {exc}") from exc
    finally:
        if not progress:
            enable_progress_bars()
    return Path(path)


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


def normalize_subjects(subjects: int | str | Sequence[int | str] | None) -> list[int] | None:
    """Subject selection as sorted 0-based ``subject_id`` values.

    Accepts ids (``0``), digit strings (``"0"``) and NSD names (``"subj01"`` = id 0).
    """
    if subjects is None:
        return None
    if isinstance(subjects, (int, str, np.integer)):
        subjects = [subjects]
    out = set()
    for s in subjects:
        if isinstance(s, str):
            m = re.fullmatch(r"subj(\d+)", s.strip())
            if m and int(m.group(1)) >= 1:
                sid = int(m.group(1)) - 1
            elif s.strip().isdigit():
                sid = int(s)
            else:
                raise ValueError(
                    f"bad subject {s!r}: expected a 0-based id or a name like 'subj01'"
                )
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0:
            sid = int(s)
        else:
            raise ValueError(f"bad subject {s!r}: expected a 0-based id or a name like 'subj01'")
        out.add(sid)
    if not out:
        raise ValueError("subjects is empty: give None for all subjects")
    return sorted(out)


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


def check_mask(mask: Any, where: str = "mask") -> np.ndarray:
    """Validate a cortex mask: shape (215, 200), bool (or integers that are all 0/1), not
    empty. Returns it as a bool array."""
    mask = np.asarray(mask)
    if mask.shape != schema.MAP_SHAPE:
        raise DataError(f"{where}: mask has shape {mask.shape}; expected {schema.MAP_SHAPE}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise DataError(f"{where}: mask has dtype {mask.dtype}; expected bool (or 0/1 ints)")
        mask = mask.astype(bool)
    if not mask.any():
        raise DataError(f"{where}: mask is empty (no True pixel)")
    return mask


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
        path = Path(mask_file).expanduser()
        if not path.exists():
            raise DataError(f"mask file {path} does not exist")
        try:
            if path.suffix.lower() == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                arr = np.asarray(Image.open(path).convert("L")) > 0
        except Exception as exc:
            raise DataError(f"{path}: cannot read a mask ({exc})") from exc
        return check_mask(arr, str(path))
    if source is None:
        raise ValueError("load_mask needs a source or a mask_file")
    src = source if isinstance(source, Source) else resolve_source(source, progress=progress)
    shipped = src.root / "mask.npy"
    if shipped.exists():
        try:
            arr = np.load(shipped, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{shipped}: cannot read a mask ({exc})") from exc
        return check_mask(arr, str(shipped))
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

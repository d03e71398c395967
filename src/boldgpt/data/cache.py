"""A one-time, memory-mapped uint8 cache of NSD-Flat maps (and resized stimuli), and the
torch ``Dataset`` / ``DataLoader`` that training reads from it.

Decoding a PNG map costs ~0.3-0.5 ms; a training step needs thousands of maps a second.
:func:`build_cache` decodes every map of the requested splits once (in parallel, with a
progress bar) into ``.npy`` arrays that :class:`CachedNSDFlat` memory-maps, so a batch
is one fancy-indexing copy.

Layout of a cache directory (``$BOLDGPT_HOME/cache/<source>-<key>``)::

    meta.json              source, its fingerprint, parameters, counts, format version
    COMPLETE               sha256 of meta.json, written last: a cache without it is invalid
    mask.npy               bool (215, 200), from load_mask(source)
    <split>/activity.npy   uint8 (N, 215, 200)
    <split>/{subject_id,nsd_id,trial_id,session_id}.npy   int64 (N,)
    <split>/image_index.npy  int64 (N,): row of images.npy (only with images)
    images.npy             uint8 (M, S, S, 3), one per unique stimulus (only with images)
    image_nsd_id.npy       int64 (M,), sorted

The key hashes the source's identity and the parameters; the source's fingerprint (shard
names, sizes, mtimes) is stored and compared, so a changed source is rebuilt in place.
Builds run in a temporary directory renamed into place only when complete, under a file
lock (several ranks of a distributed job may ask for the same cache at once).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from boldgpt.data import schema
from boldgpt.data.loader import make_dataloader  # the one loader factory (re-exported)
from boldgpt.data.nsd_flat import (
    SPLITS,
    SplitIndex,
    check_file_schema,
    decode_activity,
    decode_image,
    index_split,
    load_mask,
    read_rows,
)
from boldgpt.data.sources import (
    DEFAULT_SOURCE,
    Source,
    boldgpt_home,
    normalize_subjects,
    resolve_source,
)
from boldgpt.errors import DataError
from boldgpt.utils.io import atomic_dir, atomic_write, file_lock, write_json

FORMAT_VERSION = 1
ID_COLUMNS = ("subject_id", "nsd_id", "trial_id", "session_id")
PARALLEL_MIN_ITEMS = 2000
"""Below this many PNGs, starting worker processes costs more than it saves."""


def default_cache_root() -> Path:
    """``$BOLDGPT_HOME/cache``."""
    return boldgpt_home() / "cache"


def cache_path(
    source: Source,
    *,
    splits: Sequence[str] = SPLITS,
    subjects: int | str | Sequence[int | str] | None = None,
    image_size: int | None = None,
    cache_root: str | os.PathLike | None = None,
) -> Path:
    """Where :func:`build_cache` keeps the cache of ``source`` with these parameters."""
    params = _params(splits, subjects, image_size)
    blob = json.dumps({"format": FORMAT_VERSION, "source": source.identity, **params})
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root / f"{source.name}-{key}"


def _params(splits: Sequence[str], subjects: Any, image_size: int | None) -> dict[str, Any]:
    splits = [splits] if isinstance(splits, str) else list(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names from {SPLITS}; got {splits}")
    if image_size is not None and (
        not isinstance(image_size, (int, np.integer))
        or isinstance(image_size, bool)
        or image_size < 8
    ):
        raise ValueError(f"image_size must be an integer >= 8 (pixels) or None; got {image_size!r}")
    return {
        "splits": splits,
        "subjects": normalize_subjects(subjects),
        "image_size": None if image_size is None else int(image_size),
    }


# --------------------------------------------------------------------------- validity


def check_cache(cache_dir: str | os.PathLike, fingerprint: str | None = None) -> dict[str, Any]:
    """Check that ``cache_dir`` is a complete cache (and, given ``fingerprint``, one of
    the current source). Returns its metadata; raises :class:`DataError` otherwise."""
    cache_dir = Path(cache_dir)
    meta_path, marker = cache_dir / "meta.json", cache_dir / "COMPLETE"
    if not marker.exists() or not meta_path.exists():
        raise DataError(
            f"{cache_dir} is not a complete boldgpt cache (no COMPLETE marker or meta.json); "
            "rebuild it with `boldgpt data cache`"
        )
    raw = meta_path.read_bytes()
    if marker.read_text().strip() != hashlib.sha256(raw).hexdigest():
        raise DataError(f"{cache_dir}: meta.json does not match its COMPLETE marker; rebuild it")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{cache_dir}: cache format {meta.get('format_version')}, expected {FORMAT_VERSION}; "
            "rebuild it"
        )
    if fingerprint is not None and meta["source_fingerprint"] != fingerprint:
        raise DataError(
            f"{cache_dir}: the source {meta['source']!r} changed since the cache was built"
        )
    images = meta.get("images")
    expected: dict[Path, tuple[tuple[int, ...], str]] = {}
    for split, info in meta["splits"].items():
        n = info["count"]
        expected[cache_dir / split / "activity.npy"] = ((n, *schema.MAP_SHAPE), "uint8")
        for name in ID_COLUMNS + (("image_index",) if images else ()):
            expected[cache_dir / split / f"{name}.npy"] = ((n,), "int64")
    if images:
        s, m = images["size"], images["count"]
        expected[cache_dir / "images.npy"] = ((m, s, s, 3), "uint8")
        expected[cache_dir / "image_nsd_id.npy"] = ((m,), "int64")
    expected[cache_dir / "mask.npy"] = (schema.MAP_SHAPE, "bool")
    for path, (shape, dtype) in expected.items():
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise DataError(f"{path}: unreadable cache array ({exc}); rebuild the cache") from exc
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise DataError(
                f"{path}: {arr.dtype} {arr.shape}, expected {dtype} {shape}; rebuild the cache"
            )
    return meta


def _is_valid(cache_dir: Path, fingerprint: str) -> bool:
    try:
        check_cache(cache_dir, fingerprint)
    except (DataError, OSError, ValueError, KeyError):
        return False
    return True


# --------------------------------------------------------------------------- build


def build_cache(
    source: str | os.PathLike | Source = DEFAULT_SOURCE,
    *,
    splits: Sequence[str] = SPLITS,
    subjects: int | str | Sequence[int | str] | None = None,
    image_size: int | None = None,
    cache_root: str | os.PathLike | None = None,
    num_workers: int | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> Path:
    """Decode a source's maps once into memory-mapped arrays; return the cache directory.

    Args:
        source: ``sim:<preset>``, a local directory in the hub layout, or a hub id.
        splits: which of ``train``, ``val``, ``test`` to cache.
        subjects: 0-based subject ids or names (``"subj01"``); None for all.
        image_size: also cache every stimulus once, centre-cropped and resized to
            (image_size, image_size); None caches no images.
        cache_root: parent directory of caches (default ``$BOLDGPT_HOME/cache``).
        num_workers: decoding processes; default: all cores for large builds, none
            (in this process) for small ones.
        rebuild: build even if a valid cache exists.

    An existing cache is reused when it is complete and the source's shards have not
    changed (names, sizes, mtimes); otherwise it is rebuilt. A build that fails or is
    killed leaves no directory that would be taken for a valid cache.
    """
    src = source if isinstance(source, Source) else resolve_source(source, progress=progress)
    params = _params(splits, subjects, image_size)
    out = cache_path(src, cache_root=cache_root, **params)
    fingerprint = src.fingerprint()
    if not rebuild and _is_valid(out, fingerprint):
        return out
    with file_lock(out.with_name(f".{out.name}.lock")):
        if not rebuild and _is_valid(out, fingerprint):
            return out  # another process built it while we waited
        # Leftovers of killed builds: only a lock holder creates them, so none is live.
        for stale in [
            *out.parent.glob(f".{out.name}.*.tmp"),
            *out.parent.glob(f".{out.name}.old-*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        with atomic_dir(out) as tmp:
            meta = _build(tmp, src, params, num_workers, progress)
            meta["source_fingerprint"] = fingerprint
            meta["build_seconds"] = round(time.perf_counter() - start, 2)
            write_json(tmp / "meta.json", meta)
            digest = hashlib.sha256((tmp / "meta.json").read_bytes()).hexdigest()
            with atomic_write(tmp / "COMPLETE", "w") as f:
                f.write(digest + "\n")
    return out


def _build(
    tmp: Path, src: Source, params: dict[str, Any], num_workers: int | None, progress: bool
) -> dict[str, Any]:
    splits, image_size = params["splits"], params["image_size"]
    indexes = {s: index_split(src, s, params["subjects"]) for s in splits}
    if image_size is not None:
        for index in indexes.values():
            for path in index.files:
                check_file_schema(path, ["image"])

    meta_splits: dict[str, Any] = {}
    for split, index in indexes.items():
        (tmp / split).mkdir()
        np.lib.format.open_memmap(
            tmp / split / "activity.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(index), *schema.MAP_SHAPE),
        ).flush()
        for name in ID_COLUMNS:
            np.save(tmp / split / f"{name}.npy", index.meta[name].astype(np.int64))
        ids, counts = np.unique(index.meta["subject_id"], return_counts=True)
        meta_splits[split] = {
            "count": len(index),
            "subjects": {str(i): int(c) for i, c in zip(ids.tolist(), counts.tolist())},
        }

    # Each stimulus is decoded once, from its first row in the cached splits.
    image_rows: list[tuple[SplitIndex, int, int]] = []
    images_meta = None
    if image_size is not None:
        all_ids = np.concatenate([ix.meta["nsd_id"] for ix in indexes.values()])
        unique_ids, first = np.unique(all_ids, return_index=True)
        bounds = np.cumsum([0] + [len(ix) for ix in indexes.values()])
        for m, g in enumerate(first.tolist()):
            k = int(np.searchsorted(bounds, g, side="right")) - 1
            image_rows.append((list(indexes.values())[k], g - int(bounds[k]), m))
        for split, index in indexes.items():
            np.save(
                tmp / split / "image_index.npy", np.searchsorted(unique_ids, index.meta["nsd_id"])
            )
        np.save(tmp / "image_nsd_id.npy", unique_ids.astype(np.int64))
        np.lib.format.open_memmap(
            tmp / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(unique_ids), image_size, image_size, 3),
        ).flush()
        images_meta = {"count": len(unique_ids), "size": image_size}

    # The mask first: a source whose mask cannot be found fails before the long decode.
    mask = load_mask(src, progress=progress)
    np.save(tmp / "mask.npy", mask)

    tasks = _make_tasks(tmp, indexes, image_rows, image_size)
    total = sum(len(t["act_rows"]) + len(t["img_rows"]) for t in tasks)
    _run_tasks(tasks, total, num_workers, progress, desc=f"caching {src.name}")
    for path in tmp.rglob("*.npy"):
        _fsync(path)
    from boldgpt import __version__ as version

    return {
        "format_version": FORMAT_VERSION,
        "source": src.spec,
        "source_kind": src.kind,
        "source_root": str(src.root),
        "source_identity": src.identity,
        "params": params,
        "splits": meta_splits,
        "images": images_meta,
        "map_shape": list(schema.MAP_SHAPE),
        "mask_pixels": int(mask.sum()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "boldgpt_version": version,
    }


def _make_tasks(
    tmp: Path,
    indexes: dict[str, SplitIndex],
    image_rows: list[tuple[SplitIndex, int, int]],
    image_size: int | None,
) -> list[dict[str, Any]]:
    """One task per parquet row group: which of its rows to decode, and where to put them."""
    tasks: dict[tuple[Path, int], dict[str, Any]] = {}
    group_starts: dict[Path, np.ndarray] = {}
    outputs = [str(tmp / split / "activity.npy") for split in indexes]

    def place(index: SplitIndex, positions: np.ndarray) -> list[tuple[dict[str, Any], np.ndarray]]:
        """Group rows of a split by row group: ``[(task, sel, local)]`` where ``sel`` indexes
        ``positions`` and ``local`` gives those rows' numbers within the row group."""
        rows = index.rows[positions]
        shard = np.searchsorted(index.file_offsets, rows, side="right") - 1
        placed = []
        for f in np.unique(shard).tolist():
            path = index.files[f]
            if path not in group_starts:
                md = pq.ParquetFile(path).metadata
                sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
                group_starts[path] = np.concatenate([[0], np.cumsum(sizes)])
            starts = group_starts[path]
            in_file = np.flatnonzero(shard == f)
            local = rows[in_file] - index.file_offsets[f]
            group = np.searchsorted(starts, local, side="right") - 1
            for g in np.unique(group).tolist():
                if (path, g) not in tasks:
                    tasks[(path, g)] = {
                        "path": str(path), "group": g, "group_start": int(starts[g]),
                        "outputs": outputs, "act_rows": [], "act_out": [], "act_pos": [],
                        "img_rows": [], "img_pos": [], "img_out": str(tmp / "images.npy"),
                        "image_size": image_size,
                    }  # fmt: skip
                sel = in_file[group == g]
                placed.append((tasks[(path, g)], sel, local[group == g] - starts[g]))
        return placed

    for k, index in enumerate(indexes.values()):
        for task, sel, local in place(index, np.arange(len(index))):
            task["act_rows"] += local.tolist()
            task["act_out"] += [k] * len(sel)
            task["act_pos"] += sel.tolist()
    for index in {id(ix): ix for ix, _, _ in image_rows}.values():
        positions = np.array([i for ix, i, _ in image_rows if ix is index], dtype=np.int64)
        slots = np.array([m for ix, _, m in image_rows if ix is index], dtype=np.int64)
        for task, sel, local in place(index, positions):
            task["img_rows"] += local.tolist()
            task["img_pos"] += slots[sel].tolist()
    return list(tasks.values())


def _run_tasks(
    tasks: list[dict[str, Any]], total: int, num_workers: int | None, progress: bool, desc: str
) -> None:
    from tqdm.auto import tqdm

    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        num_workers = min(cores or 1, 8) if total >= PARALLEL_MIN_ITEMS else 0
    bar = tqdm(total=total, unit="png", desc=desc, disable=not progress, smoothing=0.1)
    try:
        if num_workers <= 1:
            for task in tasks:
                bar.update(_decode_task(task))
            return
        # fork starts workers instantly and they only use numpy, pyarrow and PIL; elsewhere
        # (macOS, Windows) fork is unsafe and spawn is the default.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            pending = {pool.submit(_decode_task, t) for t in tasks}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        bar.update(fut.result())  # re-raises a worker's DataError
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    finally:
        bar.close()
        _OPEN_ARRAYS.clear()


_OPEN_ARRAYS: dict[str, np.memmap] = {}
"""Output arrays opened by this process (a worker reuses them across tasks)."""


def _out_array(path: str) -> np.memmap:
    if path not in _OPEN_ARRAYS:
        _OPEN_ARRAYS[path] = np.lib.format.open_memmap(path, mode="r+")
    return _OPEN_ARRAYS[path]


def _decode_task(task: dict[str, Any]) -> int:
    """Decode the rows of one row group into the output arrays; returns how many PNGs."""
    path, start = task["path"], task["group_start"]
    for name, rows in (("activity", task["act_rows"]), ("image", task["img_rows"])):
        if not rows:
            continue
        try:
            values = read_rows(Path(path), [start + r for r in rows], [name])[name]
        except Exception as exc:
            raise DataError(f"{path}: cannot read row group {task['group']} ({exc})") from exc
        for k, value in enumerate(values):
            where = f"{path} row {start + rows[k]} column {name!r}"
            if name == "activity":
                out = _out_array(task["outputs"][task["act_out"][k]])
                out[task["act_pos"][k]] = decode_activity(value, where)
            else:
                image = decode_image(value, where, size=task["image_size"])
                _out_array(task["img_out"])[task["img_pos"][k]] = image
    # No flush here: writes to the shared mapping are in the page cache at once, and the
    # build fsyncs every file before writing COMPLETE (a per-task msync stalls on disk).
    return len(task["act_rows"]) + len(task["img_rows"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- dataset


class CachedNSDFlat(Dataset):
    """One split of a cache as a map-style torch ``Dataset`` of raw uint8 batches.

    ``dataset[i]`` is one sample; ``dataset[indices]`` and ``__getitems__(indices)`` (what
    ``DataLoader`` calls with a batch of indices) return a batch in one fancy-indexing
    copy from the memory map::

        {"activity": (B, 215, 200) uint8, "subject_id" / "nsd_id" / "trial_id" /
         "session_id": (B,) int64, "image": (B, S, S, 3) uint8 (if cached and wanted)}

    Convert with :func:`boldgpt.data.transforms.prepare_batch` on the device. Metadata:
    ``subject_ids``, ``nsd_ids``, ``trial_ids``, ``session_ids`` (N,) int64 arrays,
    ``mask`` bool (215, 200), ``meta`` (meta.json), ``image_nsd_ids`` (M,) when cached.
    """

    def __init__(
        self, cache_dir: str | os.PathLike, split: str = "train", *, images: bool | None = None
    ):
        self.cache_dir = Path(cache_dir)
        self.meta = check_cache(self.cache_dir)
        if split not in self.meta["splits"]:
            raise DataError(
                f"{self.cache_dir} has no split {split!r}; it holds {list(self.meta['splits'])}"
            )
        has_images = self.meta.get("images") is not None
        if images and not has_images:
            raise DataError(f"{self.cache_dir} holds no images; rebuild it with an image_size")
        self.split = split
        self.with_images = has_images if images is None else bool(images)
        d = self.cache_dir / split
        self.subject_ids: np.ndarray = np.load(d / "subject_id.npy")
        self.nsd_ids: np.ndarray = np.load(d / "nsd_id.npy")
        self.trial_ids: np.ndarray = np.load(d / "trial_id.npy")
        self.session_ids: np.ndarray = np.load(d / "session_id.npy")
        self.mask: np.ndarray = np.load(self.cache_dir / "mask.npy")
        self.image_index: np.ndarray | None = None
        self.image_nsd_ids: np.ndarray | None = None
        if self.with_images:
            self.image_index = np.load(d / "image_index.npy")
            self.image_nsd_ids = np.load(self.cache_dir / "image_nsd_id.npy")
        self._activity: np.ndarray | None = None
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def activity(self) -> np.ndarray:
        """The memory-mapped maps, uint8 (N, 215, 200) (read-only)."""
        if self._activity is None:
            self._activity = np.load(self.cache_dir / self.split / "activity.npy", mmap_mode="r")
        return self._activity

    @property
    def images(self) -> np.ndarray | None:
        """The memory-mapped stimuli, uint8 (M, S, S, 3), row m is ``image_nsd_ids[m]``."""
        if self.with_images and self._images is None:
            self._images = np.load(self.cache_dir / "images.npy", mmap_mode="r")
        return self._images

    def __getitems__(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """A batch of raw samples (see the class docstring) for a list of indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D; got shape {idx.shape}")
        batch = {
            # np.asarray drops the memmap subclass of the (copied) result.
            "activity": torch.from_numpy(np.asarray(self.activity[idx])),
            "subject_id": torch.from_numpy(self.subject_ids[idx]),
            "nsd_id": torch.from_numpy(self.nsd_ids[idx]),
            "trial_id": torch.from_numpy(self.trial_ids[idx]),
            "session_id": torch.from_numpy(self.session_ids[idx]),
        }
        if self.with_images:
            assert self.image_index is not None and self.images is not None
            batch["image"] = torch.from_numpy(np.asarray(self.images[self.image_index[idx]]))
        return batch

    def __getitem__(
        self, index: int | slice | Sequence[int] | np.ndarray | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``dataset[i]``: one sample (activity (215, 200), ids as 0-d tensors); a slice
        or a sequence of indices gives a batch."""
        if isinstance(index, slice):
            return self.__getitems__(np.arange(len(self))[index])
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} samples")
            return {k: v[0] for k, v in self.__getitems__([i]).items()}
        return self.__getitems__(index)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data: DataLoader workers reopen the files instead.
        state = self.__dict__.copy()
        state["_activity"] = state["_images"] = None
        return state

    def __repr__(self) -> str:
        images = f", images {self.meta['images']['size']}px" if self.with_images else ""
        return (
            f"CachedNSDFlat({str(self.cache_dir)!r}, split={self.split!r}, n={len(self)}{images})"
        )


def open_cached(
    source: str | os.PathLike | Source = DEFAULT_SOURCE,
    split: str = "train",
    **build_kwargs: Any,
) -> CachedNSDFlat:
    """:func:`build_cache` (reusing a valid cache) and open one split of it."""
    return CachedNSDFlat(build_cache(source, **build_kwargs), split)


__all__ = [
    "FORMAT_VERSION",
    "CachedNSDFlat",
    "build_cache",
    "cache_path",
    "check_cache",
    "default_cache_root",
    "make_dataloader",
    "open_cached",
]

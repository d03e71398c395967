"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from boldgpt.errors import CheckpointError, DiskFullError, RunLockedError, UnsafeFileError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success, fsync and rename it over
    ``path``; on error, delete it. Readers see the old file or the new one, never a
    partial one. Running out of disk space raises :class:`DiskFullError` (an
    ``OSError``) naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_disk_full(exc, path, "file")
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``
    (an existing directory there is removed only then); on error it is deleted.
    Running out of disk space raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private (0700)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(exc, path, "directory")
        raise


def _raise_if_disk_full(exc: BaseException, path: Path, kind: str) -> None:
    """Re-raise a failed write that ran out of space as a :class:`DiskFullError` that
    says so. Libraries wrap the OSError (torch.save raises a RuntimeError whose context
    is the OSError; safetensors only keeps its text), so the chain and text are read."""
    if isinstance(exc, DiskFullError):
        return
    seen: BaseException | None = exc
    full = False
    while seen is not None and not full:
        full = (isinstance(seen, OSError) and seen.errno in _DISK_FULL) or any(
            s in str(seen) for s in ("No space left on device", "Disk quota exceeded")
        )
        seen = seen.__cause__ or seen.__context__
    if not full:
        return
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    raise DiskFullError(
        errno.ENOSPC,
        f"no space left on the device while writing the {kind} {path} ({free} in "
        f"{path.parent}); nothing was replaced: the previous {path.name}, if any, is "
        "unchanged. Free some space and run again.",
    ) from exc


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike, *, blocking: bool = True, what: str | None = None
) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit or
    when the process dies: serializes processes (e.g. torchrun ranks) that build the
    same output. A no-op where ``fcntl`` is unavailable (writes stay atomic).

    With ``blocking=False`` a lock held by another process raises
    :class:`RunLockedError` at once, naming ``what`` (default: ``path``) and the pid
    that holds it; the holder's pid is written into the lock file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunLockedError(
                f"{what or path} is in use by another process (pid {holder}, lock file "
                f"{path}); wait for it to finish or use another directory"
            ) from None
        try:
            if not blocking:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n")
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, so
    loading never runs code.

    Raises :class:`UnsafeFileError` for a pickle holding other objects (refused, with
    how to convert a trusted file) and :class:`CheckpointError` for a file that is
    missing, corrupt or truncated."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise CheckpointError(
                f"cannot read {path}: corrupt or not a torch file ({exc})"
            ) from exc
        raise UnsafeFileError(
            f"{path} is a pickle that holds Python objects other than tensors and plain "
            "containers; boldgpt refuses to load it because unpickling it could run code. "
            "If you trust where it came from, convert it once to plain tensors, e.g. "
            'python -c "import torch; from safetensors.torch import save_file; '
            f"s = torch.load('{path}', weights_only=False); "
            "save_file({k: v.contiguous() for k, v in s.items() if torch.is_tensor(v)}, "
            "'converted.safetensors')\" (adapt to the file's layout), and load the "
            "converted file instead."
        ) from None
    except Exception as exc:  # zip / EOF / version errors of every kind
        raise CheckpointError(
            f"cannot read {path}: it is corrupt, truncated or not a torch file ({exc})"
        ) from exc


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, briefly
    affecting every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")

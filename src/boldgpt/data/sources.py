"""Data sources and subject selections: the one place where a source string is parsed,
turned into local parquet shards, and where subjects given as ids or names are read.

A *source* is one of:

- ``sim:<preset>`` or ``sim:<preset>:<seed>`` (presets :data:`SIM_PRESETS`): the embedded
  simulator's output, generated on first use into ``$BOLDGPT_HOME/sim/<preset>-seed<seed>``
  and reused afterwards;
- a local directory in the hub layout (``data/train-*.parquet``, ``data/test-*.parquet``,
  optionally ``mask.npy``), e.g. the simulator's output or a local copy of NSD-Flat
  (a path that exists always wins over a hub id of the same spelling);
- a hub id ``owner/name`` (:func:`boldgpt.utils.hub.is_hub_id`, e.g. ``clane9/NSD-Flat``),
  fetched with ``huggingface_hub`` only where the network allows (offline it must already
  be in the local hub cache).

:func:`parse_source` reads the string (cheap: no data is touched, so configs use it to
validate); :func:`resolve_source` makes the data local. Generating a ``sim:`` source is
the only place where the data layer calls into the simulator (``boldgpt.sim``), and it
imports it lazily there: reading data never imports the simulator, ``datasets`` or scipy.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np

from boldgpt.data import schema
from boldgpt.errors import ConfigError, DataError
from boldgpt.utils.hub import is_hub_id
from boldgpt.utils.io import file_lock

DEFAULT_SOURCE = "sim:demo"
"""The source every command and config uses unless told otherwise."""
SIM_PRESETS = ("ci", "demo", "full")
"""The simulator's dataset presets (``boldgpt.sim.PRESETS``; a test keeps the two equal)."""
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_PATTERNS = ["data/*.parquet", "mask.npy", "README.md"]

SourceKind = Literal["sim", "local", "hub"]


def boldgpt_home() -> Path:
    """``$BOLDGPT_HOME`` (default ``~/.cache/boldgpt``): simulated data and caches."""
    return Path(os.environ.get("BOLDGPT_HOME", "~/.cache/boldgpt")).expanduser()


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string. ``kind`` ``"sim"`` sets ``preset`` and ``seed``; ``"local"``
    sets ``path`` (an existing directory); ``"hub"`` sets ``hub_id``."""

    text: str
    kind: SourceKind
    preset: str | None = None
    seed: int = 0
    path: Path | None = None
    hub_id: str | None = None


def parse_source(source: str | os.PathLike) -> SourceSpec:
    """Read a source string (see the module docstring) without touching any data.

    Raises :class:`ConfigError` for a malformed ``sim:`` source or an unknown preset
    (with a "did you mean"), :class:`DataError` for a path that is a file, or that does
    not exist and is not a hub id.
    """
    text = os.fspath(source)
    if text.startswith("sim:"):
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise ConfigError(
                f"bad simulator source {text!r}: expected 'sim:<preset>' or "
                "'sim:<preset>:<seed>' with an integer seed"
            )
        preset = parts[1]
        if preset not in SIM_PRESETS:
            close = difflib.get_close_matches(preset, SIM_PRESETS, n=1)
            hint = f"; did you mean 'sim:{close[0]}'?" if close else ""
            raise ConfigError(
                f"source {text!r}: unknown simulator preset {preset!r}; expected one of "
                + ", ".join(f"'sim:{p}'" for p in SIM_PRESETS)
                + hint
            )
        return SourceSpec(text, "sim", preset=preset, seed=int(parts[2]) if len(parts) == 3 else 0)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(
                f"source {text!r} is a file; expected a directory in the NSD-Flat hub "
                "layout (data/train-*.parquet, data/test-*.parquet)"
            )
        return SourceSpec(text, "local", path=path.resolve())
    if is_hub_id(text):
        return SourceSpec(text, "hub", hub_id=text)
    raise DataError(
        f"source {text!r} does not exist (no such directory) and is not a hub id "
        f"'owner/name'; expected 'sim:<preset>' ({', '.join(SIM_PRESETS)}), a local directory "
        "in the NSD-Flat hub layout, or a hub id such as clane9/NSD-Flat"
    )


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Source:
    """A resolved data source: local parquet shards in the hub layout.

    ``spec`` is the string the user gave; ``kind`` is ``"sim"``, ``"local"`` or ``"hub"``;
    ``root`` the local directory; ``files`` maps hub split (``train``/``test``) to its
    shards, sorted by name (the row order of the split); ``identity`` the hub id, or the
    root's path for local data.
    """

    spec: str
    kind: SourceKind
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


def resolve_source(
    source: str | os.PathLike | Source = DEFAULT_SOURCE, *, progress: bool = True
) -> Source:
    """Turn a source into local parquet shards, generating or downloading as needed.

    ``sim:<preset>[:<seed>]`` runs the simulator once; a hub id is fetched only when the
    network allows (``HF_HUB_OFFLINE=1`` or an unreachable hub gives a :class:`DataError`
    within a few seconds unless the dataset is already in the local hub cache).
    """
    if isinstance(source, Source):
        return source
    spec = parse_source(source)
    if spec.kind == "sim":
        root = _resolve_sim(spec, progress)
    elif spec.kind == "local":
        root = spec.path
    else:
        root = _fetch_hub(spec.hub_id, progress)
    files = {
        split: tuple(sorted(root.glob(pattern))) for split, pattern in schema.SPLIT_FILES.items()
    }
    if not files["train"] and not files["test"]:
        raise DataError(
            f"{root} has no parquet shards: expected the hub layout "
            f"{schema.SPLIT_FILES['train']} and {schema.SPLIT_FILES['test']}"
        )
    return Source(spec.text, spec.kind, root, files, spec.hub_id or str(root))


def sim_dir(preset: str, seed: int = 0) -> Path:
    """Where ``sim:<preset>:<seed>`` lives: ``$BOLDGPT_HOME/sim/<preset>-seed<seed>``."""
    return boldgpt_home() / "sim" / f"{preset}-seed{seed}"


def _resolve_sim(spec: SourceSpec, progress: bool) -> Path:
    out_dir = sim_dir(spec.preset, spec.seed)
    if _sim_current(out_dir, spec):
        return out_dir
    # The data layer's call into the generator, imported only here to write the dataset.
    try:
        from boldgpt.sim import simulate_dataset
    except ImportError as exc:
        raise ConfigError(
            f"source {spec.text!r} needs the embedded simulator (boldgpt.sim), which is "
            f"not available: {exc}"
        ) from exc
    # Several processes (e.g. torchrun ranks) may ask for the same dataset at once.
    with file_lock(out_dir.with_name(f".{out_dir.name}.lock")):
        if not _sim_current(out_dir, spec):
            if _sim_ready(out_dir) and progress:
                print(
                    f"{spec.text}: {out_dir} holds an older version of the {spec.preset!r} "
                    "preset; simulating it again",
                    file=sys.stderr,
                )
            simulate_dataset(
                out_dir, spec.preset, seed=spec.seed, overwrite=out_dir.exists(), progress=progress
            )
    if not _sim_ready(out_dir):
        raise DataError(f"the simulator did not write a complete dataset to {out_dir}")
    return out_dir


def _sim_ready(out_dir: Path) -> bool:
    return (out_dir / "simulation.json").exists() and any(out_dir.glob(schema.SPLIT_FILES["train"]))


def _sim_current(out_dir: Path, spec: SourceSpec) -> bool:
    """Complete, and written by the preset as it is today."""
    # The simulator's light presets table (no generator import) on every use.
    from boldgpt.sim.presets import is_current

    return _sim_ready(out_dir) and is_current(out_dir, spec.preset, spec.seed)


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
                f"be fetched: {reason}, and it is not in the local hub cache. Use "
                f"'{DEFAULT_SOURCE}' or a local directory in the NSD-Flat layout."
            ) from exc
        raise DataError(f"could not fetch hub dataset {hub_id!r}: {exc}") from exc
    finally:
        if not progress:
            enable_progress_bars()
    return Path(path)


# --------------------------------------------------------------------------- subjects


def _subject_id(s: object) -> int:
    if isinstance(s, str):
        text = s.strip()
        m = re.fullmatch(r"subj(\d+)", text)
        if m and int(m.group(1)) >= 1:
            return int(m.group(1)) - 1
        if text.isdigit():
            return int(text)
    elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0:
        return int(s)
    raise ValueError(f"bad subject {s!r}: expected a 0-based id or a name like 'subj01'")


def normalize_subjects(subjects: int | str | Sequence[int | str] | None) -> list[int] | None:
    """Subject selection as sorted 0-based ``subject_id`` values (None: all subjects).

    Accepts ids (``0``), digit strings (``"0"``), NSD names (``"subj01"`` = id 0), a list
    of those, or one comma-separated string (``"0,1"``, ``"subj01,subj02"``: what the
    command-line ``--subjects`` option takes).
    """
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [s for s in subjects.split(",") if s.strip()]
    elif isinstance(subjects, (int, np.integer)):
        subjects = [subjects]
    out = {_subject_id(s) for s in subjects}
    if not out:
        raise ValueError("subjects is empty: give None for all subjects")
    return sorted(out)

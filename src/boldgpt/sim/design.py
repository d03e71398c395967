"""The trial schedule: which subject saw which stimulus, in which session and trial.

Either generated NSD-like (``generate_design``) or read from a table like the real NSD
schedule ``nsd_trial_metadata.parquet`` (``load_design``). Both give a
:class:`Design`: one row per trial with 0-based ``subject_id``, ``session_id`` and
``trial_id`` (within subject), the ``nsd_id`` shown, whether that stimulus is in the
shared set (``shared1000``) and the hub split (``test`` = each subject's last
sessions, as in NSD-Flat), plus the 1-based trial ids of every presentation of each
stimulus to each subject (NSD-Flat's ``repetitions`` column).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boldgpt.data import schema
from boldgpt.errors import DataError
from boldgpt.sim.presets import MAX_REPETITIONS, DesignSpec

_DESIGN = 0xDE51  # random stream id of designs
COLUMNS = ("subject_id", "session_id", "trial_id", "nsd_id", "shared1000", "split")


@dataclass
class Design:
    """A trial schedule.

    Attributes:
        trials: one row per trial, columns ``COLUMNS``, sorted by subject and trial.
        repetitions: (n_stimuli, 24) int64 for ``rep_ids``: column ``3 * s + r`` is the
            1-based trial id of subject ``s``'s ``r``-th presentation (0 if none), from
            the complete schedule (before subject selection or subsampling).
        rep_ids: sorted nsd ids that ``repetitions`` rows refer to.
        source: where it came from (``"generated"`` or the file name).
    """

    trials: pd.DataFrame
    repetitions: np.ndarray
    rep_ids: np.ndarray
    source: str

    @property
    def subjects(self) -> list[int]:
        return sorted(int(s) for s in self.trials["subject_id"].unique())

    def repetitions_of(self, nsd_ids: np.ndarray) -> np.ndarray:
        """(n, 24) repetition trial ids of the given stimuli."""
        pos = np.searchsorted(self.rep_ids, nsd_ids)
        return self.repetitions[pos]

    def split_sizes(self) -> dict[str, int]:
        counts = self.trials["split"].value_counts()
        return {s: int(counts.get(s, 0)) for s in ("train", "test")}


def generate_design(spec: DesignSpec, subjects: Sequence[int], seed: int) -> Design:
    """An NSD-like schedule for ``subjects`` (0-based ids, any subset of 0..7).

    Stimulus ids are drawn from 0..72999 once per seed: the first ``shared_images`` of a
    random permutation are shared, then each subject owns the next block. A subject's
    schedule is a random order of its images, each ``repetitions`` times, cut to its
    sessions; it does not depend on which other subjects are simulated.
    """
    subjects = _check_subjects(subjects)
    perm = np.random.default_rng([seed, _DESIGN]).permutation(schema.NUM_NSD_IMAGES)
    shared = np.sort(perm[: spec.shared_images])
    own_n = spec.images_per_subject - spec.shared_images
    tables = []
    for s in range(schema.NUM_NSD_SUBJECTS):
        own = perm[spec.shared_images + s * own_n : spec.shared_images + (s + 1) * own_n]
        images = np.concatenate([shared, own])
        rng = np.random.default_rng([seed, _DESIGN, s])
        order = rng.permutation(np.repeat(images, spec.repetitions))
        n = min(len(order), spec.sessions[s] * spec.trials_per_session)
        trial = np.arange(n)
        session = trial // spec.trials_per_session
        tables.append(
            pd.DataFrame(
                {
                    "subject_id": np.full(n, s, dtype=np.int64),
                    "session_id": session.astype(np.int64),
                    "trial_id": trial.astype(np.int64),
                    "nsd_id": order[:n].astype(np.int64),
                    "shared1000": np.isin(order[:n], shared),
                    "split": np.where(
                        session >= session.max() + 1 - spec.test_sessions, "test", "train"
                    ),
                }
            )
        )
    # Repetitions come from the planned experiment of the simulated subjects.
    full = pd.concat([tables[s] for s in subjects], ignore_index=True)
    rep_ids, reps = _repetitions(full)
    return Design(full, reps, rep_ids, "generated")


def load_design(
    source: str | os.PathLike | pd.DataFrame,
    *,
    subjects: int | Sequence[int] | None = None,
    max_trials: int | None = None,
    test_sessions: int = 3,
    seed: int = 0,
) -> Design:
    """Read a schedule table like NSD's ``nsd_trial_metadata.parquet``.

    Args:
        source: a parquet / csv / tsv file or a DataFrame with columns ``sub`` (``subj01``
            or 1-based) or ``subject_id`` (0-based); ``ses`` (1-based) or
            ``session_id`` (0-based); ``trial_id`` (0-based within subject);
            ``nsd_id`` (0..72999); optionally ``shared1000`` (bool; otherwise the
            stimuli seen by two or more subjects are the shared ones, which gives the
            1,000 shared images of the real schedule).
        subjects: keep these subjects (a count keeps the first k present).
        max_trials: subsample to about this many trials by keeping a random subset of
            stimuli (the same across subjects) with all their trials, so repetitions,
            sessions and the shared set keep their structure.
        test_sessions: each subject's last ``test_sessions`` sessions (of the complete
            table) form the hub ``test`` split.
        seed: seed of the subsampling.
    """
    name, table = _read_table(source)
    table = _normalize_columns(table, name)
    rep_ids, reps = _repetitions(table, name)
    if "shared1000" not in table:
        seen_by = table.groupby("nsd_id")["subject_id"].nunique()
        shared_ids = seen_by.index[seen_by.to_numpy() >= 2].to_numpy()
        table["shared1000"] = table["nsd_id"].isin(shared_ids)
    last = table.groupby("subject_id")["session_id"].transform("max")
    table["split"] = np.where(table["session_id"] > last - test_sessions, "test", "train")

    present = sorted(int(s) for s in table["subject_id"].unique())
    if subjects is not None:
        wanted = (
            present[: int(subjects)]
            if isinstance(subjects, (int, np.integer))
            else _check_subjects(subjects)
        )
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise DataError(
                f"{name}: subjects {missing} are not in the design table (it has {present})"
            )
        table = table[table["subject_id"].isin(wanted)]
    if max_trials is not None and len(table) > max_trials:
        table = _subsample(table, max_trials, seed)
    table = table.sort_values(["subject_id", "trial_id"], kind="stable").reset_index(drop=True)
    return Design(table[list(COLUMNS)], reps, rep_ids, name)


def _check_subjects(subjects: Sequence[int]) -> list[int]:
    out = sorted({int(s) for s in subjects})
    bad = [s for s in out if not 0 <= s < schema.NUM_NSD_SUBJECTS]
    if bad or not out:
        raise ValueError(
            f"subjects must be 0-based ids in 0..{schema.NUM_NSD_SUBJECTS - 1}; "
            f"got {list(subjects)}"
        )
    return out


def _read_table(source) -> tuple[str, pd.DataFrame]:
    if isinstance(source, pd.DataFrame):
        return "design table", source.copy()
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"design must be a file path or a DataFrame; got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"design file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return str(path), pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return str(path), pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # pyarrow / pandas raise many types for a corrupt file
        raise DataError(f"cannot read design file {path}: {type(exc).__name__}: {exc}") from exc
    raise DataError(f"design file {path}: expected a .parquet, .csv or .tsv table")


def _normalize_columns(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Columns ``subject_id``, ``session_id``, ``trial_id``, ``nsd_id`` (int64, 0-based)."""
    cols = set(table.columns)
    missing = []
    if not cols & {"subject_id", "sub", "subject"}:
        missing.append("sub (or subject_id)")
    if not cols & {"session_id", "ses"}:
        missing.append("ses (or session_id)")
    missing += [c for c in ("trial_id", "nsd_id") if c not in cols]
    if missing:
        raise DataError(
            f"{name}: the design table lacks column(s) {', '.join(missing)}; expected a "
            f"schedule like nsd_trial_metadata.parquet (sub, ses, trial_id, nsd_id); it has "
            f"{sorted(map(str, table.columns))}"
        )
    if len(table) == 0:
        raise DataError(f"{name}: the design table has no rows")
    out = pd.DataFrame(index=table.index)
    if "subject_id" in cols:
        out["subject_id"] = _integers(table["subject_id"], "subject_id", name)
    else:
        col = "sub" if "sub" in cols else "subject"
        out["subject_id"] = _subject_ids(table[col], col, name)
    if "session_id" in cols:
        out["session_id"] = _integers(table["session_id"], "session_id", name)
    else:
        out["session_id"] = _integers(table["ses"], "ses", name) - 1
    out["trial_id"] = _integers(table["trial_id"], "trial_id", name)
    out["nsd_id"] = _integers(table["nsd_id"], "nsd_id", name)
    _check_range(out, "subject_id", 0, schema.NUM_NSD_SUBJECTS - 1, name)
    _check_range(out, "session_id", 0, None, name, "ses must be >= 1 / session_id >= 0")
    _check_range(out, "trial_id", 0, None, name)
    _check_range(out, "nsd_id", 0, schema.NUM_NSD_IMAGES - 1, name)
    dup = out.duplicated(["subject_id", "trial_id"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(
            f"{name}: row {row} repeats trial_id {out['trial_id'].iloc[row]} of subject "
            f"{schema.subject_name(int(out['subject_id'].iloc[row]))}; trial ids must be unique "
            "per subject"
        )
    if "shared1000" in cols:
        shared = table["shared1000"]
        if shared.isna().any() or not pd.api.types.is_bool_dtype(shared):
            raise DataError(f"{name}: column shared1000 must be boolean with no missing values")
        out["shared1000"] = shared.to_numpy(bool)
    return out.reset_index(drop=True)


def _integers(col: pd.Series, label: str, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{name}: row {row}, column {label!r}: expected an integer, got {col.iloc[row]!r}"
        )
    return values.astype(np.int64)


def _subject_ids(col: pd.Series, label: str, name: str) -> np.ndarray:
    """``subj01`` or 1-based integers -> 0-based subject ids."""
    if pd.api.types.is_numeric_dtype(col):
        return _integers(col, label, name) - 1
    out = np.empty(len(col), dtype=np.int64)
    for i, v in enumerate(col.to_numpy()):
        m = re.fullmatch(r"subj(\d+)", str(v).strip()) if v is not None else None
        if m is None:
            raise DataError(
                f"{name}: row {i}, column {label!r}: expected 'subj01'..'subj08', got {v!r}"
            )
        out[i] = int(m.group(1)) - 1
    return out


def _check_range(table, col, lo, hi, name, hint=""):
    v = table[col].to_numpy()
    bad = (v < lo) | (v > hi) if hi is not None else v < lo
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        detail = f" ({hint})" if hint else ""
        raise DataError(
            f"{name}: row {row}, {col} = {v[row]} is out of range; expected {expected}{detail}"
        )


def _repetitions(table: pd.DataFrame, name: str = "design") -> tuple[np.ndarray, np.ndarray]:
    """Sorted stimulus ids and their (n, 24) 1-based repetition trial ids."""
    t = table.sort_values(["subject_id", "nsd_id", "trial_id"], kind="stable")
    rep = t.groupby(["subject_id", "nsd_id"]).cumcount().to_numpy()
    if (rep >= MAX_REPETITIONS).any():
        i = int(np.flatnonzero(rep >= MAX_REPETITIONS)[0])
        raise DataError(
            f"{name}: subject {schema.subject_name(int(t['subject_id'].iloc[i]))} sees nsd_id "
            f"{int(t['nsd_id'].iloc[i])} more than {MAX_REPETITIONS} times; NSD-Flat's "
            f"repetitions column holds at most {MAX_REPETITIONS}"
        )
    ids = np.unique(t["nsd_id"].to_numpy())
    reps = np.zeros((len(ids), schema.NUM_NSD_SUBJECTS * MAX_REPETITIONS), dtype=np.int64)
    row = np.searchsorted(ids, t["nsd_id"].to_numpy())
    col = t["subject_id"].to_numpy() * MAX_REPETITIONS + rep
    reps[row, col] = t["trial_id"].to_numpy() + 1
    return ids, reps


def _subsample(table: pd.DataFrame, max_trials: int, seed: int) -> pd.DataFrame:
    """Keep the stimuli of lowest rank in a seeded random order until ``max_trials``."""
    rank = np.random.default_rng([seed, _DESIGN, 99]).permutation(schema.NUM_NSD_IMAGES)
    counts = table.groupby("nsd_id").size()
    ids = counts.index.to_numpy()
    order = np.argsort(rank[ids], kind="stable")
    cum = np.cumsum(counts.to_numpy()[order])
    n_keep = int(np.searchsorted(cum, max_trials) + 1)
    keep = ids[order[:n_keep]]
    return table[table["nsd_id"].isin(keep)]

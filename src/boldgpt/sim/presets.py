"""The simulator's named dataset sizes, and the identity of a dataset it wrote.

Light on purpose (no numpy, pandas or torch): on every use of a ``sim:<preset>`` source
the data layer checks here that the dataset on disk is the one the preset describes
today, without importing the generator.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from boldgpt.data import schema

VERSION = 1
"""Generator version, stored in simulation.json; bump it when the output changes."""
MAX_REPETITIONS = 3


@dataclass(frozen=True)
class DesignSpec:
    """Shape of a generated NSD-like experiment.

    Attributes:
        sessions: sessions of each of the 8 possible subjects (NSD: 40, 40, 32, 30, 40,
            32, 40, 30; subjects who stopped early saw some images fewer times).
        trials_per_session: trials per session (NSD: 750).
        images_per_subject: distinct images planned per subject, each shown
            ``repetitions`` times (NSD: 10,000).
        shared_images: images every subject is planned to see (NSD: 1,000); the rest
            of a subject's images are seen by that subject only.
        test_sessions: last sessions of each subject that form the hub ``test`` split
            (NSD-Flat: 3).
    """

    sessions: tuple[int, ...]
    trials_per_session: int
    images_per_subject: int
    shared_images: int
    test_sessions: int
    repetitions: int = MAX_REPETITIONS

    def __post_init__(self):
        if len(self.sessions) != schema.NUM_NSD_SUBJECTS or min(self.sessions) < 1:
            raise ValueError(
                f"sessions must give >= 1 session for each of 8 subjects; got {self.sessions}"
            )
        if not 0 <= self.test_sessions < min(self.sessions):
            raise ValueError(
                f"test_sessions must leave at least one training session; got "
                f"{self.test_sessions} with {min(self.sessions)} sessions"
            )
        if not 0 <= self.shared_images <= self.images_per_subject:
            raise ValueError("shared_images must be between 0 and images_per_subject")
        if not 1 <= self.repetitions <= MAX_REPETITIONS:
            raise ValueError(f"repetitions must be 1..{MAX_REPETITIONS}")
        own = self.images_per_subject - self.shared_images
        if self.shared_images + schema.NUM_NSD_SUBJECTS * own > schema.NUM_NSD_IMAGES:
            raise ValueError(
                f"{self.shared_images} shared + 8 x {own} own images exceed the "
                f"{schema.NUM_NSD_IMAGES} NSD ids"
            )


@dataclass(frozen=True)
class Preset:
    """A named dataset size.

    Attributes:
        design: the generated schedule.
        subjects: number of subjects simulated by default (the first ones).
        max_trials: with a design file, subsample it to about this many trials.
        rows_per_shard: parquet rows per shard.
    """

    name: str
    description: str
    design: DesignSpec
    subjects: int
    max_trials: int | None
    rows_per_shard: int


PRESETS: dict[str, Preset] = {
    "ci": Preset(
        "ci",
        "600 maps: 2 subjects x 3 sessions x 100 trials, 170 stimuli (with a design file: "
        "300 trials); for tests (seconds)",
        DesignSpec((3,) * 8, 100, 100, 30, test_sessions=1),
        subjects=2,
        max_trials=300,
        rows_per_shard=1000,
    ),
    # 360 shared stimuli: every subject keeps more than 300 held-out stimuli in the val
    # split (a stimulus all of whose repeats fall in the test session leaves it), the
    # pool from which the 300-way retrieval benchmark draws.
    "demo": Preset(
        "demo",
        "12,000 maps: 4 subjects x 10 sessions x 300 trials, 1,000 stimuli each, 360 of "
        "them shared (the validation split); ~2,900 stimuli in all (about a minute)",
        DesignSpec((10,) * 8, 300, 1000, 360, test_sessions=1),
        subjects=4,
        max_trials=12_000,
        rows_per_shard=3000,
    ),
    "full": Preset(
        "full",
        "NSD size: 213,000 maps, 8 subjects, 30-40 sessions of 750 trials, 73,000 stimuli",
        DesignSpec((40, 40, 32, 30, 40, 32, 40, 30), 750, 10_000, 1_000, test_sessions=3),
        subjects=8,
        max_trials=None,
        rows_per_shard=4000,
    ),
}
"""Dataset sizes: ``ci``, ``demo`` (the default data of every command) and ``full``."""


def generated_design_id(spec: DesignSpec) -> str:
    """The identity of a generated schedule: it changes whenever a preset's design does."""
    blob = json.dumps(asdict(spec), sort_keys=True).encode()
    return "generated-" + hashlib.sha256(blob).hexdigest()[:12]


def is_current(out_dir: str | os.PathLike, preset: str, seed: int = 0) -> bool:
    """Whether ``out_dir`` holds what ``simulate_dataset(out_dir, preset, seed=seed)``
    writes today: the same generator version, preset, seed and schedule (a dataset
    written before the preset's design changed is not)."""
    existing = existing_identity(Path(out_dir))
    if existing is None or preset not in PRESETS:
        return False
    expected = {
        "version": VERSION,
        "preset": preset,
        "seed": seed,
        "design": generated_design_id(PRESETS[preset].design),
    }
    return all(existing.get(k) == v for k, v in expected.items())


def existing_identity(out: Path) -> dict | None:
    """The ``identity`` stored in ``out/simulation.json`` (None if there is none)."""
    try:
        return json.loads((out / "simulation.json").read_text())["identity"]
    except (FileNotFoundError, NotADirectoryError, KeyError, json.JSONDecodeError):
        return None

"""The options every command spells the same way: the data source and the subjects.

- ``--source SOURCE``: ``sim:<preset>[:<seed>]``, a local directory in the NSD-Flat hub
  layout, or a hub id ``owner/name`` (default ``sim:demo``);
- ``--subjects LIST``: a comma-separated list of 0-based ``subject_id`` values or NSD
  names, e.g. ``0,1`` or ``subj01,subj02`` (the same two subjects); default all.
"""

from __future__ import annotations

import argparse

from boldgpt.data.sources import DEFAULT_SOURCE, SIM_PRESETS, normalize_subjects

SOURCE_HELP = (
    f"data source: 'sim:<preset>[:<seed>]' (the embedded simulated dataset, generated on "
    f"first use; presets {', '.join(SIM_PRESETS)}), a local directory in the NSD-Flat hub "
    "layout (data/train-*.parquet, data/test-*.parquet), or a hub id such as "
    "clane9/NSD-Flat (needs the network). Default: %(default)s"
)
SUBJECTS_HELP = (
    "subjects to use: comma-separated 0-based subject_id values or NSD names, e.g. 0,1 or "
    "subj01,subj02 (the same two subjects). Default: all"
)


def subjects_arg(text: str) -> list[int]:
    """argparse type of ``--subjects``: ``"0,1"`` / ``"subj01,subj02"`` -> ``[0, 1]``."""
    try:
        subjects = normalize_subjects(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from None
    if subjects is None:  # only None gives None; kept for the type checker
        raise argparse.ArgumentTypeError("expected at least one subject")
    return subjects


def subject_arg(text: str) -> int:
    """argparse type of a single subject (an id or a name): ``"subj02"`` -> ``1``."""
    subjects = subjects_arg(text)
    if len(subjects) != 1:
        raise argparse.ArgumentTypeError(f"expected one subject; got {text!r}")
    return subjects[0]


def add_source(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    """``--source SOURCE`` (default :data:`~boldgpt.data.sources.DEFAULT_SOURCE`)."""
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        metavar="SOURCE",
        help=f"{what} {SOURCE_HELP}" if what else SOURCE_HELP,
    )


def add_subjects(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--subjects LIST`` (default None: every subject)."""
    parser.add_argument("--subjects", type=subjects_arg, metavar="LIST", help=SUBJECTS_HELP)

"""Hugging Face hub ids: the one rule for telling a hub id from a local path."""

from __future__ import annotations

import os
import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``owner/name``: letters, digits, ``_ . -``; the owner starts with a letter or digit."""


def is_hub_id(text: str | os.PathLike) -> bool:
    """Whether ``text`` looks like a hub id ``owner/name`` (callers check first whether
    a local path of that name exists: a path wins)."""
    return bool(HUB_ID.match(os.fspath(text)))

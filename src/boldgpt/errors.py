"""Exceptions with messages meant for people: each names what was wrong and what was
expected. The CLI prints them without a traceback."""


class BoldGPTError(Exception):
    """Base class of boldgpt's user-facing errors."""


class DataError(BoldGPTError, ValueError):
    """Malformed or missing data: a file, a row, a column, a map of the wrong shape."""


class ConfigError(BoldGPTError, ValueError):
    """An invalid configuration: an unknown key, a wrong type, a missing source."""


class CheckpointError(BoldGPTError, ValueError):
    """A model directory or checkpoint that cannot be loaded into the requested model."""

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


class UnsafeFileError(CheckpointError):
    """A file that would run code when loaded (a pickle with objects beyond tensors and
    plain containers). It is refused, never executed."""


class DiskFullError(BoldGPTError, OSError):
    """No space left (or quota exceeded) while writing a file. The file being replaced,
    if any, is unchanged: writes are atomic."""


class RunLockedError(BoldGPTError, RuntimeError):
    """Another process holds the lock of an output directory (e.g. a training run
    writing the same ``out_dir``)."""


class NonFiniteError(BoldGPTError, FloatingPointError):
    """A NaN or infinite loss or gradient stopped training before it reached the
    weights."""

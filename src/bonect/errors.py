"""The domain exceptions of bonect; each carries the context needed to act on it.

Every error bonect raises on purpose is a :class:`BonectError`. Those a job may meet are
either a :class:`RetryableError` (the same job may succeed later: a destination or the
catalog did not answer, a disk was full) or a :class:`PermanentError` (trying again changes
nothing: the series or the model is unusable); the worker turns the first into a later retry
and the second into a failed job, by type alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class BonectError(Exception):
    """Base of every error bonect raises on purpose; its message is one line for a user."""


class RetryableError(BonectError):
    """Something outside bonect failed for now (network, disk, database): try again later."""


class PermanentError(BonectError):
    """Trying again will not help: the input, the model or the configuration is wrong."""


class ConfigError(PermanentError):
    """The configuration file is missing, unreadable or invalid."""


class SeriesError(PermanentError):
    """An input series cannot be used (wrong modality, missing slices, mixed series...)."""

    def __init__(self, message: str, *, series_uid: str | None = None) -> None:
        super().__init__(message)
        self.series_uid = series_uid


class ModelError(PermanentError):
    """A model folder is missing, malformed, or its weights do not fit its manifest."""


class DeviceError(PermanentError, RuntimeError):
    """The compute device asked for is not there (``cuda`` on a machine without a GPU).

    Also a :class:`RuntimeError`, what PyTorch raises for the same, for the callers that
    already catch that."""


class ConversionError(PermanentError):
    """The conversion of a usable series failed."""


class StorageError(RetryableError):
    """A file could not be read or written (a full disk, a network share gone): may pass."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


@contextmanager
def storage_errors(doing: str) -> Iterator[None]:
    """Raise an ``OSError`` of the block as a :class:`StorageError` saying what was being done."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"{doing}: {exc}", path=exc.filename) from exc

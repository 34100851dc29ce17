"""The domain exceptions of bonect; each carries the context needed to act on it."""

from __future__ import annotations


class BonectError(Exception):
    """Base of every error bonect raises on purpose; its message is one line for a user."""


class ConfigError(BonectError):
    """The configuration file is missing, unreadable or invalid."""


class SeriesError(BonectError):
    """An input series cannot be used (wrong modality, missing slices, mixed series...)."""

    def __init__(self, message: str, *, series_uid: str | None = None) -> None:
        super().__init__(message)
        self.series_uid = series_uid


class ModelError(BonectError):
    """A model folder is missing, malformed, or its weights do not fit its manifest."""


class ConversionError(BonectError):
    """The conversion of a usable series failed."""

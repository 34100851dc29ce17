"""How the status page writes times, ages, durations, sizes and keys (Jinja2 filters)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final


def when(at: datetime | None) -> str:
    """A time in the server's local zone, to the second; a dash for none."""
    return "–" if at is None else at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(at: datetime | None, now: datetime) -> str:
    """How long ago ``at`` was, in the largest sensible unit (``42 s``, ``3 min``, ``2.5 h``)."""
    if at is None:
        return "–"
    return duration((now - at).total_seconds())


def duration(seconds: float | None) -> str:
    """Seconds as ``0.42 s``, ``42 s``, ``3.1 min``, ``2.5 h`` or ``4.0 d``."""
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size(n: int | None) -> str:
    """Bytes as ``512 B``, ``3.2 MB``, ``1.5 GB`` (powers of 1024)."""
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def short(key: str | None, length: int = 12) -> str:
    """The start of a hash or UID, enough to tell rows apart (the full value in a title)."""
    if not key:
        return "–"
    return key if len(key) <= length else key[:length] + "…"


def percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f} %"


FILTERS: Final[dict[str, Callable[..., Any]]] = {
    "when": when,
    "age": age,
    "duration": duration,
    "size": size,
    "short": short,
    "percent": percent,
}

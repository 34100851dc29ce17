"""Reading systemd unit files in tests, and checking them with ``systemd-analyze verify``."""

from __future__ import annotations

import subprocess
from pathlib import Path


def settings(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values]}}``; systemd keys may repeat, so values are lists."""
    parsed: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            parsed[section] = {}
            continue
        key, _, value = line.partition("=")
        parsed[section].setdefault(key.strip(), []).append(value.strip())
    return parsed


def verify(units: list[Path]) -> tuple[int, str, list[str]]:
    """Run ``systemd-analyze verify``: (exit code, stderr, lines that name one of the units).

    An unknown or misspelt key is only a warning there; callers refuse those lines too.
    """
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    names = [u.name for u in units]
    complaints = [line for line in result.stderr.splitlines() if any(n in line for n in names)]
    return result.returncode, result.stderr, complaints

"""DICOM validation for the tests: dicom3tools' ``dciodvfy`` as the judge of what bonect writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def dciodvfy_messages(path: Path) -> list[str]:
    """Every line ``dciodvfy`` prints for ``path`` (it reports on stderr)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise RuntimeError("dciodvfy not found: install dicom3tools (scripts/install-system-deps)")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    return (result.stderr + result.stdout).splitlines()


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of ``dciodvfy``'s report on ``path`` that start with "Error"."""
    return [line for line in dciodvfy_messages(path) if line.startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    """The lines of ``dciodvfy``'s report on ``path`` that start with "Warning"."""
    return [line for line in dciodvfy_messages(path) if line.startswith("Warning")]

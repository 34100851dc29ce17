"""Logging set-up for the command-line programs; library modules only get loggers."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(verbosity: int = 0) -> None:
    """INFO by default, DEBUG with -v; no timestamps under systemd (journald adds them)."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

"""The error boundary every bonect command shares, and the argument types they share.

One place turns an exception into one line on stderr and an exit code, for ``bonect``,
``bonect-daemon`` and ``bonect-trainer`` alike. It imports no part of the product, so each
command can use it without pulling in another (the daemon must not import the phantom).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from bonect.errors import BonectError, ConfigError

logger = logging.getLogger("bonect")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a reader that went away


def spacing_arg(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not three numbers: {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected SLICE,ROW,COLUMN in mm > 0, got {text!r}")
    return (values[0], values[1], values[2])


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(
    handler: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    *,
    prog: str = "bonect",
    interrupted: str = "interrupted",
) -> int:
    """Translate errors into one line on stderr and an exit code (every bonect command)."""
    try:
        code = int(handler(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at exit
        return code
    except BrokenPipeError:
        # the reader went away (`bonect-daemon status | head -1`): stop quietly, as a program
        # killed by SIGPIPE would; what is left in the buffer goes to /dev/null, not to stderr
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BonectError as exc:
        if args.verbose:
            logger.exception("failed")
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:  # boundary: no traceback for users unless -v
        if args.verbose:
            logger.exception("unexpected failure")
        print(f"{prog}: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE

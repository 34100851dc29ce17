"""Run DCMTK ``dcmsend`` on a batch of files and read what became of each one.

The sender's ``dcmsend`` transport (``[sender] transport = "dcmsend"``, see
:func:`bonect.daemon.sender.send_files`) hands the files of one destination to one ``dcmsend``
process per batch and reads each instance's outcome off the report ``dcmsend`` writes with
``--create-report-file``: one block per input file, in the order given, e.g.::

    Number        : 2
    Filename      : /archive/…/IM00002.dcm
    SOP Instance  : 1.2.826.0.1.3680043.8.498.3895…
    …
    Association   : 1
    Pres. Context : 1
    Network Xfer  : 1.2.840.10008.1.2.1 = Little Endian Explicit
    DIMSE Status  : 0xa700 (Refused: OutOfResources)

A status code is reported once ``dcmsend`` has the C-STORE-RSP. ``<no acceptable presentation
context>``: the peer accepted no context for it. ``<not sent>`` (DCMTK's ``RequestSent`` is
false): no answer, i.e. never sent (the association ended first), sent and not answered (a
response timeout), or sent on a context the peer did not accept (ASC "Bad presentation context
ID"); for that last case, which presentation contexts the peer accepted is read off the verbose
log (``-v +v`` prints each A-ASSOCIATE-AC). No report is written when no association could be
negotiated (peer down, association rejected); then the log says why.

DCMTK 3.6.7's ``dcmsend`` has no TLS options. Its log (stderr) is passed on at DEBUG only: at
verbose level it names files, and must never reach the logs above DEBUG.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DCMSEND = "dcmsend"
ASSOCIATION_REJECTED = "association rejected"
ASSOCIATION_FAILED = "association failed"

_FIELD = re.compile(r"^(?P<key>[A-Za-z. ]+?)\s*: (?P<value>.*)$")
_STATUS = re.compile(r"^0x(?P<code>[0-9a-fA-F]{4})\b")
_STARTING = re.compile(r"starting association #(\d+)")
_CONTEXT = re.compile(r"Context ID:\s+(\d+) \((.+)\)")
_NO_CONTEXT = "<no acceptable presentation context>"


@dataclass(frozen=True, slots=True)
class DcmsendRequest:
    """Where and how ``dcmsend`` sends: peer, AE titles, and timeouts in seconds."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    connect_timeout: float
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float  # no dcmsend option: bounds the whole process (see run_dcmsend)


@dataclass(frozen=True, slots=True)
class ReportEntry:
    """One input file's block of the report; ``status`` is ``None`` for ``<not sent>``."""

    number: int
    filename: str
    sop_instance_uid: str
    association: int | None
    presentation_context: int | None
    network_transfer_syntax: str | None
    status: int | None
    no_context: bool = False  # "<no acceptable presentation context>"


@dataclass(frozen=True, slots=True)
class DcmsendRun:
    """What one ``dcmsend`` process did.

    ``entries`` is the report (empty when none was written, then ``failure`` says why);
    ``contexts`` maps association number to {presentation context ID: accepted}.
    """

    returncode: int | None
    entries: tuple[ReportEntry, ...]
    contexts: dict[int, dict[int, bool]]
    failure: str | None
    log: str
    unanswered: frozenset[str] = frozenset()  # files sent whose C-STORE-RSP never came

    def context_accepted(self, entry: ReportEntry) -> bool | None:
        """Whether the peer accepted the presentation context of ``entry`` (None: unknown)."""
        if entry.association is None or entry.presentation_context is None:
            return None
        return self.contexts.get(entry.association, {}).get(entry.presentation_context)


def dcmsend_path() -> str | None:
    """The ``dcmsend`` executable on PATH, or None."""
    return shutil.which(DCMSEND)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def parse_report(text: str) -> tuple[ReportEntry, ...]:
    """The per-instance blocks of a ``dcmsend --create-report-file`` report."""
    entries: list[ReportEntry] = []
    block: dict[str, str] = {}

    def close() -> None:
        number = _int_or_none(block.get("Number"))
        if number is None or "Filename" not in block or "DIMSE Status" not in block:
            block.clear()
            return
        status_text = block["DIMSE Status"].strip()
        match = _STATUS.match(status_text)
        xfer = block.get("Network Xfer")
        entries.append(
            ReportEntry(
                number=number,
                filename=block["Filename"],
                sop_instance_uid=block.get("SOP Instance", "").strip(),
                association=_int_or_none(block.get("Association")),
                presentation_context=_int_or_none(block.get("Pres. Context")),
                network_transfer_syntax=(xfer or "").split(" = ")[0].strip() or None,
                status=None if match is None else int(match["code"], 16),
                no_context=status_text == _NO_CONTEXT,
            )
        )
        block.clear()

    for line in text.splitlines():
        field = _FIELD.match(line)
        if field is None:
            continue
        key = field["key"].strip()
        if key == "Number":
            close()
        if key in ("Number", "Filename", "SOP Instance", "Association", "Pres. Context"):
            block[key] = field["value"]
        elif key in ("Network Xfer", "DIMSE Status"):
            block[key] = field["value"]
            if key == "DIMSE Status":
                close()
    close()
    return tuple(entries)


def parse_contexts(log: str) -> dict[int, dict[int, bool]]:
    """{association number: {presentation context ID: accepted}} from a ``-v +v`` log."""
    contexts: dict[int, dict[int, bool]] = {}
    association = 0
    in_accept = False
    for line in log.splitlines():
        if (started := _STARTING.search(line)) is not None:
            association = int(started[1])
        elif "BEGIN A-ASSOCIATE-AC" in line:
            in_accept = True
            contexts.setdefault(association, {})
        elif "END A-ASSOCIATE-AC" in line:
            in_accept = False
        elif in_accept and (context := _CONTEXT.search(line)) is not None:
            contexts[association][int(context[1])] = context[2].strip() == "Accepted"
    return contexts


def parse_attempts(log: str) -> tuple[str, ...]:
    """For each C-STORE request in a ``-v`` log, in order: ``"answered"``, ``"unanswered"``
    (sent; no response: timeout or abort) or ``"not sent"`` (it could not be sent)."""
    attempts: list[str] = []
    waiting = False
    for line in log.splitlines():
        if "Sending C-STORE Request" in line:
            if waiting:  # no outcome line for the previous one: say nothing about it
                attempts.append("?")
            waiting = True
        elif waiting and "Received C-STORE Response" in line:
            attempts.append("answered")
            waiting = False
        elif waiting and "Failed receiving DIMSE response" in line:
            attempts.append("unanswered")
            waiting = False
        elif waiting and "Failed sending C-STORE request" in line:
            attempts.append("not sent")
            waiting = False
    if waiting:
        attempts.append("?")
    return tuple(attempts)


def unanswered_files(
    entries: Sequence[ReportEntry], contexts: dict[int, dict[int, bool]], log: str
) -> frozenset[str]:
    """The files of ``entries`` that were sent and not answered.

    On one association (one per run: bonect gives dcmsend at most 128 presentation
    contexts' worth of files) the k-th C-STORE request of the log is the k-th report entry
    of that association; where the counts do not match, nothing is claimed.
    """
    if len(contexts) != 1:
        return frozenset()
    (association,) = contexts
    on_it = [e for e in entries if e.association == association]
    attempts = parse_attempts(log)
    if len(attempts) != len(on_it):
        logger.debug("%d C-STORE requests logged, %d report entries", len(attempts), len(on_it))
        return frozenset()
    return frozenset(e.filename for e, a in zip(on_it, attempts, strict=True) if a == "unanswered")


def _failure(log: str) -> str:
    """Why no association was negotiated, in the words the pynetdicom transport uses."""
    return ASSOCIATION_REJECTED if "Association Rejected" in log else ASSOCIATION_FAILED


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def command(request: DcmsendRequest, paths: Sequence[Path], report: Path) -> list[str]:
    """The ``dcmsend`` command line for ``paths``.

    ``-nh``: go on after a refused instance; ``-dn``: send each file in its own transfer
    syntax, never decompressed; ``-nuc``: send what the archive holds without second-guessing
    its UIDs (as the pynetdicom transport does).
    """
    return [
        DCMSEND,
        "-v",
        "+v",
        "-nh",
        "-dn",
        "-nuc",
        "-aet",
        request.calling_ae,
        "-aec",
        request.called_ae,
        "-to",
        _seconds(request.connect_timeout),
        "-ta",
        _seconds(request.acse_timeout),
        "-td",
        _seconds(request.dimse_timeout),
        "+crf",
        str(report),
        request.host,
        str(request.port),
        *(str(p) for p in paths),
    ]


def run_dcmsend(request: DcmsendRequest, paths: Sequence[Path]) -> DcmsendRun:
    """Send ``paths`` with one ``dcmsend`` process (``TCP_NODELAY=1``) and parse its report.

    The process is bounded by connect + ACSE + network timeout, plus DIMSE + network timeout
    per file; past that it is killed and nothing it did is reported (every instance unknown).
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    wall = (
        request.connect_timeout
        + request.acse_timeout
        + request.network_timeout
        + len(paths) * (request.dimse_timeout + request.network_timeout)
    )
    with tempfile.TemporaryDirectory(prefix="bonect-dcmsend-") as folder:
        report = Path(folder) / "report.txt"
        try:
            done = subprocess.run(
                command(request, paths, report),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=wall,
                check=False,
            )
        except FileNotFoundError:
            logger.error("%s is not on PATH: nothing sent", DCMSEND)
            return DcmsendRun(None, (), {}, f"{DCMSEND} not found", "")
        except subprocess.TimeoutExpired as expired:
            log = _text(expired.stderr)
            logger.debug("%s log (killed after %.0f s):\n%s", DCMSEND, wall, log)
            logger.warning("%s did not finish in %.0f s: killed", DCMSEND, wall)
            return DcmsendRun(None, (), {}, f"{DCMSEND} killed after {wall:.0f} s", log)
        log = done.stderr + done.stdout
        logger.debug("%s exited %d; log:\n%s", DCMSEND, done.returncode, log)
        text = report.read_text(errors="replace") if report.exists() else ""
    entries = parse_report(text)
    failure = None if entries else _failure(log)
    contexts = parse_contexts(log)
    unanswered = unanswered_files(entries, contexts, log)
    return DcmsendRun(done.returncode, entries, contexts, failure, log, unanswered)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")

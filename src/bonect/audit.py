"""The audit trail: one JSON line per security-relevant event, for a hospital's IT security.

Events (:class:`AuditEvent`): an association accepted or refused (with why), the instances of
a series received (when it settles), an sCT sent (to which destination), a prior CT retrieved
(from which source), a model promoted or rolled back, the configuration loaded at start.

Each record uses the field names of the DICOM audit message (PS3.15 A.5, as IHE ATNA carries
it): ``EventID`` (a DCM code), ``EventActionCode``, ``EventDateTime``,
``EventOutcomeIndicator`` (0 success, 4 minor failure, 8 serious failure),
``ActiveParticipant`` (AE titles and network addresses), ``AuditSourceIdentification`` and
``ParticipantObjectIdentification`` (study and series UIDs, the patient only as bonect's
hashed key, never a name or an ID). Records go to ``<storage dir>/audit/audit.jsonl`` (one
``write`` per line, appended, so several processes may share it) and, with ``[audit] syslog``,
as RFC 5424 messages over UDP. Writing an audit record never raises: a failure is logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bonect.config import Config

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"


class AuditEvent(StrEnum):
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REFUSED = "association_refused"
    INSTANCES_RECEIVED = "instances_received"
    SCT_SENT = "sct_sent"
    PRIOR_RETRIEVED = "prior_retrieved"
    MODEL_PROMOTED = "model_promoted"
    MODEL_ROLLED_BACK = "model_rolled_back"
    CONFIGURATION_LOADED = "configuration_loaded"


#: event -> (EventID code, its meaning, EventActionCode, EventTypeCode or None); DCM codes of
#: PS3.16 CID 400/401 (audit events and event types).
_CODES: Mapping[AuditEvent, tuple[str, str, str, tuple[str, str] | None]] = {
    AuditEvent.ASSOCIATION_ACCEPTED: ("110114", "User Authentication", "E", None),
    AuditEvent.ASSOCIATION_REFUSED: ("110113", "Security Alert", "E", None),
    AuditEvent.INSTANCES_RECEIVED: ("110104", "DICOM Instances Transferred", "C", None),
    AuditEvent.SCT_SENT: ("110104", "DICOM Instances Transferred", "R", None),
    AuditEvent.PRIOR_RETRIEVED: ("110104", "DICOM Instances Transferred", "C", None),
    AuditEvent.MODEL_PROMOTED: (
        "110100", "Application Activity", "E", ("110131", "Software Configuration")
    ),
    AuditEvent.MODEL_ROLLED_BACK: (
        "110100", "Application Activity", "E", ("110131", "Software Configuration")
    ),
    AuditEvent.CONFIGURATION_LOADED: (
        "110100", "Application Activity", "E", ("110120", "Application Start")
    ),
}  # fmt: skip

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8


@dataclass(frozen=True)
class Participant:
    """An ``ActiveParticipant``: a peer AE (with its address) or this node."""

    user_id: str
    requestor: bool
    address: str | None = None

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"UserID": self.user_id, "UserIsRequestor": self.requestor}
        if self.address:
            item["NetworkAccessPointID"] = self.address
            item["NetworkAccessPointTypeCode"] = "2"  # an IP address
        return item


@dataclass(frozen=True)
class Subject:
    """What an event is about: the patient (hashed key only), study, series, counts."""

    patient_key: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    instances: int | None = None

    def as_json(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.patient_key:
            items.append(
                {
                    "ParticipantObjectTypeCode": 1,  # person
                    "ParticipantObjectTypeCodeRole": 1,  # patient
                    "ParticipantObjectIDTypeCode": "bonect hashed patient key",
                    "ParticipantObjectID": self.patient_key,
                }
            )
        for kind, uid in (("Study Instance UID", self.study_uid), ("Series UID", self.series_uid)):
            if uid:
                item: dict[str, Any] = {
                    "ParticipantObjectTypeCode": 2,  # system object
                    "ParticipantObjectTypeCodeRole": 3,  # report
                    "ParticipantObjectIDTypeCode": kind,
                    "ParticipantObjectID": uid,
                }
                if kind == "Series UID" and self.instances is not None:
                    item["ParticipantObjectDetail"] = {"NumberOfInstances": self.instances}
                items.append(item)
        return items


class AuditTrail:
    """Where this process writes its audit records; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        *,
        source_id: str,
        syslog: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = folder / AUDIT_FILE
        self._source_id = source_id
        self._clock = clock
        self._lock = threading.Lock()
        self._syslog = _syslog_target(syslog) if syslog else None

    def record(
        self,
        event: AuditEvent,
        *,
        outcome: int = SUCCESS,
        reason: str = "",
        participants: Sequence[Participant] = (),
        subject: Subject | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Append one record (and send it to syslog). Never raises."""
        code, meaning, action, event_type = _CODES[event]
        entry: dict[str, Any] = {
            "EventDateTime": self._clock().isoformat(timespec="milliseconds"),
            "Event": event.value,
            "EventID": {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning},
            "EventActionCode": action,
            "EventOutcomeIndicator": outcome,
            "AuditSourceIdentification": {"AuditSourceID": self._source_id},
        }
        if event_type is not None:
            entry["EventTypeCode"] = [
                {"csd-code": event_type[0], "codeSystemName": "DCM", "originalText": event_type[1]}
            ]
        if reason:
            entry["EventOutcomeDescription"] = reason
        if participants:
            entry["ActiveParticipant"] = [p.as_json() for p in participants]
        if subject is not None and (objects := subject.as_json()):
            entry["ParticipantObjectIdentification"] = objects
        if detail:
            entry["bonect"] = dict(detail)
        line = json.dumps(entry, separators=(",", ":"), default=str)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
        except OSError as exc:
            logger.error("could not write the audit record %s: %s", event.value, exc)
        if self._syslog is not None:
            self._send_syslog(event, line)

    def _send_syslog(self, event: AuditEvent, line: str) -> None:
        assert self._syslog is not None
        host, port = self._syslog
        severity = 5 if event is not AuditEvent.ASSOCIATION_REFUSED else 4  # notice / warning
        pri = 10 * 8 + severity  # facility 10: security/authorization (RFC 5424 6.2.1)
        stamp = self._clock().isoformat(timespec="milliseconds")
        message = (
            f"<{pri}>1 {stamp} {socket.gethostname()} bonect {os.getpid()} {event.value} - {line}"
        )
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode()[:65000], (host, port))
        except OSError as exc:
            logger.error("could not send the audit record to syslog %s:%d: %s", host, port, exc)


def _syslog_target(url: str) -> tuple[str, int]:
    """``udp://host:port`` (port 514 by default) as (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "udp" or not parts.hostname:
        raise ValueError(f"audit syslog must be udp://host[:port], got {url!r}")
    return parts.hostname, parts.port or 514


def audit_trail(config: Config, *, process: str) -> AuditTrail | None:
    """This process's audit trail from ``[audit]`` (None when disabled); ``process`` names it
    in ``AuditSourceID`` (``daemon``, ``trainer``, ``web``)."""
    if not config.audit.enabled:
        return None
    source = f"{config.node.ae_title}@{socket.gethostname()}/{process}"
    return AuditTrail(config.audit_dir, source_id=source, syslog=config.audit.syslog)

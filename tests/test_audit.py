"""The audit trail: JSON lines with the DICOM audit message's field names, RFC 5424 over UDP,
and never an exception (the registry's records are tested in test_registry.py, the daemon's
in the end-to-end tests)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bonect.audit import (
    MINOR_FAILURE,
    AuditEvent,
    AuditTrail,
    Participant,
    Subject,
    audit_trail,
)
from bonect.config import Config, StorageConfig

AT = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)


def records(trail: AuditTrail) -> list[dict[str, object]]:
    return [json.loads(line) for line in trail.path.read_text().splitlines()]


def test_a_record_has_the_audit_message_fields_and_the_file_is_private(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit", source_id="BONECT@host/daemon", clock=lambda: AT)
    trail.record(
        AuditEvent.ASSOCIATION_REFUSED,
        outcome=MINOR_FAILURE,
        reason="association of 'MRI1': calling AE not allowed",
        participants=[Participant("MRI1", requestor=True, address="10.1.2.9")],
    )
    trail.record(
        AuditEvent.INSTANCES_RECEIVED,
        participants=[Participant("MRI1", requestor=True)],
        subject=Subject("ab" * 32, "1.2.3", "1.2.3.4", 140),
    )
    refused, received = records(trail)
    assert refused["Event"] == "association_refused"
    assert refused["EventID"] == {
        "csd-code": "110113",
        "codeSystemName": "DCM",
        "originalText": "Security Alert",
    }
    assert refused["EventOutcomeIndicator"] == 4
    assert refused["EventDateTime"] == "2026-12-06T09:30:00.000+00:00"
    assert refused["ActiveParticipant"] == [
        {
            "UserID": "MRI1",
            "UserIsRequestor": True,
            "NetworkAccessPointID": "10.1.2.9",
            "NetworkAccessPointTypeCode": "2",
        }
    ]
    assert refused["AuditSourceIdentification"] == {"AuditSourceID": "BONECT@host/daemon"}
    objects = received["ParticipantObjectIdentification"]
    assert isinstance(objects, list)
    assert [o["ParticipantObjectIDTypeCode"] for o in objects] == [
        "bonect hashed patient key",
        "Study Instance UID",
        "Series UID",
    ]
    assert objects[2]["ParticipantObjectDetail"] == {"NumberOfInstances": 140}
    assert trail.path.stat().st_mode & 0o777 == 0o600


def test_records_go_to_syslog_as_rfc_5424(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        trail = AuditTrail(
            tmp_path, source_id="X", syslog=f"udp://127.0.0.1:{port}", clock=lambda: AT
        )
        trail.record(AuditEvent.CONFIGURATION_LOADED, detail={"port": 11112})
        message = server.recv(65536).decode()
    header, _, body = message.partition(" - ")
    assert header.startswith("<85>1 2026-12-06T09:30:00.000+00:00 ")  # facility 10, notice
    assert header.endswith(" configuration_loaded")
    assert json.loads(body)["bonect"] == {"port": 11112}


def test_a_record_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "audit").write_text("a file where the folder should be")
    trail = AuditTrail(tmp_path / "audit", source_id="X")
    with caplog.at_level(logging.ERROR, logger="bonect.audit"):
        trail.record(AuditEvent.SCT_SENT)
    assert "could not write the audit record sct_sent" in caplog.text


def test_the_config_turns_it_off_and_rejects_a_bad_syslog_address(tmp_path: Path) -> None:
    storage = StorageConfig(dir=tmp_path)
    on = audit_trail(Config(storage=storage), process="daemon")
    assert on is not None and on.path == tmp_path / "audit" / "audit.jsonl"
    off = Config.model_validate({"storage": {"dir": str(tmp_path)}, "audit": {"enabled": False}})
    assert audit_trail(off, process="daemon") is None
    with pytest.raises(ValueError, match="udp://host"):
        Config.model_validate({"audit": {"syslog": "tcp://logs:514"}})

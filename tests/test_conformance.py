"""docs/conformance.md says what the code accepts and proposes: its marked tables are compared
with the code's own lists, so a transfer syntax or SOP class added to one and not the other
fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, KeyObjectSelectionDocumentStorage
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from bonect.config import NodeConfig, SourceConfig, StorageConfig
from bonect.converter.uncertainty_object import SOP_CLASS
from bonect.daemon.scp import ACCEPTED_TRANSFER_SYNTAXES
from bonect.dicom.files import file_meta_for
from bonect.dicom.query_retrieve import CT_STORAGE_CLASSES, GET_TRANSFER_SYNTAXES

STATEMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
UID_CELL = re.compile(r"`(\d+(?:\.\d+)+)`")


def table(name: str) -> list[list[str]]:
    """The rows (cells) of the table after ``<!-- conformance: name -->``."""
    lines = STATEMENT.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- conformance: {name} -->")
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert len(rows) > 2, f"no table after the {name} marker"
    return rows[2:]  # past the header and the rule


def uids(name: str) -> list[str]:
    found = [m.group(1) for row in table(name) for m in UID_CELL.finditer(" ".join(row))]
    assert found, name
    return found


def test_the_transfer_syntaxes_accepted_as_scp() -> None:
    assert sorted(uids("scp-transfer-syntaxes")) == sorted(ACCEPTED_TRANSFER_SYNTAXES)


def test_the_sop_classes_as_scp() -> None:
    assert uids("scp-sop-classes") == [Verification]
    text = STATEMENT.read_text(encoding="utf-8")
    (count,) = re.findall(r"<!-- conformance: storage-count -->(\d+)<!-- /conformance -->", text)
    assert int(count) == len(AllStoragePresentationContexts)


def test_the_sop_classes_and_syntaxes_as_scu() -> None:
    assert sorted(uids("scu-sop-classes")) == sorted(
        [
            Verification,  # bonect-daemon echo (daemon/sender.py)
            CTImageStorage,  # the sCT (converter/dicom_writer.py)
            KeyObjectSelectionDocumentStorage,  # rejection notes (daemon/rejection.py)
            *SOP_CLASS.values(),  # uncertainty objects (converter/uncertainty_object.py)
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ]
    )
    assert sorted(uids("get-storage-classes")) == sorted(CT_STORAGE_CLASSES)
    assert sorted(uids("get-transfer-syntaxes")) == sorted(GET_TRANSFER_SYNTAXES)
    written = file_meta_for(CTImageStorage, "1.2.3").TransferSyntaxUID
    assert uids("scu-transfer-syntaxes") == [written] == [ExplicitVRLittleEndian]


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("node.max_associations", NodeConfig().max_associations),
        ("node.max_pending_connections", NodeConfig().max_pending_connections),
        ("node.request_timeout_seconds", NodeConfig().request_timeout_seconds),
        ("node.idle_timeout_seconds", NodeConfig().idle_timeout_seconds),
        (
            "sources.max_associations",
            SourceConfig(name="s", ae_title="S", host="h", port=1).max_associations,
        ),
        ("storage.max_dataset_mb", StorageConfig().max_dataset_mb),
    ],
)
def test_the_association_policies_are_the_config_defaults(key: str, default: float) -> None:
    rows = {row[2].strip("`"): row[1] for row in table("association-policies")}
    assert float(rows[key]) == default

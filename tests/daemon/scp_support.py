"""The scaffolding of the Storage SCP tests: a recording sink, a fake disk, a node on port 0
(the ``start_node`` fixture in conftest.py), an SCU that associates, and a test PKI."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.daemon.archive import Archive
from bonect.daemon.scp import StorageServer
from bonect.dicom.header import InstanceHeader

NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)


@dataclass
class Recorded:
    header: InstanceHeader
    path: Path
    received_at: datetime
    association_id: str
    calling_ae: str | None


@dataclass
class RecordingSink:
    """An InstanceSink that remembers; ``fail_with`` makes ``record`` raise."""

    fail_with: Exception | None = None
    records: list[Recorded] = field(default_factory=list)
    ended: list[tuple[str, datetime]] = field(default_factory=list)
    ended_event: threading.Event = field(default_factory=threading.Event)
    aborted: list[str] = field(default_factory=list)  # the ended associations that aborted

    def record(
        self,
        header: InstanceHeader,
        path: Path,
        *,
        received_at: datetime,
        association_id: str,
        calling_ae: str | None,
    ) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.records.append(Recorded(header, path, received_at, association_id, calling_ae))

    def association_ended(self, association_id: str, at: datetime, *, aborted: bool) -> None:
        self.ended.append((association_id, at))
        if aborted:
            self.aborted.append(association_id)
        self.ended_event.set()


@dataclass
class FakeDisk:
    free: int = 10**12

    def free_bytes(self) -> int:
        return self.free


@dataclass
class ScpNode:
    server: StorageServer
    archive: Archive
    sink: RecordingSink
    disk: FakeDisk


StartNode = Callable[..., ScpNode]


def associate(
    port: int,
    contexts: Sequence[tuple[str, str]] = ((MRImageStorage, ExplicitVRLittleEndian),),
    *,
    calling: str = "MODALITY",
    called: str = "BONECT",
    tls: ssl.SSLContext | None = None,
    bind_address: tuple[str, int] = ("", 0),
    timeout: float = 10,
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    cxs = [build_context(Verification)]
    cxs += [build_context(sop_class, [ts]) for sop_class, ts in contexts]
    return ae.associate(
        "127.0.0.1",
        port,
        contexts=cxs,
        ae_title=called,
        tls_args=None if tls is None else (tls, "localhost"),
        bind_address=bind_address,
    )


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert rj is not None
    return (rj.result, rj.result_source, rj.diagnostic)


def archived(node: ScpNode) -> list[Path]:
    return sorted(p for p in node.archive.incoming.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(tmp_path: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf",
            "-out", f"{name}.pem")  # fmt: skip
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")

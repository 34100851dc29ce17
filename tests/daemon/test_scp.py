"""The Storage SCP on a real socket: DCMTK and pynetdicom peers, statuses, access control, TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.daemon.archive import Archive
from bonect.daemon.receive import Receiver
from bonect.daemon.scp import AccessPolicy, StorageServer, server_tls_context
from bonect.dicom.header import InstanceHeader, read_header
from bonect.errors import ConfigError
from dicom_peers import echoscu, have, storescu
from series_factory import make_mr_series, write_series

NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
#: storescu proposes only uncompressed syntaxes unless told (it would decompress, or fail)
STORESCU_PROPOSE = {
    DeflatedExplicitVRLittleEndian: ["-xd"],
    RLELossless: ["-xr"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
}
needs_dcmtk = pytest.mark.skipif(not have("storescu"), reason="DCMTK is not installed")


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

    def association_ended(self, association_id: str, at: datetime) -> None:
        self.ended.append((association_id, at))
        self.ended_event.set()


@dataclass
class FakeDisk:
    free: int = 10**12

    def free_bytes(self) -> int:
        return self.free


@dataclass
class Node:
    server: StorageServer
    archive: Archive
    sink: RecordingSink
    disk: FakeDisk


StartNode = Callable[..., Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    servers: list[StorageServer] = []

    def start(**kwargs: Any) -> Node:
        archive = Archive.open(tmp_path / "var")
        sink = kwargs.pop("sink", RecordingSink())
        disk = FakeDisk()
        receiver = Receiver(
            archive=archive,
            sink=sink,
            reserve_bytes=kwargs.pop("reserve_bytes", 0),
            free_bytes=disk.free_bytes,
            clock=lambda: NOW,
        )
        server = StorageServer.start(
            ae_title="BONECT", host="127.0.0.1", port=0, receiver=receiver, **kwargs
        )
        servers.append(server)
        return Node(server, archive, sink, disk)

    yield start
    for server in servers:
        server.stop()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def series_files(folder: Path, transfer_syntax: UID, n: int = 3) -> list[Path]:
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return write_series(make_mr_series((n, 16, 16), transfer_syntax=transfer_syntax), folder)
    datasets = make_mr_series((n, 64, 64))  # JPEG 2000 needs more than 16 x 16
    for ds in datasets:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        else:
            ds.compress(transfer_syntax)
    return write_series(datasets, folder)


def associate(
    port: int,
    contexts: Sequence[tuple[str, str]] = ((MRImageStorage, ExplicitVRLittleEndian),),
    *,
    calling: str = "MODALITY",
    called: str = "BONECT",
    tls: ssl.SSLContext | None = None,
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    cxs = [build_context(Verification)]
    cxs += [build_context(sop_class, [ts]) for sop_class, ts in contexts]
    return ae.associate(
        "127.0.0.1",
        port,
        contexts=cxs,
        ae_title=called,
        tls_args=None if tls is None else (tls, "localhost"),
    )


def store(port: int, datasets: Sequence[Dataset | Path], **kwargs: Any) -> list[int]:
    """C-STORE on one association; return the statuses."""
    contexts = set()
    for item in datasets:
        meta = dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item
        contexts.add((meta.file_meta.MediaStorageSOPClassUID, meta.file_meta.TransferSyntaxUID))
    assoc = associate(port, sorted(contexts), **kwargs)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(item).Status) for item in datasets]
    finally:
        assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert rj is not None
    return (rj.result, rj.result_source, rj.diagnostic)


def archived(node: Node) -> list[Path]:
    return sorted(p for p in node.archive.incoming.rglob("*") if p.is_file())


@needs_dcmtk
@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
    ids=lambda ts: UID(ts).keyword,
)
def test_storescu_series_is_archived_as_sent(
    start_node: StartNode, tmp_path: Path, transfer_syntax: UID
) -> None:
    node = start_node()
    sources = series_files(tmp_path / "src", transfer_syntax)

    flags = STORESCU_PROPOSE.get(transfer_syntax, [])
    done = storescu(node.server.port, sources, calling_ae="MODALITY", extra_args=flags)

    assert done.returncode == 0, done.stderr
    assert node.sink.ended_event.wait(10)
    by_uid = {r.header.sop_instance_uid: r for r in node.sink.records}
    assert len(by_uid) == len(sources) == len(archived(node))
    for source in sources:
        ds = dcmread(source, stop_before_pixels=True)
        rec = by_uid[ds.SOPInstanceUID]
        assert rec.path == node.archive.path_for(rec.header) and rec.path.is_file()
        assert dataset_bytes(rec.path) == dataset_bytes(source)  # bytes as sent, not re-encoded
        assert rec.header.transfer_syntax_uid == transfer_syntax
        assert rec.header.study_uid == ds.StudyInstanceUID
        assert (rec.calling_ae, rec.received_at) == ("MODALITY", NOW)
    assert dcmread(rec.path).file_meta.TransferSyntaxUID == transfer_syntax
    (association_id,) = {r.association_id for r in node.sink.records}
    assert node.sink.ended == [(association_id, NOW)]


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, JPEGLSLossless, RLELossless],
    ids=lambda ts: UID(ts).keyword,
)
def test_pynetdicom_scu_series_is_archived_as_sent(
    start_node: StartNode, tmp_path: Path, transfer_syntax: UID
) -> None:
    node = start_node()
    sources = series_files(tmp_path / "src", transfer_syntax, n=4)

    assert store(node.server.port, [dcmread(p) for p in sources]) == [0x0000] * 4

    assert len(node.sink.records) == 4
    for rec, source in zip(node.sink.records, sources, strict=True):
        assert dataset_bytes(rec.path) == dataset_bytes(source)
    decoded = dcmread(node.sink.records[0].path)
    assert (decoded.pixel_array == dcmread(sources[0]).pixel_array).all()
    # the sink is handed the header the SCP read: the same as the file written says
    for rec in node.sink.records:
        assert rec.header == read_header(dcmread(rec.path, stop_before_pixels=True))


def test_c_echo(start_node: StartNode) -> None:
    node = start_node()
    assoc = associate(node.server.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    if have("echoscu"):
        assert echoscu(node.server.port).returncode == 0
    assert node.sink.records == [] and node.sink.ended == []


def test_under_the_disk_reserve_stores_get_a700_and_new_associations_are_refused(
    start_node: StartNode,
) -> None:
    node = start_node(reserve_bytes=10**9)
    ds = make_mr_series((1, 8, 8))[0]
    assoc = associate(node.server.port)
    assert assoc.is_established

    node.disk.free = 10**9 - 1
    assert assoc.send_c_store(ds).Status == 0xA700
    assoc.release()
    assert rejection(associate(node.server.port)) == (0x02, 0x03, 0x02)  # transient

    node.disk.free = 10**9
    assert store(node.server.port, [ds]) == [0x0000]
    assert len(archived(node)) == 1


def test_when_free_space_cannot_be_read_associations_are_refused(tmp_path: Path) -> None:
    def unreadable() -> int:
        raise PermissionError("statvfs")

    receiver = Receiver(
        archive=Archive.open(tmp_path), sink=RecordingSink(), reserve_bytes=1, free_bytes=unreadable
    )
    with StorageServer.start(
        ae_title="BONECT", host="127.0.0.1", port=0, receiver=receiver
    ) as server:
        assert rejection(associate(server.port)) == (0x02, 0x03, 0x02)  # fails closed


def test_a_failing_sink_gets_a700(start_node: StartNode) -> None:
    node = start_node(sink=RecordingSink(fail_with=OSError("catalog is locked")))
    ds = make_mr_series((1, 8, 8))[0]
    assert store(node.server.port, [ds]) == [0xA700]


def test_an_undecodable_dataset_gets_c210(
    start_node: StartNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    (good,) = write_series(make_mr_series((1, 8, 8)), tmp_path / "src")
    _, offset = split_dataset(good)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(good.read_bytes()[:offset] + b"\x08\x00\x18\x00UI\x40\x00" + b"\xff" * 9)
    # send the file's bytes without decoding them (pynetdicom would refuse to encode them)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)

    assert store(node.server.port, [garbage]) == [0xC210]
    assert archived(node) == [] and node.sink.records == []


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_a_header_that_cannot_identify_the_instance_gets_c210(
    start_node: StartNode, keyword: str
) -> None:
    node = start_node()
    ds = make_mr_series((1, 8, 8))[0]
    delattr(ds, keyword)  # a HeaderError (it used to be answered 0xA700, as a catalog failure)

    assert store(node.server.port, [ds]) == [0xC210]
    assert archived(node) == [] and node.sink.records == []
    assert node.sink.ended == []  # nothing archived: no association to settle


def test_a_uid_that_would_escape_the_storage_dir_gets_c210(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node()
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN  # let the bad UID by
    pydicom_config.settings.writing_validation_mode = pydicom_config.WARN
    ds = make_mr_series((1, 8, 8))[0]
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.StudyInstanceUID = "1.2.3/../../../../x"
        ds.SeriesInstanceUID = "../../y"
        assert store(node.server.port, [ds]) == [0xC210]

    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert node.sink.records == []


def test_a_sop_instance_uid_differing_from_the_request_gets_c210(
    start_node: StartNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    ds = make_mr_series((1, 8, 8))[0]
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request will carry this one
    path = tmp_path / "mismatch.dcm"
    ds.preamble = b"\0" * 128
    dcmwrite(path, ds, enforce_file_format=False)  # keeps the meta as it is
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)

    assert store(node.server.port, [path]) == [0xC210]
    assert archived(node) == []


def test_unknown_calling_ae_is_rejected(start_node: StartNode, tmp_path: Path) -> None:
    policy = AccessPolicy.build(calling_ae_titles=["MODALITY"], networks=None)
    node = start_node(policy=policy)

    assert rejection(associate(node.server.port, calling="INTRUDER")) == (0x01, 0x01, 0x03)
    assert associate(node.server.port, calling="MODALITY").is_established
    if have("storescu"):
        sources = series_files(tmp_path / "src", ExplicitVRLittleEndian, n=1)
        assert storescu(node.server.port, sources, calling_ae="INTRUDER").returncode != 0
    assert archived(node) == []


def test_a_source_address_not_allowed_is_rejected(start_node: StartNode) -> None:
    outside = start_node(policy=AccessPolicy.build(calling_ae_titles=None, networks=["10.0.0.0/8"]))
    assert rejection(associate(outside.server.port)) == (0x01, 0x01, 0x01)

    inside = start_node(policy=AccessPolicy.build(calling_ae_titles=None, networks=["127.0.0.0/8"]))
    assoc = associate(inside.server.port)
    assert assoc.is_established
    assoc.release()


def test_a_wrong_called_ae_is_rejected(start_node: StartNode) -> None:
    node = start_node()
    assert rejection(associate(node.server.port, called="SOMEONE")) == (0x01, 0x01, 0x07)
    if have("echoscu"):
        assert echoscu(node.server.port, called_ae="SOMEONE").returncode != 0


def test_access_policy_parsing_and_matching() -> None:
    policy = AccessPolicy.build(calling_ae_titles=[" PACS "], networks=["192.168.1.0/24", "::1"])
    assert policy.allows_calling_ae("PACS") and not policy.allows_calling_ae("OTHER")
    assert policy.allows_address("192.168.1.77")
    assert policy.allows_address("::ffff:192.168.1.77")  # IPv4-mapped, from a dual-stack socket
    assert policy.allows_address("::1")
    assert not policy.allows_address("192.168.2.1") and not policy.allows_address("garbage")
    nobody = AccessPolicy.build(calling_ae_titles=[], networks=[])
    assert not nobody.allows_address("127.0.0.1") and not nobody.allows_calling_ae("PACS")
    anybody = AccessPolicy()
    assert anybody.allows_address("8.8.8.8") and anybody.allows_calling_ae("X")
    with pytest.raises(ConfigError, match=r"10\.0\.0\.300"):
        AccessPolicy.build(calling_ae_titles=None, networks=["10.0.0.300"])


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
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


def test_dicom_tls_with_client_certificates(start_node: StartNode, pki: Pki) -> None:
    context = server_tls_context(pki.server_cert, pki.server_key, pki.ca)
    node = start_node(ssl_context=context)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    client.load_cert_chain(pki.client_cert, pki.client_key)

    assoc = associate(node.server.port, tls=client)
    assert assoc.is_established
    assert assoc.send_c_store(make_mr_series((1, 8, 8))[0]).Status == 0x0000
    assoc.release()

    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    assert not associate(node.server.port, tls=anonymous).is_established
    assert not associate(node.server.port).is_established  # plain TCP
    assert len(archived(node)) == 1

"""The Storage SCP on a real socket: DCMTK and pynetdicom peers, statuses, access control, TLS."""

from __future__ import annotations

import errno
import ssl
from collections.abc import Sequence
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
    RLELossless,
    generate_uid,
)
from pynetdicom.dsutils import split_dataset

from bonect.daemon.archive import Archive
from bonect.daemon.receive import Receiver
from bonect.daemon.scp import AccessPolicy, StorageServer, server_tls_context
from bonect.dicom.header import read_header
from bonect.errors import ConfigError
from daemon.scp_support import (
    NOW,
    Pki,
    RecordingSink,
    StartNode,
    archived,
    associate,
    rejection,
)
from dicom_peers import echoscu, have, storescu
from series_factory import make_mr_series, write_series

#: storescu proposes only uncompressed syntaxes unless told (it would decompress, or fail)
STORESCU_PROPOSE = {
    DeflatedExplicitVRLittleEndian: ["-xd"],
    RLELossless: ["-xr"],
    JPEGLSLossless: ["-xt"],
    JPEG2000Lossless: ["-xv"],
}
needs_dcmtk = pytest.mark.skipif(not have("storescu"), reason="DCMTK is not installed")


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
    assert node.sink.aborted == []  # storescu releases


@pytest.mark.parametrize("end", ["abort", "drop the connection"])
def test_an_association_that_ends_without_a_release_is_reported_aborted(
    start_node: StartNode, end: str
) -> None:
    node = start_node()
    assoc = associate(node.server.port)
    assert assoc.send_c_store(make_mr_series((2, 8, 8))[0]).Status == 0x0000
    if end == "abort":
        assoc.abort()
    else:  # the modality was killed: TCP closes, no A-RELEASE, no A-ABORT
        assoc.dul.socket.socket.close()
        assoc.kill()
    assert node.sink.ended_event.wait(10)
    (association_id,) = {r.association_id for r in node.sink.records}
    assert node.sink.aborted == [association_id]


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


def test_a_disk_error_reading_the_data_set_gets_a700_and_a_damaged_one_c210(
    tmp_path: Path,
) -> None:
    """An OSError with an errno is the disk's (EIO): the sender may try again later (0xA700);
    pydicom's own OSError ("No tag to read at file position ...") is the data set's (0xC210)."""
    receiver = Receiver(archive=Archive.open(tmp_path), sink=RecordingSink())

    def receive(error: OSError) -> int:
        def unreadable() -> Dataset:
            raise error

        return receiver.receive(unreadable, lambda: b"", association_id="a").status

    assert receive(OSError(errno.EIO, "Input/output error")) == 0xA700
    assert receive(OSError("No tag to read at file position 0x84")) == 0xC210


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
    refused = associate(outside.server.port)  # closed at accept, before any A-ASSOCIATE
    assert not refused.is_established and not refused.is_rejected

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


def test_a_c_store_answering_our_c_move_is_accepted_only_from_a_source(
    start_node: StartNode,
) -> None:
    """A C-STORE whose Move Originator AE Title is ours answers a C-MOVE we asked for: it may
    only come from a [[sources]] host. Other C-STOREs are not concerned."""
    datasets = make_mr_series((3, 8, 8))

    def store_as_move_answer(port: int, ds: Dataset) -> int:
        assoc = associate(port, calling="PACS")
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(ds, originator_aet="BONECT", originator_id=7).Status)
        finally:
            assoc.release()

    elsewhere = start_node(policy=AccessPolicy.build(
        calling_ae_titles=None, networks=None, move_sources=["10.9.9.9"]
    ))  # fmt: skip
    assert store_as_move_answer(elsewhere.server.port, datasets[0]) == 0x0124
    assert archived(elsewhere) == []
    assert store(elsewhere.server.port, datasets[1:2]) == [0x0000]  # a plain C-STORE

    here = start_node(policy=AccessPolicy.build(
        calling_ae_titles=None, networks=None, move_sources=["127.0.0.1"]
    ))  # fmt: skip
    assert store_as_move_answer(here.server.port, datasets[2]) == 0x0000


@needs_dcmtk
def test_dcmtk_over_mutual_tls(start_node: StartNode, pki: Pki, tmp_path: Path) -> None:
    """DCMTK ``echoscu``/``storescu +tls`` with a client certificate the CA signed are served;
    without a certificate, or in plain TCP on the TLS port, they are refused."""
    node = start_node(ssl_context=server_tls_context(pki.server_cert, pki.server_key, pki.ca))
    port = node.server.port
    mutual = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]

    assert echoscu(port, extra_args=mutual).returncode == 0
    sources = series_files(tmp_path / "src", ExplicitVRLittleEndian, n=2)
    sent = storescu(port, sources, calling_ae="MODALITY", extra_args=mutual)
    assert sent.returncode == 0, sent.stderr
    assert len(archived(node)) == 2

    assert echoscu(port, extra_args=["+tla", "+cf", str(pki.ca)]).returncode != 0  # no cert
    assert echoscu(port).returncode != 0  # plain TCP on the TLS port
    assert len(archived(node)) == 2

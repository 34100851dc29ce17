"""Fuzz target: the C-STORE receive path (header read, UID checks, archive write, sink record).

One fuzz input is one instance arriving, in either of the two ways the daemon receives:

* **C-STORE** (the SCP): the data set bytes as a peer sent them over P-DATA, with the request's
  Affected SOP Instance and Class UIDs (the peer's claims) and a negotiated transfer syntax.
  The harness builds the file pynetdicom streams such a data set into (preamble, file meta
  from the request and the presentation context, then the bytes as received) in the storage
  folder's ``receiving/``, then calls :meth:`Receiver.receive` exactly as
  ``StorageHandlers.on_store`` does (:func:`~bonect.daemon.incoming.read_header_dataset`, the
  file adopted by the archive);
* **drop folder**: a whole file's bytes, read and archived as ``DropFolder`` does.

The input's layout (so that the fuzzer mutates the peer's claims too)::

    control byte | len | SOP Instance UID | len | SOP Class UID | data set or file bytes

``control % 8`` picks the transfer syntax from :data:`TRANSFER_SYNTAXES` (0-5, C-STORE) or the
drop folder (6, 7). :func:`encode_input` builds one.

The invariants, checked after every input (a violation raises :class:`InvariantViolation`):
``receive`` returns, with one of the documented statuses; 0xA700 never comes (the disk is
healthy, the sink never fails and the size limit is far away, so 0xA700 would mean an exception
caught by the boundary); no refusal is for a ``MemoryError`` or a ``RecursionError`` (the
header parse would have been unbounded); nothing is logged at ERROR; a success has recorded
the instance once, at ``Archive.path_for(header)``, with the very bytes received; and no file
exists anywhere in the work folder but archived instances at ``incoming/<uid>/<uid>/<uid>.dcm``.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import zlib
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom.dsutils import create_file_meta

from bonect.daemon.archive import Archive
from bonect.daemon.incoming import read_header_dataset
from bonect.daemon.receive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    SUCCESS,
    Receipt,
    Receiver,
)
from bonect.dicom.uids import InvalidUIDError, validate_uid
from daemon.scp_support import RecordingSink

TRANSFER_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
)
DROP_FOLDER = len(TRANSFER_SYNTAXES)  # control values 6 and 7
ALLOWED = frozenset({SUCCESS, DATASET_MISMATCH, CANNOT_UNDERSTAND})
"""The statuses a healthy node may answer (0xA700 only with a full disk or a failing catalog)."""

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


class InvariantViolation(AssertionError):
    """The receive path broke one of its promises for this input."""

    def association_ended(self, association_id: str, at: datetime, *, aborted: bool) -> None:
        pass


class _ErrorLog(logging.Handler):
    """Keeps bonect's records at ERROR and above: the boundary's ``logger.exception`` calls."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def encode_input(
    payload: bytes, *, control: int, sop_instance_uid: str = "", sop_class_uid: str = ""
) -> bytes:
    """One fuzz input: the control byte, the request's two UIDs, then the payload."""
    instance, klass = sop_instance_uid.encode("latin-1"), sop_class_uid.encode("latin-1")
    return bytes([control, len(instance)]) + instance + bytes([len(klass)]) + klass + payload


def encode_dataset(ds: Dataset, transfer_syntax: UID) -> bytes:
    """A data set as an SCU puts it in P-DATA under ``transfer_syntax`` (no preamble, no meta)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax.is_implicit_VR
    fp.is_little_endian = transfer_syntax.is_little_endian
    write_dataset(fp, ds)
    if not transfer_syntax.is_deflated:
        return fp.getvalue()
    deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # raw deflate, PS3.5 A.5
    return deflate.compress(fp.getvalue()) + deflate.flush()


class ReceiveTarget:
    """A :class:`Receiver` over a real :class:`Archive` in ``workdir``; call it with inputs."""

    def __init__(self, workdir: Path) -> None:
        # two folders deep: a "../" that escaped the archive would land inside the work folder
        self.workdir = workdir
        storage = workdir / "site" / "storage"
        self.receiving = storage / "receiving"
        self.receiving.mkdir(parents=True, exist_ok=True)
        self.archive = Archive.open(storage, fsync=False)
        self.sink = RecordingSink()
        self.receiver = Receiver(
            archive=self.archive, sink=self.sink, free_bytes=lambda: 10**12, clock=lambda: NOW
        )
        self.errors = _ErrorLog()
        logging.getLogger("bonect").addHandler(self.errors)
        self.count = 0

    def close(self) -> None:
        logging.getLogger("bonect").removeHandler(self.errors)

    def __call__(self, data: bytes) -> None:
        """Receive one fuzz input and check every invariant."""
        parsed = _parse(data)
        if parsed is None:
            return
        control, instance_uid, class_uid, payload = parsed
        self.count += 1
        self.sink.records.clear()
        self.errors.messages.clear()
        if control >= DROP_FOLDER:
            received = payload
            receipt = self.receiver.receive(
                lambda: dcmread(io.BytesIO(payload), stop_before_pixels=True),
                lambda: payload,
                association_id=f"import:{self.count}",
            )
        else:
            transfer_syntax = TRANSFER_SYNTAXES[control]
            path = self.receiving / f"{self.count}.dcm"
            received = _streamed_file(payload, instance_uid, class_uid, transfer_syntax)
            if received is None:
                return  # pynetdicom could not have written this file: not our input
            path.write_bytes(received)
            receipt = self.receiver.receive(
                lambda: read_header_dataset(path),
                lambda: path,
                association_id=f"assoc-{self.count}",
                size=len(received),
                transfer_syntax_uid=transfer_syntax,
                calling_ae="FUZZER",
                peer_address="127.0.0.1",
                request_sop_instance_uid=instance_uid,
                request_sop_class_uid=class_uid,
            )
            path.unlink(missing_ok=True)  # pynetdicom deletes it after the handler returned
        try:
            self._check(receipt, received)
        finally:
            for child in self.archive.incoming.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _check(self, receipt: Receipt, received: bytes) -> None:
        if receipt.status not in ALLOWED:
            raise InvariantViolation(f"status 0x{receipt.status:04X}: {receipt.reason}")
        if any(name in receipt.reason for name in ("MemoryError", "RecursionError")):
            raise InvariantViolation(f"refused for want of resources: {receipt.reason}")
        if self.errors.messages:
            raise InvariantViolation(f"logged at ERROR: {self.errors.messages}")
        stored = self._files()
        if receipt.status != SUCCESS:
            if stored or self.sink.records:
                raise InvariantViolation(f"refused (0x{receipt.status:04X}) but kept {stored}")
            return
        header, path = receipt.header, receipt.path
        if header is None or path is None:
            raise InvariantViolation("success without a header or a path")
        if path != self.archive.path_for(header) or stored != [path]:
            raise InvariantViolation(f"archived at {path}, files {stored}")
        if path.read_bytes() != received:
            raise InvariantViolation("the archived bytes are not the bytes received")
        if [r.path for r in self.sink.records] != [path]:
            raise InvariantViolation(f"recorded {self.sink.records}")

    def _files(self) -> list[Path]:
        """Every file in the work folder, each checked to be where an instance may be."""
        files = sorted(p for p in self.workdir.rglob("*") if not p.is_dir())
        for path in files:
            inside = path.is_relative_to(self.archive.incoming)
            parts = path.relative_to(self.archive.incoming).parts if inside else ()
            if len(parts) != 3 or not parts[2].endswith(".dcm"):
                raise InvariantViolation(f"a file outside the archive's layout: {path}")
            try:
                for part, keyword in zip(
                    (parts[0], parts[1], parts[2][:-4]),
                    ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
                    strict=True,
                ):
                    validate_uid(part, keyword)
            except InvalidUIDError as exc:
                raise InvariantViolation(f"an archive path from an invalid UID: {path}") from exc
        return files


def _parse(data: bytes) -> tuple[int, str, str, bytes] | None:
    """Split an input into control, the request's two UIDs and the payload (None: too short)."""
    if len(data) < 3:
        return None
    control = data[0] % 8
    at = 1
    uids = []
    for _ in range(2):
        if at >= len(data):
            return None
        n = data[at]
        uids.append(data[at + 1 : at + 1 + n].decode("latin-1"))
        at += 1 + n
    return control, uids[0], uids[1], data[at:]


def _streamed_file(
    payload: bytes, instance_uid: str, class_uid: str, transfer_syntax: UID
) -> bytes | None:
    """The file pynetdicom 3.0.4 streams a C-STORE data set into (``dimse_messages.py``)."""
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    try:
        meta = create_file_meta(
            sop_class_uid=UID(class_uid),
            sop_instance_uid=UID(instance_uid),
            transfer_syntax=transfer_syntax,
        )
        write_file_meta_info(out, meta)
    except Exception:  # pynetdicom would have failed on these UIDs before bonect saw them
        return None
    out.write(payload)
    return out.getvalue()


def seeds() -> list[bytes]:
    """Valid inputs to start from: a synthetic MR slice in each transfer syntax pydicom can
    write, two of pydicom's own test files, and two whole files for the drop folder."""
    from pydicom.data import get_testdata_file

    from series_factory import make_mr_series

    mr = make_mr_series(shape=(2, 8, 8))[0]
    datasets = [(mr, ts) for ts in TRANSFER_SYNTAXES[:4]]
    rle = copy.deepcopy(mr)
    rle.compress(RLELossless, encoding_plugin="pydicom")
    datasets.append((rle, RLELossless))
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = dcmread(str(get_testdata_file(name)))
        datasets.append((ds, ExplicitVRLittleEndian))
    inputs = [
        encode_input(
            encode_dataset(ds, ts),
            control=TRANSFER_SYNTAXES.index(ts),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )
        for ds, ts in datasets
    ]
    whole = io.BytesIO()
    mr.save_as(whole, enforce_file_format=True)
    inputs.append(encode_input(whole.getvalue(), control=DROP_FOLDER))
    small = Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()
    inputs.append(encode_input(small, control=DROP_FOLDER + 1))
    return inputs

"""The query/retrieve SCU: C-FIND a source PACS for a patient's CT, C-MOVE or C-GET its series.

:class:`QueryRetrieveClient` talks to one ``[[sources]]`` entry over the Study Root
information model, one short association per operation, sockets with ``TCP_NODELAY``:

* :meth:`~QueryRetrieveClient.find_studies`: study-level C-FIND by PatientID (and
  IssuerOfPatientID when known), a StudyDate range and ModalitiesInStudy; answers whose
  PatientID (or issuer) is not exactly ours are dropped, whatever the PACS matched;
* :meth:`~QueryRetrieveClient.find_series`: series-level C-FIND of one study;
* :meth:`~QueryRetrieveClient.move_series`: C-MOVE of one series to an AE title (ours: the
  instances arrive through the Storage SCP like any C-STORE);
* :meth:`~QueryRetrieveClient.get_series`: C-GET of one series; we are the storage SCP on the
  same association and each instance goes to the ``on_store`` handler given (with any other
  event handlers the caller binds, e.g. the daemon's data-set size guard); a C-GET cut short
  returns only once its connection is closed, so those handlers have run.

Every failure raises a :class:`QueryRetrieveError`: :class:`SourceUnavailable` (retryable: no
association, timeout, abort, a transient refusal or an out-of-resources status) or
:class:`QueryRetrieveRefused` (permanent: the source does not know our move destination, or the
query cannot be made safely, e.g. a PatientID with wildcard characters). (Over 400 lines: the
four DIMSE operations share the association and status handling.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from bonect.config import SourceConfig
from bonect.dicom.network import set_nodelay
from bonect.errors import BonectError, PermanentError, RetryableError

logger = logging.getLogger(__name__)

PENDING = frozenset({0xFF00, 0xFF01})
SUCCESS = 0x0000
WARNING = 0xB000  # sub-operations complete, some failed or with warnings
MOVE_DESTINATION_UNKNOWN = 0xA801
_OUT_OF_RESOURCES = frozenset({0xA700, 0xA701, 0xA702})
_CANCELLED = 0xFE00

#: The storage SOP classes a C-GET proposes to receive: the CT we retrieve.
CT_STORAGE_CLASSES = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
#: What a C-GET proposes for the CT it receives on its own association (SCP role).
GET_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
]
_WILDCARDS = frozenset("*?\\")

StoreHandler = Callable[[Event], int]
"""An EVT_C_STORE handler of a C-GET: archive the instance, return a DICOM status."""


class QueryRetrieveError(BonectError):
    """A query or retrieve against ``source`` failed; ``retryable`` says whether to try later."""

    retryable = False

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(f"source {source}: {message}")
        self.source = source


class SourceUnavailable(QueryRetrieveError, RetryableError):
    """No association, a timeout or abort, a transient refusal, out of resources: try later."""

    retryable = True


class QueryRetrieveRefused(QueryRetrieveError, PermanentError):
    """Trying again changes nothing (the config or the query is wrong)."""


class _NoResponse(SourceUnavailable):
    """The association was aborted (by either side), dropped, or the peer fell silent."""


def wake_waiting_request(assoc: Association) -> None:
    """Make a request waiting in pynetdicom's ``send_c_get()`` (or another ``send_c_*()``) for its
    next response see "no response" now: for an A-ABORT we send from an event handler.

    pynetdicom 3.0.4 wakes such a request (an empty message in the DIMSE queue) only for aborts
    it receives or connections it loses; for one sent from a handler the request waits out the
    whole DIMSE timeout. Sending the A-ABORT also restarts the association's reactor, which
    polls the same queue and would take the wake-up: it is paused first (as the ``send_*()``
    methods pause it), and the wake-up queued once it stays paused. Call it after the abort, on
    the connection's thread (in the handler). At worst the request waits as before."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.005)  # a reactor passing by sets the flag only for an instant
            if assoc._is_paused:
                break
        else:
            time.sleep(0.0005)
    assoc.dimse.msg_queue.put((None, None))


def _end_broken(assoc: Association) -> None:
    """End an association that will not be released (see :class:`_NoResponse`): an A-ABORT
    unless one was sent, then wait until the connection is closed (its ``EVT_CONN_CLOSE``
    handlers have run; at most the ACSE timeout when the peer does not close it)."""
    assoc.abort(block=True)  # returns at once when an A-ABORT was already sent
    assoc.kill()


@dataclass(frozen=True, slots=True)
class QueryTimeouts:
    """Seconds to wait: TCP connect, association negotiation, each response, idle network."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 120.0  # a C-MOVE's responses may take long between sub-operations
    network: float = 120.0


@dataclass(frozen=True, slots=True)
class StudyMatch:
    """A study-level C-FIND answer."""

    study_uid: str
    study_date: str  # YYYYMMDD, "" when the PACS gave none
    patient_id: str
    issuer_of_patient_id: str
    modalities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    """A series-level C-FIND answer; satisfies :class:`bonect.rules.SeriesFields`."""

    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    protocol_name: str
    instances: int | None  # NumberOfSeriesRelatedInstances, when the PACS gave it
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    manufacturer: str = ""


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """The final answer to a C-MOVE or C-GET of one series."""

    series_uid: str
    status: int
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        """Whether every sub-operation completed (success, no failed one)."""
        return self.status == SUCCESS and self.failed == 0


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split("\\") if v.strip())
    return tuple(str(v).strip() for v in value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def dicom_date(day: date) -> str:
    """A DICOM DA value."""
    return day.strftime("%Y%m%d")


class QueryRetrieveClient:
    """The SCU side of one source; each call opens and releases its own association."""

    def __init__(
        self,
        source: SourceConfig,
        *,
        calling_ae: str,
        timeouts: QueryTimeouts | None = None,
    ) -> None:
        self.source = source
        self.calling_ae = calling_ae
        self.timeouts = timeouts or QueryTimeouts()

    # -- associations -----------------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        t = self.timeouts
        ae.connection_timeout = t.connect
        ae.acse_timeout = t.acse
        ae.dimse_timeout = t.dimse
        ae.network_timeout = t.network
        return ae

    def _associate(
        self,
        ae: AE,
        *,
        ext_neg: list[Any] | None = None,
        handlers: list[Any] | None = None,
    ) -> Association:
        source = self.source
        assoc = ae.associate(
            source.host,
            source.port,
            ae_title=source.ae_title,
            ext_neg=ext_neg,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), *(handlers or [])],
        )
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            why = "association rejected"
            primitive = assoc.acceptor.primitive
            if primitive is not None and primitive.result is not None:
                kind = "permanently" if primitive.result == 0x01 else "transiently"
                why = (
                    f"association rejected {kind} (source 0x{primitive.result_source or 0:02X}, "
                    f"reason 0x{primitive.diagnostic or 0:02X}): check that it knows "
                    f"{self.calling_ae!r} and answers to {source.ae_title!r}"
                )
        elif assoc.is_aborted:
            why = "association aborted during negotiation"
        else:
            why = f"no association with {source.host}:{source.port} (down or unreachable)"
        raise SourceUnavailable(why, source=source.name)

    def _responses(
        self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str
    ) -> Iterator[tuple[int, Dataset | None, Dataset]]:
        for status, identifier in responses:
            code = status.get("Status") if status else None
            if code is None:
                raise _NoResponse(
                    f"{what}: no response (timeout or association aborted)",
                    source=self.source.name,
                )
            yield int(code), identifier, status

    def _failure(self, what: str, code: int) -> QueryRetrieveError:
        if code == MOVE_DESTINATION_UNKNOWN:
            move_ae = self.source.move_destination_ae or self.calling_ae
            return QueryRetrieveRefused(
                f"{what}: move destination {move_ae!r} unknown to the source (declare this "
                "node there as a modality)",
                source=self.source.name,
            )
        if code in _OUT_OF_RESOURCES or code == _CANCELLED:
            return SourceUnavailable(f"{what}: status 0x{code:04X}", source=self.source.name)
        return SourceUnavailable(f"{what}: failed with 0x{code:04X}", source=self.source.name)

    # -- C-FIND ------------------------------------------------------------------------------

    def _find(self, query: Dataset, what: str) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        answers: list[Dataset] = []
        try:
            responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            for code, identifier, _status in self._responses(responses, what):
                if code in PENDING:
                    if identifier is not None:
                        answers.append(identifier)
                elif code != SUCCESS:
                    raise self._failure(what, code)
        finally:
            if assoc.is_established:
                assoc.release()
        return answers

    def find_studies(
        self,
        patient_id: str,
        *,
        issuer_of_patient_id: str = "",
        date_from: date | None = None,
        date_to: date | None = None,
        modality: str = "CT",
    ) -> list[StudyMatch]:
        """The studies of exactly this patient, dated ``date_from``..``date_to`` (None: any
        date), with ``modality`` in them ("": any)."""
        name = self.source.name
        if not patient_id.strip():
            raise QueryRetrieveRefused("no PatientID to query by", source=name)
        if _WILDCARDS & set(patient_id + issuer_of_patient_id):
            raise QueryRetrieveRefused(
                "the PatientID contains a C-FIND wildcard: it could match another patient",
                source=name,
            )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
        query.IssuerOfPatientID = issuer_of_patient_id
        query.StudyInstanceUID = ""
        low = "" if date_from is None else dicom_date(date_from)
        high = "" if date_to is None else dicom_date(date_to)
        query.StudyDate = f"{low}-{high}" if low or high else ""
        query.ModalitiesInStudy = modality
        query.NumberOfStudyRelatedSeries = ""
        matches = []
        for answer in self._find(query, "study C-FIND"):
            found_id = _text(answer, "PatientID")
            found_issuer = _text(answer, "IssuerOfPatientID")
            study_uid = _text(answer, "StudyInstanceUID")
            if found_id != patient_id.strip() or not study_uid:
                logger.warning("source %s answered a study of another patient: dropped", name)
                continue
            if issuer_of_patient_id and found_issuer and found_issuer != issuer_of_patient_id:
                logger.warning("source %s answered a study of another issuer: dropped", name)
                continue
            matches.append(
                StudyMatch(
                    study_uid=study_uid,
                    study_date=_text(answer, "StudyDate"),
                    patient_id=found_id,
                    issuer_of_patient_id=found_issuer,
                    modalities=_values(answer, "ModalitiesInStudy"),
                )
            )
        return matches

    def find_studies_between(
        self, date_from: date, date_to: date, *, modality: str = "MR"
    ) -> list[StudyMatch]:
        """The studies of any patient dated ``date_from``..``date_to`` with ``modality`` in
        them (the back-fill's first question); answers without a PatientID are dropped."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = ""
        query.IssuerOfPatientID = ""
        query.StudyInstanceUID = ""
        query.StudyDate = f"{dicom_date(date_from)}-{dicom_date(date_to)}"
        query.ModalitiesInStudy = modality
        query.NumberOfStudyRelatedSeries = ""
        matches = []
        for answer in self._find(query, "study C-FIND"):
            study_uid, patient_id = _text(answer, "StudyInstanceUID"), _text(answer, "PatientID")
            if not study_uid or not patient_id:
                continue
            matches.append(
                StudyMatch(
                    study_uid=study_uid,
                    study_date=_text(answer, "StudyDate"),
                    patient_id=patient_id,
                    issuer_of_patient_id=_text(answer, "IssuerOfPatientID"),
                    modalities=_values(answer, "ModalitiesInStudy"),
                )
            )
        return matches

    def find_series(self, study_uid: str) -> list[SeriesMatch]:
        """Every series of one study, as the source describes them."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        query.SeriesDescription = ""
        query.ProtocolName = ""
        query.SeriesNumber = ""
        query.Manufacturer = ""
        query.NumberOfSeriesRelatedInstances = ""
        series = []
        for answer in self._find(query, "series C-FIND"):
            series_uid = _text(answer, "SeriesInstanceUID")
            if not series_uid or _text(answer, "StudyInstanceUID") not in ("", study_uid):
                continue
            series.append(
                SeriesMatch(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    modality=_text(answer, "Modality"),
                    series_description=_text(answer, "SeriesDescription"),
                    protocol_name=_text(answer, "ProtocolName"),
                    instances=_int(answer, "NumberOfSeriesRelatedInstances"),
                    manufacturer=_text(answer, "Manufacturer"),
                )
            )
        return series

    # -- C-MOVE / C-GET ----------------------------------------------------------------------

    @staticmethod
    def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        return identifier

    def _final(
        self, responses: Iterator[tuple[Dataset, Dataset | None]], series_uid: str, what: str
    ) -> RetrieveResult:
        final: tuple[int, Dataset] | None = None
        for code, _identifier, status in self._responses(responses, what):
            if code not in PENDING:
                final = (code, status)
        if final is None:
            raise SourceUnavailable(f"{what}: no final response", source=self.source.name)
        code, status = final
        if code not in (SUCCESS, WARNING):
            raise self._failure(what, code)
        return RetrieveResult(
            series_uid=series_uid,
            status=code,
            completed=_int(status, "NumberOfCompletedSuboperations") or 0,
            failed=_int(status, "NumberOfFailedSuboperations") or 0,
            warning=_int(status, "NumberOfWarningSuboperations") or 0,
        )

    def move_series(self, study_uid: str, series_uid: str, *, move_ae: str) -> RetrieveResult:
        """C-MOVE one series to ``move_ae``; the final status and sub-operation counts."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        try:
            responses = assoc.send_c_move(
                self._series_identifier(study_uid, series_uid),
                move_ae,
                StudyRootQueryRetrieveInformationModelMove,
            )
            return self._final(responses, series_uid, f"C-MOVE of {series_uid}")
        finally:
            if assoc.is_established:
                assoc.release()

    def get_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        on_store: StoreHandler,
        handlers: Sequence[EventHandlerType] = (),
    ) -> RetrieveResult:
        """C-GET one series; each instance is handed to ``on_store`` on this association, and
        ``handlers`` (pynetdicom ``(event, handler)`` pairs) are bound to it as well.

        A C-GET that ends without a final response (an A-ABORT from either side, the connection
        lost, the peer silent) is aborted and raises :class:`SourceUnavailable` once its
        connection is closed: its ``EVT_CONN_CLOSE`` handlers have run by then."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in CT_STORAGE_CLASSES:
            ae.add_requested_context(sop_class, GET_TRANSFER_SYNTAXES)
        roles = [build_role(sop_class, scp_role=True) for sop_class in CT_STORAGE_CLASSES]
        assoc = self._associate(
            ae, ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store), *handlers]
        )
        try:
            responses = assoc.send_c_get(
                self._series_identifier(study_uid, series_uid),
                StudyRootQueryRetrieveInformationModelGet,
            )
            return self._final(responses, series_uid, f"C-GET of {series_uid}")
        except _NoResponse:
            _end_broken(assoc)
            raise
        finally:
            if assoc.is_established:
                assoc.release()

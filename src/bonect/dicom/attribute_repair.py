"""What a derived object copies from its source header, checked against VR and VM and repaired.

Real exporters write invalid values (a Patient's Age without its unit, ISO 8601 dates, Decimal
Strings of 20 characters, lower-case Code Strings, over-long identifiers); copied verbatim, each
makes every instance of the derived series invalid. :func:`repair_copied_attributes` checks each
attribute of :data:`COPIED_ATTRIBUTES` (the Patient, Study, Series, Frame of Reference and
Equipment attributes bonect's writers copy) against its VR and VM (pydicom's dictionary and
validators, plus the rules those leave out) and, per attribute:

* keeps it when valid;
* repairs it when the repair is unambiguous: AS ``42`` -> ``042Y``; DS re-formatted to at most
  16 characters; DA ``2021-03-04`` -> ``20210304``; TM ``12:30:00`` -> ``123000``; IS ``3.0``
  -> ``3``; CS upper-cased (PatientSex ``male`` -> ``M``); leading/trailing spaces and empty
  trailing PN components removed; over-long descriptions truncated (:data:`TRUNCATABLE`: never
  names, identifiers or codes);
* otherwise leaves a Type 2 attribute empty and a Type 3 one out; a Type 1 attribute of an
  optional module takes its whole module with it; an invalid Study, Series or Frame of
  Reference UID (which cannot be changed) is a :class:`~bonect.errors.SeriesError`.

Text is kept in the source's character set when it is a single-byte or UTF-8 one that holds
every copied value; otherwise it is re-encoded as ISO_IR 192 (UTF-8), and undeclared UTF-8
bytes (read as Latin-1 by default) are recovered. The report names keywords, never values.

(Longer than most modules: a third of it is PS3.3's module tables, data kept beside its rules.)

(Over 400 lines: most of it is the table of copied attributes and one small repair per
VR; the rules are easier to audit side by side than spread over files.)
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.charset import python_encoding
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import STR_VR_REGEXES, PersonName, format_number_as_ds, validate_value

from bonect.errors import SeriesError

# Module -> (usage: M mandatory, U optional) and its copied attributes as keyword[:type]
# (Type 3 when not given), after the CT Image IOD's module tables in PS3.3.
_MODULE_TABLE: dict[str, tuple[str, str]] = {
    "Patient": (
        "M",
        """PatientName:2 PatientID:2 IssuerOfPatientID IssuerOfPatientIDQualifiersSequence
        TypeOfPatientID PatientBirthDate:2 PatientBirthTime PatientSex:2 OtherPatientIDsSequence
        OtherPatientNames EthnicGroup PatientComments PatientSpeciesDescription:1C
        PatientSpeciesCodeSequence:1C PatientBreedDescription:2C PatientBreedCodeSequence:2C
        BreedRegistrationSequence:2C ResponsiblePerson:2C ResponsiblePersonRole:1C
        ResponsibleOrganization:2C PatientIdentityRemoved DeidentificationMethod:1C
        DeidentificationMethodCodeSequence:1C QualityControlSubject ReferencedPatientSequence""",
    ),
    "Clinical Trial Subject": (
        "U",
        """ClinicalTrialSponsorName:1 ClinicalTrialProtocolID:1 ClinicalTrialProtocolName:2
        ClinicalTrialSiteID:2 ClinicalTrialSiteName:2 ClinicalTrialSubjectID:1C
        ClinicalTrialSubjectReadingID:1C ClinicalTrialProtocolEthicsCommitteeName:1C
        ClinicalTrialProtocolEthicsCommitteeApprovalNumber""",
    ),
    "General Study": (
        "M",
        """StudyInstanceUID:1 StudyDate:2 StudyTime:2 ReferringPhysicianName:2
        ReferringPhysicianIdentificationSequence ConsultingPhysicianName
        ConsultingPhysicianIdentificationSequence StudyID:2 AccessionNumber:2
        IssuerOfAccessionNumberSequence StudyDescription PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence NameOfPhysiciansReadingStudy
        PhysiciansReadingStudyIdentificationSequence RequestingServiceCodeSequence
        ReferencedStudySequence ProcedureCodeSequence ReasonForPerformedProcedureCodeSequence""",
    ),
    "Patient Study": (
        "U",
        """AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize
        PatientWeight PatientSizeCodeSequence MedicalAlerts Allergies SmokingStatus
        PregnancyStatus LastMenstrualDate PatientState AdmissionID IssuerOfAdmissionIDSequence
        ServiceEpisodeID ServiceEpisodeDescription IssuerOfServiceEpisodeIDSequence
        PatientSexNeutered:2C Occupation AdditionalPatientHistory""",
    ),
    "Clinical Trial Study": (
        "U",
        "ClinicalTrialTimePointID:2 ClinicalTrialTimePointDescription "
        "ConsentForClinicalTrialUseSequence",
    ),
    "General Series": (
        "M",
        "SeriesInstanceUID:1 SeriesNumber:2 PatientPosition:2C Laterality:2C BodyPartExamined",
    ),
    "Frame of Reference": ("M", "FrameOfReferenceUID:1 PositionReferenceIndicator:2"),
    "General Image": ("M", "ImageLaterality"),
    # Copied only into the optional Contributing Equipment item, which needs Manufacturer.
    "General Equipment": (
        "M",
        "Manufacturer InstitutionName ManufacturerModelName SoftwareVersions",
    ),
}

# What an optional module needs to be present at all: one attribute of each group, non-empty.
_MODULE_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Clinical Trial Subject": (
        ("ClinicalTrialSponsorName",),
        ("ClinicalTrialProtocolID",),
        ("ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID"),
    ),
}


def _keywords(text: str) -> list[str]:
    """The words of ``text``, each checked to be a DICOM keyword (after any ``:type``)."""
    words = text.split()
    unknown = [w for w in words if tag_for_keyword(w.partition(":")[0]) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {unknown}")
    return words


def _parse_table() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for module, (_, text) in _MODULE_TABLE.items():
        for entry in _keywords(text):
            keyword, _, kind = entry.partition(":")
            table[keyword] = (module, kind or "3")
    return table


COPIED_ATTRIBUTES: dict[str, tuple[str, str]] = _parse_table()
"""Keyword -> (module, Type) of every attribute a writer may copy from its source."""

TRUNCATABLE = frozenset(
    _keywords(
        """StudyDescription AdmittingDiagnosesDescription PatientComments MedicalAlerts Allergies
        AdditionalPatientHistory ServiceEpisodeDescription ClinicalTrialTimePointDescription
        PatientSpeciesDescription PatientBreedDescription PatientState Occupation"""
    )
)
"""Free-text attributes that may be cut to their VR's length: no name, identifier or code."""

_ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "Laterality": frozenset({"R", "L"}),
    "ImageLaterality": frozenset({"R", "L", "U", "B"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "QualityControlSubject": frozenset({"YES", "NO"}),
    "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
}
_SYNONYMS: dict[str, dict[str, str]] = {
    "PatientSex": {"MALE": "M", "FEMALE": "F", "OTHER": "O"},
}

_MAX_CHARS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "CS": 16, "AE": 16, "UI": 64}
_MAX_CHARS |= {"DS": 16, "IS": 12, "TM": 14, "DT": 26, "UC": 2**32 - 2, "UT": 2**32 - 2}
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # all but ESC (0x1B)
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # and TAB, LF, FF, CR
_AGE = re.compile(r"^(\d{1,3}) ?(Y|YEARS?|M|MONTHS?|W|WEEKS?|D|DAYS?)?$", re.IGNORECASE)
_ISO_DATE = re.compile(r"^(\d{4})[-./](\d{1,2})[-./](\d{1,2})$")
_ISO_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?$")
# Character sets kept when they hold every copied value: one code table, no code extensions.
_KEPT_CHARSETS = frozenset(t for t in python_encoding if t.startswith("ISO_IR") or t == "GB18030")
_UTF8 = "ISO_IR 192"


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair_copied_attributes` changed, by keyword (never by value)."""

    repaired: tuple[str, ...] = ()
    emptied: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    character_set: str | None = None  # the new SpecificCharacterSet, when re-encoded

    def __bool__(self) -> bool:
        return bool(self.repaired or self.emptied or self.dropped or self.character_set)

    def describe(self) -> str:
        """One line: ``repaired A, B; left empty C; left out D; re-encoded as ISO_IR 192``."""
        parts = [
            f"{label} {', '.join(keywords)}"
            for label, keywords in (
                ("repaired", self.repaired),
                ("left empty", self.emptied),
                ("left out", self.dropped),
            )
            if keywords
        ]
        if self.character_set:
            parts.append(f"re-encoded as {self.character_set}")
        return "; ".join(parts) or "nothing changed"


@dataclass(frozen=True)
class RepairedAttributes:
    """The repaired copy of a source header and the report of what changed."""

    dataset: Dataset
    report: RepairReport


class _Unrepairable(Exception):
    """A value that no unambiguous repair makes valid."""


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _vm_ok(count: int, vm: str) -> bool:
    if count == 0:
        return True
    low, _, high = vm.partition("-")
    if not high:
        return count == int(low)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def _check(vr: str, text: str, keyword: str) -> str:
    """``text`` if it is a valid value of this VR (and of this attribute), else raise."""
    if len(text) > _MAX_CHARS.get(vr, 2**32):
        raise _Unrepairable
    if vr in STR_VR_REGEXES and not re.match(STR_VR_REGEXES[vr], text):
        raise _Unrepairable
    if vr in ("SH", "LO", "UC") and _CONTROL.search(text):
        raise _Unrepairable
    if vr in ("ST", "LT", "UT") and _TEXT_CONTROL.search(text):
        raise _Unrepairable
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > 3 or _CONTROL.search(text):
            raise _Unrepairable
        if any(len(g) > 64 or len(g.split("^")) > 5 for g in groups):
            raise _Unrepairable
    if vr == "DA" and text:
        try:
            datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError as exc:
            raise _Unrepairable from exc
    if keyword in _ENUMERATED and text and text not in _ENUMERATED[keyword]:
        raise _Unrepairable
    return text


def _repair_text(vr: str, text: str, keyword: str) -> str:
    """The valid form of one string value, repaired if need be."""
    try:
        return _check(vr, text, keyword)
    except _Unrepairable:
        pass
    text = text.rstrip(" \x00") if vr in ("ST", "LT", "UT") else text.strip(" \x00")
    if vr == "CS":
        text = _SYNONYMS.get(keyword, {}).get(text.upper(), text.upper())
    elif vr == "AS" and (age := _AGE.match(text)):
        text = f"{int(age[1]):03d}{(age[2] or 'Y')[0].upper()}"
    elif vr == "DA" and (day := _ISO_DATE.match(text)):
        text = f"{day[1]}{int(day[2]):02d}{int(day[3]):02d}"
    elif vr == "TM" and (moment := _ISO_TIME.match(text)):
        text = f"{int(moment[1]):02d}{moment[2]}{moment[3] or ''}{(moment[4] or '')[:7]}"
    elif vr == "DS":
        try:
            number = float(text)
        except ValueError as exc:
            raise _Unrepairable from exc
        if number != number or number in (float("inf"), float("-inf")):
            raise _Unrepairable
        text = format_number_as_ds(number)
    elif vr == "IS":
        try:
            number = float(text)
        except ValueError as exc:
            raise _Unrepairable from exc
        if not number.is_integer() or abs(number) >= 2**31:
            raise _Unrepairable
        text = str(int(number))
    elif vr == "PN":
        text = "=".join(
            "^".join(c.strip() for c in g.split("^")).rstrip("^") for g in text.split("=")
        )
        text = text.rstrip("=")
    elif keyword in TRUNCATABLE and vr in _MAX_CHARS:
        text = text[: _MAX_CHARS[vr]].rstrip()
    return _check(vr, text, keyword)


def _repair_value(vr: str, value: Any, keyword: str) -> Any:
    if vr == "SQ":
        raise TypeError("sequences are repaired item by item")
    if vr in STR_VR_REGEXES or vr in _MAX_CHARS or vr in _TEXT_VRS or vr == "AS":
        text = str(value) if not isinstance(value, bytes) else value.decode("latin-1")
        return _repair_text(vr, text, keyword)
    try:
        validate_value(vr, value, RAISE)
    except ValueError as exc:
        raise _Unrepairable from exc
    return value


def _repair_element(elem: DataElement) -> tuple[DataElement, bool]:
    """A valid element for ``elem`` and whether it differs; raises if none is unambiguous."""
    keyword = elem.keyword or ""
    if elem.VR == "SQ":
        pairs = [_repair_item(item) for item in elem.value]
        changed = any(item_changed for _, item_changed in pairs)
        items = [item for item, _ in pairs]
        return (DataElement(elem.tag, "SQ", items) if changed else elem), changed
    values = _values(elem.value)
    try:
        vm = dictionary_VM(elem.tag)
    except KeyError:
        vm = "1-n"
    if not _vm_ok(len(values), vm):
        raise _Unrepairable
    repaired = [_repair_value(elem.VR, v, keyword) for v in values]
    if all(_same(a, b) for a, b in zip(repaired, values, strict=True)):
        return elem, False
    value: Any = repaired if len(repaired) > 1 else (repaired[0] if repaired else None)
    return DataElement(elem.tag, elem.VR, value), True


def _same(new: Any, old: Any) -> bool:
    if isinstance(new, str):
        return isinstance(old, (str, PersonName, float, int)) and new == str(old)
    return bool(new is old)


def _repair_item(item: Dataset) -> tuple[Dataset, bool]:
    """A sequence item with every element valid; one element beyond repair condemns the item."""
    changed = False
    repaired = Dataset()
    for elem in item:
        if elem.tag.is_private or not keyword_for_tag(elem.tag):
            repaired.add(elem)
            continue
        new, elem_changed = _repair_element(elem)
        repaired.add(new)
        changed |= elem_changed
    return repaired, changed


def _empty(keyword: str) -> DataElement:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"not a DICOM keyword: {keyword}")
    vr = dictionary_VR(tag)
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def _present(ds: Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", [])


def _texts(ds: Dataset, *, top: bool = True) -> Iterator[tuple[Dataset, DataElement]]:
    """The (owner, element) of every copied text element, in sequences too."""
    for elem in list(ds):
        if top and elem.keyword not in COPIED_ATTRIBUTES:
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _texts(item, top=False)
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            yield ds, elem


def _terms(ds: Dataset) -> list[str]:
    return [str(t).strip() for t in _values(ds.get("SpecificCharacterSet"))]


def _fix_character_set(source: Dataset, copied: Dataset) -> str | None:
    """Keep or replace SpecificCharacterSet of ``copied`` (in place); the new one, if replaced."""
    terms = _terms(source)
    texts = [" ".join(str(v) for v in _values(e.value)) for _, e in _texts(copied)]
    if all(t.isascii() for t in texts):
        if terms and not all(t in python_encoding for t in terms):
            del copied.SpecificCharacterSet
            return "the default repertoire"
        return None
    if len(terms) == 1 and terms[0] in _KEPT_CHARSETS and terms[0] not in ("", "ISO_IR 6"):
        try:
            for text in texts:
                text.encode(python_encoding[terms[0]])
            return None
        except UnicodeEncodeError:
            pass
    if not terms or terms == ["ISO_IR 6"]:  # undeclared: pydicom read UTF-8 bytes as Latin-1
        for owner, elem in _texts(copied):
            owner[elem.tag] = DataElement(elem.tag, elem.VR, _from_latin1(elem.value))
    copied.SpecificCharacterSet = _UTF8
    return _UTF8


def _from_latin1(value: Any) -> Any:
    def recover(text: str) -> str:
        try:
            return text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return text

    values = [recover(str(v)) for v in _values(value)]
    return values if len(values) > 1 else values[0]


def _check_distinct_uids(ds: Dataset) -> None:
    """One UID may not name two things: a derived series would inherit the clash."""
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    uids = {k: str(ds[k].value) for k in keywords if _present(ds, k)}
    for i, first in enumerate(keywords):
        for second in keywords[i + 1 :]:
            if first in uids and uids.get(second) == uids[first]:
                raise SeriesError(
                    f"the MR's {first} and {second} are the same UID: "
                    "cannot write a derived series that keeps both",
                    series_uid=uids.get("SeriesInstanceUID"),
                )


def repair_copied_attributes(source: Dataset) -> RepairedAttributes:
    """Check and repair the attributes of :data:`COPIED_ATTRIBUTES` in a copy of ``source``.

    ``source`` is not changed; attributes outside :data:`COPIED_ATTRIBUTES` are shared as
    they are. Missing Type 2 attributes of an optional module that is present are added empty.

    Raises
    ------
    SeriesError
        If the StudyInstanceUID, SeriesInstanceUID or FrameOfReferenceUID is not a valid UID,
        or two of them are the same UID (dciodvfy counts that as an error, and neither can be
        changed in a series that must join the source's study and frame of reference).
    """
    copied = Dataset()
    for elem in source:  # converts raw elements with the source's character set
        copied.add(elem)
    repaired: list[str] = []
    emptied: list[str] = []
    dropped: list[str] = []
    broken_modules: set[str] = set()
    for keyword, (module, kind) in COPIED_ATTRIBUTES.items():
        if keyword not in copied:
            continue
        try:
            elem, changed = _repair_element(copied[keyword])
        except _Unrepairable:
            if kind == "1" and _MODULE_TABLE[module][0] == "M":
                raise SeriesError(
                    f"the MR's {keyword} is not a valid UID: cannot write a derived series",
                    series_uid=str(source.get("SeriesInstanceUID", "")) or None,
                ) from None
            if kind in ("1", "1C") and _MODULE_TABLE[module][0] == "U":
                broken_modules.add(module)
            if kind.startswith("2"):
                copied[keyword] = _empty(keyword)
                emptied.append(keyword)
            else:
                del copied[keyword]
                dropped.append(keyword)
            continue
        if changed:
            copied[keyword] = elem
            repaired.append(keyword)
    for module, (usage, _) in _MODULE_TABLE.items():
        members = [k for k, (m, _) in COPIED_ATTRIBUTES.items() if m == module]
        present = [k for k in members if k in copied]
        if usage != "U" or not present:
            continue
        needs = _MODULE_NEEDS.get(module, ())
        if module in broken_modules or not all(
            any(_present(copied, k) for k in group) for group in needs
        ):
            for keyword in present:
                del copied[keyword]
            dropped.extend(k for k in present if k not in dropped)
            emptied[:] = [k for k in emptied if k not in present]
            repaired[:] = [k for k in repaired if k not in present]
            continue
        for keyword in members:  # the module is there: its Type 2 attributes must be too
            if COPIED_ATTRIBUTES[keyword][1] == "2" and keyword not in copied:
                copied[keyword] = _empty(keyword)
                emptied.append(keyword)
    _check_distinct_uids(copied)
    charset = _fix_character_set(source, copied)
    report = RepairReport(tuple(repaired), tuple(emptied), tuple(dropped), charset)
    return RepairedAttributes(copied, report)


def repaired_source_header(source: Dataset, *, series_uid: str, log: logging.Logger) -> Dataset:
    """:func:`repair_copied_attributes` of ``source``, with one WARNING on ``log`` if it changed.

    The warning names the series and the keywords repaired, left empty or left out; never a
    value (they include the patient's name and identifiers).
    """
    result = repair_copied_attributes(source)
    if result.report:
        log.warning(
            "MR series %s: invalid attributes in its header not copied as they were: %s",
            series_uid,
            result.report.describe(),
        )
    return result.dataset

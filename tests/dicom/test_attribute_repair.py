"""Tests of bonect.dicom.attribute_repair: what is copied from a source is valid, or absent."""

from __future__ import annotations

import logging

import pytest
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import bonect.converter.dicom_writer as dicom_writer
from bonect.dicom.attribute_repair import (
    COPIED_ATTRIBUTES,
    RepairReport,
    repair_copied_attributes,
    repaired_source_header,
)
from bonect.dicom.modules import PATIENT_STUDY_KEYWORDS, TYPE2_PATIENT_STUDY
from bonect.errors import SeriesError

# What the sCT writer copies besides the Patient and Study modules (contributing equipment).
EQUIPMENT = ("Manufacturer", "InstitutionName", "ManufacturerModelName", "SoftwareVersions")


def unchecked(ds: Dataset, keyword: str, value: object) -> None:
    """Set a possibly invalid value, as a reader in pydicom's default (WARN) mode keeps it."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=pydicom_config.IGNORE)


def header(**values: object) -> Dataset:
    """A valid minimal source header, with ``values`` set unchecked."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    for keyword, value in values.items():
        unchecked(ds, keyword, value)
    return ds


def test_every_attribute_the_writer_copies_has_a_type() -> None:
    copied = (
        set(PATIENT_STUDY_KEYWORDS)
        | set(dicom_writer._SOURCE_SERIES_KEYWORDS)
        | set(EQUIPMENT)
        | {"StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SeriesNumber"}
    )
    assert copied <= set(COPIED_ATTRIBUTES)
    assert all(COPIED_ATTRIBUTES[k][1] == "2" for k in TYPE2_PATIENT_STUDY)


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("PatientAge", "42", "042Y"),
        ("PatientAge", "7 months", "007M"),
        ("PatientAge", "3w", "003W"),
        ("PatientWeight", "72.123456789012345678", "72.1234567890124"),
        ("PatientSize", "0.000000000000000001", "1e-18"),
        ("StudyDate", "2021-03-04", "20210304"),
        ("StudyDate", "2021.3.4", "20210304"),
        ("StudyTime", "12:30:00", "123000"),
        ("StudyTime", "9:05", "0905"),
        ("StudyTime", "12:30:00.1234567", "123000.123456"),
        ("SeriesNumber", "3.0", "3"),
        ("PatientSex", "f", "F"),
        ("PatientSex", "Male", "M"),
        ("PatientPosition", "hfs", "HFS"),
        ("PatientName", "Doe^Jane^^^^^", "Doe^Jane"),  # six components, the last four empty
        ("StudyDescription", "d" * 70, "d" * 64),
    ],
)
def test_unambiguous_repairs(keyword: str, value: str, expected: str) -> None:
    repaired = repair_copied_attributes(header(**{keyword: value}))
    assert str(repaired.dataset[keyword].value) == expected
    assert repaired.report.repaired == (keyword,)
    assert value not in repaired.report.describe()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("AccessionNumber", "ACC-2021-0304-7T-0042"),  # SH identifier: never cut
        ("PatientID", "P" * 65),
        ("PatientSex", "unknown"),
        ("StudyDate", "2021-02-30"),
        ("StudyTime", "25:00"),
        ("ReferringPhysicianName", "Dr " + "A" * 70 + "^B"),  # a name is never cut
        ("PatientName", "a^b^c^d^e^f"),  # six components
        ("PositionReferenceIndicator", "line\nbreak"),
        ("Laterality", "X"),  # Type 2C
    ],
)
def test_type2_attributes_beyond_repair_are_left_empty(keyword: str, value: str) -> None:
    repaired = repair_copied_attributes(header(**{keyword: value}))
    assert keyword in repaired.dataset
    assert repaired.dataset[keyword].value in (None, "")
    assert repaired.report.emptied == (keyword,)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("BodyPartExamined", "Head/Neck"),
        ("PatientAge", "forty-two"),
        ("PatientWeight", "NaN"),
        ("EthnicGroup", "line one\nline two"),
        ("InstitutionName", "I" * 65),
        ("PatientBirthTime", "noon"),
    ],
)
def test_type3_attributes_beyond_repair_are_left_out(keyword: str, value: str) -> None:
    repaired = repair_copied_attributes(header(**{keyword: value}))
    assert keyword not in repaired.dataset
    assert repaired.report.dropped == (keyword,)


def test_a_wrong_value_multiplicity_is_not_guessed() -> None:
    repaired = repair_copied_attributes(header(PatientSex=["M", "F"]))
    assert repaired.dataset.PatientSex in (None, "")
    assert repaired.report.emptied == ("PatientSex",)


def test_valid_headers_are_left_as_they_are_and_the_source_is_never_changed() -> None:
    source = header(PatientAge="042Y", StudyDate="20240102", PatientWeight="70.5")
    repaired = repair_copied_attributes(source)
    assert not repaired.report
    assert repaired.report.describe() == "nothing changed"
    for elem in source:
        assert repaired.dataset[elem.tag] is elem
    bad = header(PatientAge="42")
    repair_copied_attributes(bad)
    assert bad.PatientAge == "42"


def test_attributes_not_copied_are_not_touched() -> None:
    source = header(OperatorsName="a" * 80, ImagePositionPatient=["1.123456789012345678"] * 3)
    repaired = repair_copied_attributes(source)
    assert not repaired.report
    assert repaired.dataset.OperatorsName == "a" * 80


def test_an_optional_module_without_its_type1_attributes_goes_as_a_whole() -> None:
    source = header(
        ClinicalTrialSponsorName="S" * 70,  # Type 1, beyond repair
        ClinicalTrialProtocolID="P1",
        ClinicalTrialSubjectID="7",
        ClinicalTrialSiteName="Site\x07",
    )
    report = repair_copied_attributes(source).report
    assert set(report.dropped) == {
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSiteName",
    }
    assert report.emptied == ()


def test_a_complete_optional_module_gets_its_missing_type2_attributes_empty() -> None:
    source = header(
        ClinicalTrialSponsorName="Sponsor",
        ClinicalTrialProtocolID="P1",
        ClinicalTrialSubjectID="7",
    )
    repaired = repair_copied_attributes(source)
    for keyword in ("ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName"):
        assert repaired.dataset[keyword].value in (None, "")
    assert set(repaired.report.emptied) == {
        "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
    }


def test_sequences_are_repaired_inside_or_go_as_a_whole() -> None:
    item = Dataset()
    unchecked(item, "PatientID", "OTHER1")
    unchecked(item, "TypeOfPatientID", "text")  # CS: upper-cased
    source = header()
    source.OtherPatientIDsSequence = [item]
    repaired = repair_copied_attributes(source)
    assert repaired.dataset.OtherPatientIDsSequence[0].TypeOfPatientID == "TEXT"
    assert source.OtherPatientIDsSequence[0].TypeOfPatientID == "text"
    assert repaired.report.repaired == ("OtherPatientIDsSequence",)

    unchecked(item, "PatientID", "X" * 65)
    repaired = repair_copied_attributes(source)
    assert "OtherPatientIDsSequence" not in repaired.dataset
    assert repaired.report.dropped == ("OtherPatientIDsSequence",)


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]
)
def test_an_invalid_uid_that_must_be_kept_is_a_series_error(keyword: str) -> None:
    with pytest.raises(SeriesError, match=keyword):
        repair_copied_attributes(header(**{keyword: "1.2.03.4"}))


def test_a_study_uid_reused_as_frame_of_reference_uid_is_a_series_error() -> None:
    source = header()
    source.FrameOfReferenceUID = source.StudyInstanceUID
    with pytest.raises(SeriesError, match="StudyInstanceUID and FrameOfReferenceUID") as info:
        repair_copied_attributes(source)
    assert info.value.series_uid == source.SeriesInstanceUID


def test_latin1_names_keep_their_character_set() -> None:
    repaired = repair_copied_attributes(header(PatientName="Müller^Jürgen"))
    assert repaired.dataset.SpecificCharacterSet == "ISO_IR 100"
    assert repaired.report.character_set is None


def test_names_the_character_set_cannot_hold_are_re_encoded_as_utf8() -> None:
    repaired = repair_copied_attributes(header(PatientName="Łukasiewicz^Zoë"))
    assert repaired.dataset.SpecificCharacterSet == "ISO_IR 192"
    assert str(repaired.dataset.PatientName) == "Łukasiewicz^Zoë"
    assert repaired.report.character_set == "ISO_IR 192"
    assert "re-encoded as ISO_IR 192" in repaired.report.describe()


def test_undeclared_utf8_read_as_latin1_is_recovered() -> None:
    source = header(PatientName="ZoÃ«^Ã\x98ye")  # the UTF-8 bytes of "Zoë^Øye" read as Latin-1
    del source.SpecificCharacterSet
    repaired = repair_copied_attributes(source)
    assert repaired.dataset.SpecificCharacterSet == "ISO_IR 192"
    assert str(repaired.dataset.PatientName) == "Zoë^Øye"


def test_an_unknown_character_set_term_goes_when_the_text_is_ascii() -> None:
    source = header()
    unchecked(source, "SpecificCharacterSet", "LATIN1")
    repaired = repair_copied_attributes(source)
    assert "SpecificCharacterSet" not in repaired.dataset


def test_one_warning_names_the_keywords_and_never_the_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = header(
        PatientAge="42", AccessionNumber="ACC-2021-0304-7T-0042", BodyPartExamined="x/y"
    )
    log = logging.getLogger("test.attribute_repair")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        repaired_source_header(source, series_uid="1.2.3", log=log)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "PatientAge" in message and "AccessionNumber" in message
    assert "BodyPartExamined" in message and "1.2.3" in message
    assert "ACC-2021" not in message and "x/y" not in message and "Doe" not in message


def test_nothing_is_logged_for_a_valid_header(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        repaired_source_header(header(), series_uid="1.2.3", log=logging.getLogger("t"))
    assert caplog.records == []


def test_the_report_is_falsy_only_when_nothing_changed() -> None:
    assert not RepairReport()
    assert RepairReport(character_set="ISO_IR 192")
    assert RepairReport(dropped=("EthnicGroup",)).describe() == "left out EthnicGroup"

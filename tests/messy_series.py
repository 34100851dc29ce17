"""A "messy scanner" MR series for the tests: what real exporters write, invalid values included.

Modelled on a 7 T T1w series exported by a NIfTI-to-DICOM tool: an oblique stack, implicit VR
little endian, Decimal Strings longer than 16 characters (geometry and patient size/weight), a
Patient's Age without its unit, ISO 8601 dates and times, Code Strings in lower case, over-long
names and identifiers, non-ASCII names in ISO_IR 100 or ISO_IR 192 (UTF-8), private tags, and
some Type 2 attributes missing. :func:`make_messy_series` builds the classic single-frame series
and :func:`make_messy_enhanced_mr` the Enhanced MR variant, both from :mod:`series_factory`.

The invalid values are set without pydicom's validation (the test suite runs in strict mode), so
reading the files back needs ``reading_validation_mode`` WARN, pydicom's default: the mode bonect
runs with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from series_factory import Shape, Spacing, make_enhanced_mr, make_mr_series

#: An oblique plane (7° and 12° off sagittal), as a 3D bone MR is often planned.
OBLIQUE = (
    0.12186934340514748,
    0.992546151641322,
    0.0,
    -0.20636194860240745,
    0.025338061246214363,
    -0.9781476007338057,
)
SHAPE: Shape = (10, 24, 20)
SPACING: Spacing = (1.2, 0.9, 0.9)

#: The names written with each character set: both need the non-ASCII repertoire.
NAMES = {
    "ISO_IR 100": "Müller-Lüdenscheidt^Jürgen",
    "ISO_IR 192": "Łukasiewicz^Zoë=山田^太郎",
}
INSTITUTIONS = {
    "ISO_IR 100": "Universitätsklinikum Ærø",
    "ISO_IR 192": "Szpital Uniwersytecki w Łodzi",
}


@dataclass(frozen=True)
class BadValue:
    """One invalid source value and what bonect must write instead.

    ``expected`` is the repaired value, ``""`` for a Type 2 attribute left empty, and ``None``
    for a Type 3 attribute left out.
    """

    keyword: str
    value: str
    expected: str | None


#: Every invalid value of the messy series, with what must be written in the sCT.
BAD_VALUES: tuple[BadValue, ...] = (
    BadValue("PatientAge", "42", "042Y"),  # AS without its unit: years
    BadValue("PatientWeight", "72.123456789012345678", "72.1234567890124"),  # DS > 16
    BadValue("PatientSize", "1.779999999999999982236431605997495353221893310546875", "1.78"),
    BadValue("StudyDate", "2021-03-04", "20210304"),  # ISO 8601 date
    BadValue("PatientBirthDate", "1979.05.06", "19790506"),  # ACR-NEMA date
    BadValue("StudyTime", "12:30:00", "123000"),  # ISO 8601 time
    BadValue("PatientBirthTime", "07:05:09.250", "070509.250"),
    BadValue("PatientSex", "m", "M"),  # CS in lower case
    BadValue("PatientPosition", "hfs", "HFS"),
    BadValue("BodyPartExamined", "Head/Neck", None),  # not a Code String: no safe repair
    BadValue("AccessionNumber", "ACC-2021-0304-7T-0042", ""),  # SH > 16: an identifier
    BadValue("StudyDescription", "7T^Research " + "x" * 70, ("7T^Research " + "x" * 70)[:64]),
    BadValue("ReferringPhysicianName", "Dr " + "A" * 70 + "^B", ""),  # PN group > 64
    BadValue("EthnicGroup", "line one\nline two", None),  # control character in SH
    BadValue("ClinicalTrialSiteName", "Site\x07A", None),  # Type 2, but its module goes:
    BadValue("ClinicalTrialSponsorName", "Sponsor " + "s" * 70, None),  # Type 1, no safe repair
)

#: Valid attributes of the Clinical Trial Subject module, left out with the module.
CLINICAL_TRIAL_SUBJECT = {"ClinicalTrialProtocolID": "P-7T-001", "ClinicalTrialSiteID": "7T"}

#: Type 2 attributes the exporter leaves out (bonect writes them empty).
MISSING_TYPE2 = ("ReferringPhysicianName", "StudyID", "PositionReferenceIndicator")

PRIVATE_CREATOR = "NIFTI2DICOM TOOL"


def _set_unchecked(ds: Dataset, keyword: str, value: str) -> None:
    """Set ``keyword`` to ``value`` without pydicom's validation (the value may be invalid)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"not a DICOM keyword: {keyword}")
    vr = dictionary_VR(tag)
    ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


def _long_ds(values: Sequence[object]) -> list[str]:
    """Decimal Strings of 17 significant digits (up to 24 characters), as NIfTI tools write."""
    return [f"{float(str(v)):.17g}" for v in values]


def _mess_up(ds: Dataset, charset: str) -> None:
    ds.SpecificCharacterSet = charset
    _set_unchecked(ds, "PatientName", NAMES[charset])
    _set_unchecked(ds, "InstitutionName", INSTITUTIONS[charset])
    ds.Manufacturer = "Vendor"
    ds.ManufacturerModelName = "7T research system"
    ds.MagneticFieldStrength = "7"
    ds.SeriesDescription = "T1w MP2RAGE (NIfTI export)"
    for bad in BAD_VALUES:
        _set_unchecked(ds, bad.keyword, bad.value)
    for keyword, value in CLINICAL_TRIAL_SUBJECT.items():
        _set_unchecked(ds, keyword, value)
    for keyword in MISSING_TYPE2:
        if keyword in ds and keyword not in {b.keyword for b in BAD_VALUES}:
            del ds[keyword]
    block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", "nifti header follows")
    block.add_new(0x11, "OB", b"\x5c\x01\x00\x00" * 4)
    block.add_new(0x12, "DS", "0.123456789012345678")


def _long_geometry(ds: Dataset) -> None:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword in ds:
            tag = tag_for_keyword(keyword)
            if tag is not None:
                ds[tag] = DataElement(
                    tag, "DS", _long_ds(ds[tag].value), validation_mode=pydicom_config.IGNORE
                )
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        if keyword in ds:
            _set_unchecked(ds, keyword, _long_ds([ds[keyword].value])[0])


def make_messy_series(
    charset: str = "ISO_IR 100",
    *,
    shape: Shape = SHAPE,
    spacing: Spacing = SPACING,
    seed: int = 0,
) -> list[Dataset]:
    """The messy scanner's classic single-frame series, implicit VR little endian, oblique.

    ``charset`` is ``"ISO_IR 100"`` (Latin-1) or ``"ISO_IR 192"`` (UTF-8); the patient and
    institution names need it (see :data:`NAMES`).
    """
    datasets = make_mr_series(
        shape,
        spacing,
        OBLIQUE,
        seed=seed,
        series_description="T1w",
        transfer_syntax=ImplicitVRLittleEndian,
    )
    for ds in datasets:
        _mess_up(ds, charset)
        _long_geometry(ds)
    return datasets


def make_messy_enhanced_mr(
    charset: str = "ISO_IR 192",
    *,
    shape: Shape = SHAPE,
    spacing: Spacing = SPACING,
    seed: int = 0,
) -> Dataset:
    """The Enhanced MR variant: one multi-frame instance with the same messy header."""
    ds = make_enhanced_mr(
        shape,
        spacing,
        OBLIQUE,
        seed=seed,
        series_description="T1w",
        transfer_syntax=ImplicitVRLittleEndian,
    )
    _mess_up(ds, charset)
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds[group].value:
            for sequence in ("PlaneOrientationSequence", "PlanePositionSequence"):
                if sequence in item:
                    _long_geometry(item[sequence].value[0])
    return ds

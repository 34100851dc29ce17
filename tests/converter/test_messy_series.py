"""The sCT written from messy real-world headers passes dciodvfy: nothing invalid is copied.

Inputs are the "messy scanner" series of :mod:`messy_series` and pydicom's own test files. They
are read as bonect reads them, in pydicom's default reading mode (WARN: invalid values are
kept, as a real node receives them); writing stays strict, as everywhere in the suite.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_files
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bonect.converter.dicom_reader import read_mr_datasets, read_mr_files, read_mr_folder
from bonect.converter.file_conversion import convert_input, convert_path
from bonect.converter.pipeline import Classical
from bonect.converter.series import ImageSeries
from bonect.errors import SeriesError
from dicom_validation import dciodvfy_errors
from messy_series import (
    BAD_VALUES,
    CLINICAL_TRIAL_SUBJECT,
    INSTITUTIONS,
    MISSING_TYPE2,
    NAMES,
    SHAPE,
    BadValue,
    make_messy_enhanced_mr,
    make_messy_series,
)
from series_factory import write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on invalid values

VARIANTS: dict[str, Callable[[], list[Dataset]]] = {
    "classic ISO_IR 100": lambda: make_messy_series("ISO_IR 100"),
    "classic ISO_IR 192": lambda: make_messy_series("ISO_IR 192"),
    "enhanced ISO_IR 192": lambda: [make_messy_enhanced_mr("ISO_IR 192")],
}
_WARNING = re.compile(
    r"^MR series ([0-9.]+): invalid attributes in its header not copied as they were: (.+)$"
)
_LABELS = ("repaired ", "left empty ", "left out ", "re-encoded as ")


@contextmanager
def as_bonect_reads() -> Iterator[None]:
    """pydicom's default reading mode (invalid values kept, with a warning); strict writing."""
    reading = pydicom_config.settings.reading_validation_mode
    writing = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = reading
        pydicom_config.settings.writing_validation_mode = writing


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass(frozen=True)
class Converted:
    """A messy series, the sCT files written from it and bonect's log records meanwhile."""

    source: list[Dataset]
    paths: list[Path]
    records: list[logging.LogRecord]

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


def convert_messy(datasets: list[Dataset], folder: Path) -> Converted:
    handler = _Records()
    logger = logging.getLogger("bonect")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with as_bonect_reads():
            write_series(datasets, folder / "mr")
            result = convert_path(folder / "mr", folder / "sct", Classical())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Converted(datasets, result.paths, handler.records)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Converted:
    return convert_messy(VARIANTS[request.param](), tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="module")
def latin1(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return convert_messy(VARIANTS["classic ISO_IR 100"](), tmp_path_factory.mktemp("latin1"))


def named_keywords(message: str) -> list[str]:
    """The keywords a repair warning names; fails if it holds anything but keywords and a UID."""
    match = _WARNING.match(message)
    assert match, message
    keywords = []
    for part in match[2].split("; "):
        label = next((p for p in _LABELS if part.startswith(p)), None)
        assert label is not None, part
        if label == "re-encoded as ":
            assert part[len(label) :] == "ISO_IR 192", part
            continue
        for keyword in part[len(label) :].split(", "):
            assert tag_for_keyword(keyword) is not None, keyword
            keywords.append(keyword)
    return keywords


def test_every_sct_file_of_a_messy_series_passes_dciodvfy(converted: Converted) -> None:
    assert len(converted.paths) == SHAPE[0]
    for path in converted.paths:
        assert dciodvfy_errors(path) == [], path


def test_non_ascii_names_are_written_in_the_source_character_set(converted: Converted) -> None:
    charset = str(converted.source[0].SpecificCharacterSet)
    for path in converted.paths:
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == charset
        assert str(ds.PatientName) == NAMES[charset]
        assert ds.ContributingEquipmentSequence[0].InstitutionName == INSTITUTIONS[charset]


def test_private_tags_are_not_copied_and_missing_type2_are_written_empty(
    converted: Converted,
) -> None:
    ds = pydicom.dcmread(converted.paths[0])
    assert not [elem for elem in ds if elem.tag.is_private]
    for keyword in MISSING_TYPE2:
        assert keyword in ds and ds[keyword].value in (None, ""), keyword
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        assert all(len(str(v)) <= 16 for v in ds[keyword].value), keyword


def test_one_warning_per_series_with_keywords_only(converted: Converted) -> None:
    (message,) = [m for m in converted.warnings() if _WARNING.match(m)]
    assert set(named_keywords(message)) >= {b.keyword for b in BAD_VALUES}
    header = converted.source[0]
    for record in converted.records:
        if record.levelno >= logging.INFO:
            assert str(header.PatientID) not in record.getMessage()
            assert str(header.PatientName).split("^")[0] not in record.getMessage()


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda b: b.keyword)
def test_each_bad_value_is_repaired_or_left_out_and_named_without_its_value(
    latin1: Converted, bad: BadValue
) -> None:
    for path in latin1.paths:
        ds = pydicom.dcmread(path)
        if bad.expected is None:
            assert bad.keyword not in ds
        else:
            assert bad.keyword in ds
            assert str(ds[bad.keyword].value or "") == bad.expected
    (message,) = [m for m in latin1.warnings() if _WARNING.match(m)]
    assert bad.keyword in named_keywords(message)  # and nothing but keywords and the UID
    assert len(bad.value) < 4 or bad.value not in message


def test_a_clinical_trial_module_beyond_repair_goes_as_a_whole(latin1: Converted) -> None:
    ds = pydicom.dcmread(latin1.paths[0])
    for keyword in CLINICAL_TRIAL_SUBJECT:
        assert keyword not in ds


# pydicom's own test files (pydicom-data, the large set, is not installed).
_TEST_FILES = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())
_ROOT = Path(pydicom.data.__file__).parent / "test_files"
_TEST_FOLDERS = sorted({p.parent for p in _TEST_FILES if p.parent != _ROOT})


def _name(path: Path) -> str:
    return str(path.relative_to(_ROOT))


def _assert_one_line(error: SeriesError) -> None:
    message = str(error)
    assert message and "\n" not in message, message


@pytest.mark.parametrize("source", [*_TEST_FILES, *_TEST_FOLDERS], ids=_name)
def test_pydicom_test_files_are_converted_or_refused_in_one_line(
    source: Path, tmp_path: Path
) -> None:
    with as_bonect_reads():
        try:
            series = read_mr_folder(source) if source.is_dir() else read_mr_files([source])
        except SeriesError as error:
            _assert_one_line(error)
            return
        result = convert_input(series.volume, series, tmp_path, Classical(), source=source)
    for path in result.paths:
        assert dciodvfy_errors(path) == [], path


def _stack(path: Path, n_slices: int) -> list[Dataset]:
    """``path`` read ``n_slices`` times as the slices of one series, 2 mm apart along its normal."""
    datasets = []
    for k in range(n_slices):
        ds = pydicom.dcmread(path)
        row = [float(v) for v in ds.ImageOrientationPatient[:3]]
        column = [float(v) for v in ds.ImageOrientationPatient[3:]]
        normal = (
            row[1] * column[2] - row[2] * column[1],
            row[2] * column[0] - row[0] * column[2],
            row[0] * column[1] - row[1] * column[0],
        )
        position = [
            float(v) + 2.0 * k * n for v, n in zip(ds.ImagePositionPatient, normal, strict=True)
        ]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(k)])
        ds.InstanceNumber = k + 1
        datasets.append(ds)
    return datasets


def _is_mr_plane(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM at all: covered by the test above
        return False
    return ds.get("Modality") == "MR" and "ImageOrientationPatient" in ds


_MR_PLANES = [p for p in _TEST_FILES if _is_mr_plane(p)]


@pytest.mark.parametrize("path", _MR_PLANES, ids=_name)
def test_pydicom_mr_images_stacked_into_a_series_give_valid_sct(path: Path, tmp_path: Path) -> None:
    """Each real MR header (codecs, byte orders, odd values) behind an 8-slice series."""
    with as_bonect_reads():
        try:
            series: ImageSeries = read_mr_datasets(_stack(path, 8))
        except SeriesError as error:  # MR_truncated.dcm
            _assert_one_line(error)
            assert "truncated" in str(error)
            return
        header = series.header
        if header.StudyInstanceUID == header.get("FrameOfReferenceUID"):
            with pytest.raises(SeriesError, match="same UID") as info:
                convert_input(series.volume, series, tmp_path, Classical(), source=path)
            _assert_one_line(info.value)
            return
        result = convert_input(series.volume, series, tmp_path, Classical(), source=path)
    assert len(result.paths) == 8
    for sct in result.paths:
        assert dciodvfy_errors(sct) == [], sct

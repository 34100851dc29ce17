"""The one instance header: fields read from synthetic datasets, UIDs validated, errors named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

from bonect.dicom.header import HeaderError, InstanceHeader, patient_key, read_header
from bonect.dicom.uids import InvalidUIDError, validate_uid
from bonect.errors import BonectError
from series_factory import make_enhanced_mr, make_mr_series, write_series


def test_single_frame_mr() -> None:
    datasets = make_mr_series((4, 8, 8), (2.0, 1.0, 1.0), "sagittal", patient_id="P-7")
    h = read_header(datasets[1])
    ds = datasets[1]
    assert h.sop_instance_uid == ds.SOPInstanceUID and h.series_uid == ds.SeriesInstanceUID
    assert h.study_uid == ds.StudyInstanceUID and h.sop_class_uid == ds.SOPClassUID
    assert h.transfer_syntax_uid == ExplicitVRLittleEndian  # from the file meta
    assert h.modality == "MR"
    assert h.series_description == "ZTE bone (synthetic)"
    assert h.instance_number == ds.InstanceNumber
    assert h.image_position == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    assert h.image_orientation == pytest.approx((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    assert h.number_of_frames is None
    assert h.patient_key == patient_key("P-7")
    assert "P-7" not in repr(h)


def test_header_from_a_file_header_without_pixels(tmp_path: Path) -> None:
    ds = make_mr_series((1, 4, 4))[0]
    (path,) = write_series([ds], tmp_path)

    h = read_header(dcmread(path, stop_before_pixels=True))

    assert (h.study_uid, h.series_uid, h.sop_instance_uid, h.sop_class_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        MRImageStorage,
    )
    assert h.transfer_syntax_uid == ExplicitVRLittleEndian and h.modality == "MR"


def test_the_given_transfer_syntax_wins_over_the_file_meta() -> None:
    ds = make_mr_series((1, 4, 4))[0]  # file meta: explicit VR little endian
    h = read_header(ds, transfer_syntax_uid=ImplicitVRLittleEndian)  # a C-STORE's context
    assert h.transfer_syntax_uid == ImplicitVRLittleEndian


def test_enhanced_mr_counts_frames() -> None:
    ds = make_enhanced_mr((5, 8, 8))
    h = read_header(ds)
    assert h.number_of_frames == 5 and h.expected_count == 5
    assert h.image_orientation == pytest.approx((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    assert h.image_position is not None


def test_images_in_acquisition_is_the_expected_count() -> None:
    ds = make_mr_series((3, 8, 8))[0]
    ds.ImagesInAcquisition = 3
    assert read_header(ds).expected_count == 3


def _identified() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = MRImageStorage
    return ds


def test_only_the_identifying_uids_and_transfer_syntax_are_required() -> None:
    h = read_header(_identified(), transfer_syntax_uid=ExplicitVRLittleEndian)
    assert h == InstanceHeader(
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid=MRImageStorage,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def test_a_missing_uid_raises_with_its_name_and_the_instance() -> None:
    ds = _identified()
    del ds.SOPClassUID
    with pytest.raises(HeaderError, match="SOPClassUID") as info:
        read_header(ds, transfer_syntax_uid=ExplicitVRLittleEndian)
    assert info.value.sop_instance_uid == "1.2.3.4.5"
    assert "1.2.3.4.5" in str(info.value)
    assert isinstance(info.value, BonectError)


def test_a_missing_sop_instance_uid_raises_without_context() -> None:
    ds = _identified()
    del ds.SOPInstanceUID
    with pytest.raises(HeaderError, match="SOPInstanceUID") as info:
        read_header(ds, transfer_syntax_uid=ExplicitVRLittleEndian)
    assert info.value.sop_instance_uid is None


def test_a_missing_transfer_syntax_raises() -> None:
    with pytest.raises(HeaderError, match="TransferSyntaxUID"):
        read_header(_identified())  # no file meta, none given


def test_a_uid_with_a_path_in_it_raises() -> None:
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN  # a received header
    pydicom_config.settings.writing_validation_mode = pydicom_config.WARN  # can hold it
    ds = _identified()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.SeriesInstanceUID = "1.2/../../../../escaped"
    with pytest.raises(HeaderError, match="SeriesInstanceUID"):
        read_header(ds, transfer_syntax_uid=ExplicitVRLittleEndian)


def test_an_undecodable_header_raises() -> None:
    class Broken(Dataset):
        def get(self, *args: object, **kwargs: object) -> object:
            raise EOFError("truncated")

    with pytest.raises(HeaderError, match="undecodable"):
        read_header(Broken(), transfer_syntax_uid=ExplicitVRLittleEndian)


def test_malformed_optional_values_are_absent() -> None:
    ds = make_mr_series((1, 4, 4))[0]
    ds.ImagePositionPatient = [1.0, 2.0]  # not three values
    del ds.ImageOrientationPatient
    del ds.InstanceNumber
    h = read_header(ds)
    assert h.image_position is None and h.image_orientation is None
    assert h.instance_number is None


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc",
        "1.2.3/../../x",
        "1.2.3\n",
        "1.2.3\\x",
        "",
        "1..2",
        "1.2.03",
        "1.2.3.",
        "1.2.abc",
        "/1.2.3",
        "1." + "2" * 63,  # 65 characters
        None,
        ["1.2.3", "1.2.4"],
    ],
)
def test_invalid_uids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidUIDError) as info:
        validate_uid(bad, "StudyInstanceUID")
    assert isinstance(info.value, BonectError) and info.value.keyword == "StudyInstanceUID"


def test_longest_valid_uid_and_nul_padding_are_accepted() -> None:
    longest = "1." + "2" * 62
    assert validate_uid(longest, "X") == longest
    assert validate_uid("1.2.3\x00", "X") == "1.2.3"

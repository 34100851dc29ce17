"""Reading the catalog's header fields from datasets of the synthetic factory."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from bonect.catalog import HeaderError, header_from_dataset, patient_key
from series_factory import make_enhanced_mr, make_mr_series


def test_single_frame_mr() -> None:
    datasets = make_mr_series((4, 8, 8), (2.0, 1.0, 1.0), "sagittal", patient_id="P-7")
    h = header_from_dataset(datasets[1])
    ds = datasets[1]
    assert h.sop_instance_uid == ds.SOPInstanceUID and h.series_uid == ds.SeriesInstanceUID
    assert h.study_uid == ds.StudyInstanceUID and h.sop_class_uid == ds.SOPClassUID
    assert h.modality == "MR"
    assert h.series_description == "ZTE bone (synthetic)"
    assert h.instance_number == ds.InstanceNumber
    assert h.image_position == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    assert h.image_orientation == pytest.approx((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    assert h.number_of_frames is None
    assert h.patient_key == patient_key("P-7")
    assert "P-7" not in repr(h)


def test_enhanced_mr_counts_frames() -> None:
    ds = make_enhanced_mr((5, 8, 8))
    h = header_from_dataset(ds)
    assert h.number_of_frames == 5 and h.expected_count == 5
    assert h.image_orientation == pytest.approx((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    assert h.image_position is not None


def test_images_in_acquisition_is_the_expected_count() -> None:
    ds = make_mr_series((3, 8, 8))[0]
    ds.ImagesInAcquisition = 3
    assert header_from_dataset(ds).expected_count == 3


def test_missing_uid_raises() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    with pytest.raises(HeaderError, match="SOPClassUID"):
        header_from_dataset(ds)

"""The one "is this our own synthetic CT?" predicate, against what the writers really write."""

from __future__ import annotations

from datetime import date, time

import numpy as np
import pytest
from pydicom.dataset import Dataset

from bonect.converter.dicom_reader import read_series_datasets
from bonect.converter.dicom_writer import synthetic_ct_datasets
from bonect.converter.volume import Volume
from bonect.dicom.provenance import MANUFACTURER, dataset_is_own_sct, is_own_sct
from bonect.phantom.dicom import PatientInfo, StudyInfo, acquired_series_datasets


def phantom_series(modality: str) -> list[Dataset]:
    volume = Volume(np.ones((3, 8, 8), dtype=np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    return acquired_series_datasets(
        volume,
        modality="MR" if modality == "MR" else "CT",
        patient=PatientInfo("PHANTOM^P001", "P001"),
        study=StudyInfo("1.2.826.0.1.3680043.8.498.1", date(2026, 1, 5), time(9, 30)),
        series_number=3,
        series_description="ZTE bone",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2",
        series_uid=f"1.2.826.0.1.3680043.8.498.{3 if modality == 'MR' else 4}",
    )


def test_what_the_sct_writer_writes_is_ours_and_the_phantom_is_not() -> None:
    mr = read_series_datasets(phantom_series("MR"), modality="MR")
    sct = synthetic_ct_datasets(
        np.zeros(mr.volume.shape, dtype=np.float32),
        mr,
        model_name="light_unet",
        model_version="1",
        method="U-Net",
        clinical_use=False,
    )
    assert all(dataset_is_own_sct(ds) for ds in sct)
    assert not any(dataset_is_own_sct(ds) for ds in phantom_series("CT"))
    assert not any(dataset_is_own_sct(ds) for ds in phantom_series("MR"))


@pytest.mark.parametrize(
    ("manufacturer", "image_type", "ours"),
    [
        (MANUFACTURER, ("DERIVED", "SECONDARY", "AXIAL"), True),
        (" BONECT ", ["derived ", "SECONDARY"], True),
        (MANUFACTURER, "DERIVED\\SECONDARY\\OTHER", True),  # as the catalog stores it
        (MANUFACTURER, ("ORIGINAL", "PRIMARY"), False),  # our name, but acquired
        (MANUFACTURER, (), False),
        ("SIEMENS", ("DERIVED", "SECONDARY", "MPR"), False),  # a vendor's reformat
        ("", ("DERIVED",), False),
    ],
)
def test_both_our_name_and_derived_are_needed(
    manufacturer: str, image_type: tuple[str, ...] | list[str] | str, ours: bool
) -> None:
    assert is_own_sct(manufacturer, image_type) is ours


def test_the_configured_name_is_the_one_looked_for() -> None:
    derived = ("DERIVED", "SECONDARY")
    assert is_own_sct("Hospital sCT", derived, our_manufacturer="hospital sct")
    assert not is_own_sct(MANUFACTURER, derived, our_manufacturer="hospital sct")
    assert not is_own_sct("", derived, our_manufacturer="")  # an empty name matches nothing


def test_a_header_without_manufacturer_or_image_type_is_not_ours() -> None:
    ds = Dataset()
    assert not dataset_is_own_sct(ds)
    ds.Manufacturer = MANUFACTURER
    assert not dataset_is_own_sct(ds)
    ds.ImageType = "DERIVED"  # a single value
    assert dataset_is_own_sct(ds)

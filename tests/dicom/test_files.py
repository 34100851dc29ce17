"""Tests of saving DICOM files durably: all under temporary names first, then renamed."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from bonect.dicom.files import file_meta_for, save_dataset, write_datasets


def dataset(number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    ds.file_meta = file_meta_for(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds


def test_a_series_is_written_under_its_final_names_only(tmp_path: Path) -> None:
    datasets = [dataset(n) for n in (1, 2, 3)]
    paths = write_datasets(datasets, tmp_path / "out", prefix="CT")
    assert [p.name for p in paths] == ["CT_0001.dcm", "CT_0002.dcm", "CT_0003.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    for ds, path in zip(datasets, paths, strict=True):
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID


def test_a_file_that_cannot_be_encoded_leaves_nothing_behind(tmp_path: Path) -> None:
    old = save_dataset(dataset(1), tmp_path / "CT_0001.dcm")
    before = old.read_bytes()
    broken = dataset(2)
    del broken.file_meta  # enforce_file_format: refused
    with pytest.raises(ValueError):
        write_datasets([dataset(1), broken], tmp_path, prefix="CT")
    assert [p.name for p in tmp_path.iterdir()] == ["CT_0001.dcm"]  # no temporaries either
    assert old.read_bytes() == before  # the old file is untouched until all are written

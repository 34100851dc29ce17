"""Reading what a user points bonect at: a folder of one DICOM MR series, or a NIfTI file.

Kept free of PyTorch so that a bad input is refused before the model stack is imported.
"""

from __future__ import annotations

from pathlib import Path

from bonect.converter.dicom_reader import read_mr_folder
from bonect.converter.series import ImageSeries
from bonect.converter.volume import Volume, read_nifti
from bonect.errors import SeriesError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def read_input(path: Path) -> tuple[Volume, ImageSeries | None]:
    """A folder is one DICOM MR series; a ``.nii``/``.nii.gz`` file is a NIfTI volume."""
    if path.is_dir():
        series = read_mr_folder(path)
        return series.volume, series
    if path.is_file() and is_nifti(path):
        return read_nifti(path), None
    if not path.exists():
        raise SeriesError(f"{path}: no such file or folder")
    raise SeriesError(f"{path}: expected a folder of DICOM files or a .nii/.nii.gz file")

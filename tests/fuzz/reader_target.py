"""Fuzz target: the series reader (:func:`bonect.converter.dicom_reader.read_mr_folder`).

One fuzz input is one DICOM file of a small MR series, read from a folder as the worker reads
an archived series. Its layout::

    control byte | file bytes

With ``control & 1`` the file is the third slice of a valid three-slice series, beside the
first two (written once, never mutated): mutated headers then meet valid neighbours (geometry,
spacing, rows and columns, series UID). Without it the file is alone in its folder (an Enhanced
MR instance is a whole volume by itself). :func:`seeds` gives valid inputs of both kinds.

The invariant: :func:`read_mr_folder` returns an :class:`~bonect.converter.series.ImageSeries`
whose volume is usable (finite values and affine, one source per slice), or raises
:class:`~bonect.errors.SeriesError`; any other exception (an ``IndexError``, a ``MemoryError``
on a huge Rows value, ...) is a crash, and a violation raises :class:`InvariantViolation`.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from bonect.converter.dicom_reader import read_mr_folder
from bonect.errors import SeriesError
from series_factory import make_enhanced_mr, make_mr_series, write_series

WITH_NEIGHBOURS = 1
ALONE = 0
SHAPE = (3, 8, 8)
SPACING = (2.0, 1.0, 1.0)
UIDS = {  # fixed, so that seeds made in one process fit neighbours written in another
    "study_uid": "1.2.826.0.1.3680043.8.498.1",
    "series_uid": "1.2.826.0.1.3680043.8.498.2",
    "frame_of_reference_uid": "1.2.826.0.1.3680043.8.498.3",
}


class InvariantViolation(AssertionError):
    """The reader returned something unusable for this input."""


def _series() -> list[Dataset]:
    return make_mr_series(shape=SHAPE, spacing=SPACING, **UIDS)


def _file_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class ReaderTarget:
    """Reads each input as a series folder under ``workdir``; call it with inputs."""

    def __init__(self, workdir: Path) -> None:
        self.series_folder = workdir / "series"
        write_series(_series()[:2], self.series_folder)  # IM00001.dcm, IM00002.dcm
        self.alone_folder = workdir / "alone"
        self.alone_folder.mkdir()
        self.count = 0
        self.read = 0  # inputs that gave a volume

    def __call__(self, data: bytes) -> None:
        """Read one fuzz input as a series and check the invariant."""
        if len(data) < 2:
            return
        self.count += 1
        with_neighbours = data[0] & 1 == WITH_NEIGHBOURS
        folder = self.series_folder if with_neighbours else self.alone_folder
        path = folder / "IM00003.dcm"
        path.write_bytes(data[1:])
        try:
            series = read_mr_folder(folder)
        except SeriesError:
            return
        finally:
            path.unlink()
        self.read += 1
        volume = series.volume
        if len(series.sources) != volume.shape[0]:
            raise InvariantViolation(f"{len(series.sources)} sources for {volume.shape}")
        if not np.isfinite(volume.affine).all():
            raise InvariantViolation(f"a non-finite affine:\n{volume.affine}")
        if not np.isfinite(volume.array).all():
            raise InvariantViolation("non-finite voxel values")


def seeds() -> list[bytes]:
    """Valid inputs: the third slice (explicit and implicit VR, RLE) beside its neighbours, and
    a three-frame Enhanced MR instance alone."""
    third = _series()[2]
    implicit = copy.deepcopy(third)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    rle = copy.deepcopy(third)
    rle.compress(RLELossless, encoding_plugin="pydicom")
    enhanced = make_enhanced_mr(shape=SHAPE, spacing=SPACING)
    return [
        bytes([WITH_NEIGHBOURS]) + _file_bytes(third),
        bytes([WITH_NEIGHBOURS]) + _file_bytes(implicit),
        bytes([WITH_NEIGHBOURS]) + _file_bytes(rle),
        bytes([ALONE]) + _file_bytes(enhanced),
    ]

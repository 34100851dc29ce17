"""What the converter knows of an MR series: its volume, its header, and its source images."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from bonect.converter.volume import Volume


@dataclass(frozen=True)
class SourceImage:
    """One source image (or frame of a multi-frame instance) behind one slice of a volume."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None  # 1-based, for Enhanced (multi-frame) MR only


@dataclass(frozen=True)
class ImageSeries:
    """An MR series read and checked: float32 volume, a header to copy from, one source per slice.

    ``header`` is the first instance's dataset without its pixel data: Patient, Study,
    Series and Frame of Reference attributes are copied from it into derived series.
    """

    volume: Volume
    header: Dataset
    sources: tuple[SourceImage, ...]

    @property
    def series_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

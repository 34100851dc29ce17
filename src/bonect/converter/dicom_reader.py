"""Reading one MR series from DICOM (classic or Enhanced MR, any orientation) into an ImageSeries.

The three entry points differ only in where the instances come from (a folder, a list of files,
datasets in memory). Every problem that makes the input unusable (not DICOM, truncated, not an
image, not MR, several series, inconsistent geometry, duplicate or missing slices, a rescale
that maps stored values outside ±1e6) is raised as
:class:`~bonect.errors.SeriesError` with a one-line message; pydicom's own exceptions never leak.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from bonect.converter.series import ImageSeries, SourceImage
from bonect.converter.volume import Volume
from bonect.dicom.geometry import (
    PIXEL_SPACING_TOLERANCE,
    check_stack,
    distinct,
    fmt,
    frame_geometry,
    functional_group,
    has_functional_groups,
    stack_affine,
)
from bonect.errors import SeriesError

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

MAX_RESCALED_VALUE = 1e6
"""The largest magnitude a rescaled pixel may have (HU span about -1024..+30000; MR intensities
of 16-bit stored values with any plausible slope stay far below; float32 is exact to 2**24)."""

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
_PER_FRAME_TAG = 0x52009230  # PerFrameFunctionalGroupsSequence
_MALFORMED = (
    AttributeError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    NotImplementedError,  # an unknown VR: one damaged byte in an explicit VR header
    OSError,  # without an errno: "No tag to read at file position ...", a sequence cut short
    BytesLengthException,  # a value whose length does not fit its VR ("SQ" damaged to "SS")
    InvalidDicomError,
)
"""What pydicom raises where a malformed value is first used (datasets are parsed lazily)."""


@dataclass(frozen=True)
class _Frame:
    """One 2D image (a classic instance or one frame of an enhanced instance) and its plane."""

    dataset: Dataset
    label: str  # file name or instance UID, for messages
    index: int | None  # 0-based frame index in a multi-frame dataset
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float


def read_mr_folder(folder: Path) -> ImageSeries:
    """Read the one MR series held by the files under ``folder`` (recursively).

    ``DICOMDIR`` files and hidden files or folders (names starting with ``.``) are skipped; every
    other file must be a DICOM instance of the series.

    Parameters
    ----------
    folder
        A folder of DICOM files.

    Returns
    -------
    ImageSeries
        The checked volume, its header and one source image per slice.

    Raises
    ------
    SeriesError
        If the folder is missing or empty, or the files are not one usable MR series.
    """
    if not folder.is_dir():
        raise SeriesError(f"{folder}: not a folder")
    paths = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.name.upper() != "DICOMDIR"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not paths:
        raise SeriesError(f"{folder}: no DICOM files (empty folder)")
    return read_mr_files(paths)


def read_mr_files(paths: Sequence[Path]) -> ImageSeries:
    """Read one MR series from the given DICOM files (in any order).

    Raises
    ------
    SeriesError
        If a file is missing, not DICOM or truncated (the message names it), or the files are
        not one usable MR series. Other :class:`OSError` (e.g. a failing disk) propagate, as they
        may be transient.
    """
    return read_series_files(paths, modality="MR")


def read_series_files(paths: Sequence[Path], *, modality: str) -> ImageSeries:
    """Read one series of the given modality (``MR``, or ``CT`` for the trainer) from files.

    The checks are those of :func:`read_mr_files`; only the modality differs.
    """
    if not paths:
        raise SeriesError("no DICOM files in input")
    return read_series_datasets([_read_file(path) for path in paths], modality=modality)


def read_mr_datasets(datasets: Sequence[Dataset]) -> ImageSeries:
    """Read one MR series from datasets already in memory (in any order).

    Slices are sorted along the slice normal (row cosine × column cosine); the volume is float32
    with RescaleSlope/Intercept applied and its affine follows :mod:`bonect.converter.volume`.

    Raises
    ------
    SeriesError
        If the datasets are not exactly one usable MR series.
    """
    return read_series_datasets(datasets, modality="MR")


def read_series_datasets(datasets: Sequence[Dataset], *, modality: str) -> ImageSeries:
    """Read one series of the given modality from datasets in memory; see :func:`read_mr_files`."""
    if not datasets:
        raise SeriesError("no DICOM datasets in input")
    try:
        return _read_series(datasets, modality)
    except SeriesError:
        raise
    except _MALFORMED as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk or the file system: may pass
        # pydicom converts values lazily: a malformed attribute fails where it is first used
        logger.debug("malformed DICOM attribute", exc_info=True)
        raise SeriesError(f"malformed or missing DICOM attribute ({_one_line(exc)})") from exc


def _read_series(datasets: Sequence[Dataset], modality: str) -> ImageSeries:
    for ds in datasets:
        _check_complete(ds)
    uid = _single_series_uid(datasets)
    for ds in datasets:
        _check_image(ds, uid)
    _check_modality(datasets, uid, modality)
    enhanced = [has_functional_groups(ds) for ds in datasets]
    if any(enhanced) and not all(enhanced):
        raise SeriesError(
            f"series mixes single-frame and Enhanced (multi-frame) MR instances (series {uid})",
            series_uid=uid,
        )
    frames = [f for ds in datasets for f in _frames_of(ds, uid)]
    if len(frames) < 2:
        raise SeriesError(
            f"{len(frames)} slice(s) in series; a volume needs at least 2 (series {uid})",
            series_uid=uid,
        )
    frames, affine = _check_geometry(frames, uid)
    first = frames[0]
    volume = Volume(_pixels(frames, uid), affine)
    sources = tuple(
        SourceImage(
            sop_class_uid=str(f.dataset.SOPClassUID),
            sop_instance_uid=str(f.dataset.SOPInstanceUID),
            frame_number=None if f.index is None else f.index + 1,
        )
        for f in frames
    )
    logger.info(
        "read %s series %s: %d slices of %dx%d, spacing %.3g x %.3g x %.3g mm",
        modality,
        uid,
        volume.shape[0],
        volume.shape[1],
        volume.shape[2],
        *volume.spacing,
    )
    return ImageSeries(volume=volume, header=_header(first.dataset), sources=sources)


def _read_file(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=False)
    except InvalidDicomError as exc:
        raise SeriesError(f"{path}: not a DICOM file") from exc
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise SeriesError(f"{path}: no such file") from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk or the file system: may pass
            raise
        # pydicom's own, e.g. "No tag to read at file position ...": a sequence cut short
        raise SeriesError(f"{path}: unreadable or truncated DICOM file ({_one_line(exc)})") from exc
    except Exception as exc:  # pydicom raises many types for damaged files
        raise SeriesError(f"{path}: unreadable or truncated DICOM file ({_one_line(exc)})") from exc


def _label(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str) and filename:
        return filename
    return f"instance {ds.get('SOPInstanceUID', '(no SOPInstanceUID)')}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_complete(ds: Dataset) -> None:
    """Refuse a dataset read from a truncated file (pydicom accepts those silently)."""
    meta = getattr(ds, "file_meta", None)
    if len(ds) == 0 or (meta is not None and len(meta) > 0 and "TransferSyntaxUID" not in meta):
        raise SeriesError(f"{_label(ds)}: truncated DICOM file (no data set)")
    last = ds.get_item(list(ds.keys())[-1])
    if (
        isinstance(last, RawDataElement)
        and isinstance(last.value, bytes)
        and last.length != 0xFFFFFFFF
        and len(last.value) < last.length
    ):
        raise SeriesError(
            f"{_label(ds)}: truncated DICOM file ({len(last.value)} of {last.length} bytes "
            f"of element {last.tag})"
        )


def _single_series_uid(datasets: Sequence[Dataset]) -> str:
    counts: dict[str, int] = {}
    for ds in datasets:
        if "SeriesInstanceUID" not in ds:
            raise SeriesError(f"{_label(ds)}: no SeriesInstanceUID")
        uid = str(ds.SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{uid} ({n} instances)" for uid, n in list(counts.items())[:5])
        more = ", ..." if len(counts) > 5 else ""
        raise SeriesError(f"{len(counts)} series in input: {listed}{more}")
    return next(iter(counts))


def _check_image(ds: Dataset, uid: str) -> None:
    if "PixelData" not in ds:
        kind = UID(str(ds.get("SOPClassUID", ""))).name or "unknown SOP class"
        problem = "truncated file?" if "Image" in kind else "not an image"
        raise SeriesError(
            f"{_label(ds)}: no pixel data in this {kind} instance, {problem} (series {uid})",
            series_uid=uid,
        )
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise SeriesError(
            f"{_label(ds)}: colour image ({ds.SamplesPerPixel} samples per pixel), "
            f"not a grey-scale MR (series {uid})",
            series_uid=uid,
        )


def _check_modality(datasets: Sequence[Dataset], uid: str, modality: str) -> None:
    modalities = sorted({str(ds.get("Modality", "") or "of unknown modality") for ds in datasets})
    if modalities != [modality]:
        raise SeriesError(
            f"series is {'/'.join(modalities)}, not {modality} (series {uid})", series_uid=uid
        )


def _frames_of(ds: Dataset, uid: str) -> list[_Frame]:
    label = _label(ds)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(f"{label}: no valid Rows/Columns (series {uid})", series_uid=uid) from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = has_functional_groups(ds)
    if not enhanced and n_frames != 1:
        raise SeriesError(
            f"{label}: multi-frame image without functional groups (series {uid})",
            series_uid=uid,
        )
    per_frame = len(ds.get("PerFrameFunctionalGroupsSequence", []))
    if enhanced and per_frame != n_frames:
        raise SeriesError(
            f"{label}: {per_frame} per-frame functional groups for {n_frames} frames "
            f"(series {uid})",
            series_uid=uid,
        )
    frames = []
    for index, plane in enumerate(frame_geometry(ds)):
        where = f"{label} frame {index + 1}" if enhanced else label
        position, orientation, spacing = plane.position, plane.orientation, plane.pixel_spacing
        if plane.problem or position is None or orientation is None or spacing is None:
            raise SeriesError(f"{where}: {plane.problem} (series {uid})", series_uid=uid)
        transform = functional_group(ds, index, "PixelValueTransformationSequence")
        rescale = _rescale(ds if transform is None else transform)
        if not all(math.isfinite(value) for value in rescale):  # "NaN", "inf", "1e999"
            raise SeriesError(
                f"{where}: RescaleSlope and RescaleIntercept must be finite, not "
                f"{rescale[0]:g} and {rescale[1]:g} (series {uid})",
                series_uid=uid,
            )
        frame_index = index if enhanced else None
        geometry = (position, orientation, spacing, rows, columns)
        frames.append(_Frame(ds, where, frame_index, *geometry, *rescale))
    return frames


def _rescale(item: Dataset) -> tuple[float, float]:
    slope = item.get("RescaleSlope", None)
    intercept = item.get("RescaleIntercept", None)
    return (
        1.0 if slope in (None, "") else float(slope),
        0.0 if intercept in (None, "") else float(intercept),
    )


def _check_geometry(frames: Sequence[_Frame], uid: str) -> tuple[list[_Frame], F64]:
    """Judge the stack (:func:`bonect.dicom.geometry.check_stack`) and the in-plane grid.

    Returns the frames sorted along the slice normal and the volume affine.
    """
    verdict = check_stack([f.position for f in frames], [f.orientation for f in frames])
    if not verdict.valid:
        where = "" if verdict.slice_index is None else f"{frames[verdict.slice_index].label}: "
        raise SeriesError(f"{where}{verdict.message} (series {uid})", series_uid=uid)
    sizes = sorted({(f.rows, f.columns) for f in frames})
    if len(sizes) > 1:
        listed = " and ".join(f"{r}x{c}" for r, c in sizes[:2])
        raise SeriesError(
            f"mixed rows/columns: images of {listed} pixels (series {uid})", series_uid=uid
        )
    spacings = distinct([np.asarray(f.pixel_spacing) for f in frames], PIXEL_SPACING_TOLERANCE)
    if len(spacings) > 1:
        raise SeriesError(
            f"mixed pixel spacing: {fmt(spacings[0])} and {fmt(spacings[1])} mm (series {uid})",
            series_uid=uid,
        )
    ordered = [frames[i] for i in verdict.order]
    first = ordered[0]
    affine = stack_affine(first.position, first.orientation, first.pixel_spacing, verdict.spacing)
    return ordered, affine


def _pixels(frames: Sequence[_Frame], uid: str) -> npt.NDArray[np.float32]:
    """Decode every frame (each dataset once) into a float32 [slice, row, column] array.

    Every dataset is decoded (and its size checked against Rows and Columns) before the volume
    is allocated, so the allocation is bounded by pixel data that exists, never by a header's
    claim (Rows = Columns = 65535 would ask for 16 GiB a slice)."""
    rows, columns = frames[0].rows, frames[0].columns
    decoded: dict[int, npt.NDArray[Any]] = {}
    for frame in frames:
        key = id(frame.dataset)
        if key not in decoded:
            decoded[key] = _decode(frame.dataset, rows, columns, uid)
    out = np.empty((len(frames), rows, columns), dtype=np.float32)
    for k, frame in enumerate(frames):
        image = decoded[id(frame.dataset)][0 if frame.index is None else frame.index]
        _check_rescaled_range(frame, image, uid)
        out[k] = image.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    return out


def _check_rescaled_range(frame: _Frame, image: npt.NDArray[Any], uid: str) -> None:
    """Refuse a frame whose stored values RescaleSlope/Intercept map outside
    ±:data:`MAX_RESCALED_VALUE` (computed in float64 from the frame's lowest and highest stored
    value, before anything is applied): a finite slope such as 1e35 overflows float32 to inf."""
    if image.size == 0:
        return
    low, high = float(image.min()), float(image.max())
    ends = (frame.slope * low + frame.intercept, frame.slope * high + frame.intercept)
    if all(math.isfinite(v) and abs(v) <= MAX_RESCALED_VALUE for v in ends):
        return
    lowest, highest = sorted(ends)
    raise SeriesError(
        f"{frame.label}: RescaleSlope {frame.slope:g} and RescaleIntercept {frame.intercept:g} "
        f"map stored values {low:g}..{high:g} to {lowest:g}..{highest:g}, outside "
        f"±{MAX_RESCALED_VALUE:g} (series {uid})",
        series_uid=uid,
    )


def _decode(ds: Dataset, rows: int, columns: int, uid: str) -> npt.NDArray[Any]:
    label = _label(ds)
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # codecs and pydicom raise many types for damaged pixel data
        raise SeriesError(
            f"{label}: pixel data cannot be decoded, truncated or corrupt ({_one_line(exc)}) "
            f"(series {uid})",
            series_uid=uid,
        ) from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.size != n_frames * rows * columns:
        raise SeriesError(
            f"{label}: decoded pixel data has shape {arr.shape}, expected {n_frames} frame(s) "
            f"of {rows}x{columns} (series {uid})",
            series_uid=uid,
        )
    return arr.reshape(n_frames, rows, columns)


def _header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without pixel data or per-frame functional groups."""
    header = Dataset()
    for elem in ds:
        if elem.tag not in _PIXEL_TAGS and elem.tag != _PER_FRAME_TAG:
            header.add(copy.deepcopy(elem))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        header.file_meta = copy.deepcopy(meta)
    return header

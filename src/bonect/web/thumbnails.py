"""The pictures of a finished job: MR | sCT | uncertainty in three planes through the head's middle.

Each series is read into a :class:`highdicom.Volume` (the project's one geometry authority),
turned to the patient orientation F-P-L (rows head to feet or front to back, patient right on
the image's left, as radiologists look at images), cut through the middle of the head and
scaled to its physical aspect. The sCT is shown in the bone window, the MR between its 1st and
99.5th percentile inside the head, the uncertainty (the spread between the planes, in HU) from
0 to :data:`UNCERTAINTY_SHOWN_HU` in a heat map. Rendering is PNG with Pillow; no PyTorch here.

The uncertainty map exists only when the converter wrote ``uncertainty.nii.gz`` beside the sCT
files; otherwise the page says it was not recorded.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from highdicom import Volume, get_volume_from_series
from PIL import Image

from bonect.hounsfield import BONE_WINDOW, window_bounds
from bonect.uncertainty import DEFAULT_THRESHOLD_HU, uncertain_share

logger = logging.getLogger(__name__)

Kind = Literal["mr", "sct", "uncertainty"]
PlaneName = Literal["axial", "coronal", "sagittal"]
KINDS: Final[tuple[Kind, ...]] = ("mr", "sct", "uncertainty")
PLANES: Final[tuple[PlaneName, ...]] = ("axial", "coronal", "sagittal")
ORIENTATION: Final = "FPL"  # axis 0 towards the feet, 1 towards the back, 2 towards the left
UNCERTAINTY_FILE: Final = "uncertainty.nii.gz"
UNCERTAINTY_SHOWN_HU: Final = 300.0
HEAD_HU: Final = -400.0  # sCT voxels above this are inside the head
SIZE: Final = 192  # the longer side of a thumbnail, in pixels

F32 = npt.NDArray[np.float32]


class ThumbnailError(Exception):
    """A series could not be read or drawn (the page shows the reason instead of a picture)."""


@dataclass(frozen=True)
class Pictures:
    """The PNGs of one job by kind and plane, why a kind is missing, and the uncertainty."""

    png: dict[Kind, dict[PlaneName, bytes]] = field(default_factory=dict)
    missing: dict[Kind, str] = field(default_factory=dict)
    uncertain_share: float | None = None  # of the head's voxels above the threshold


def read_dicom_volume(paths: Sequence[Path]) -> Volume:
    """A series of files as one volume in F-P-L orientation (CT: in HU, its rescale applied)."""
    if not paths:
        raise ThumbnailError("no files")
    try:
        datasets = [pydicom.dcmread(path) for path in paths]
        volume = get_volume_from_series(datasets, dtype=np.float32)
        return volume.to_patient_orientation(ORIENTATION)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
        raise ThumbnailError(f"{type(exc).__name__}: {exc}") from exc


def read_nifti_volume(path: Path) -> Volume:
    """A NIfTI file (the uncertainty map) as a volume in F-P-L orientation."""
    import nibabel

    try:
        image = nibabel.load(path)
        volume = Volume.from_nibabel(image, coordinate_system="PATIENT")
        return volume.astype(np.float32).to_patient_orientation(ORIENTATION)
    except (OSError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise ThumbnailError(f"{type(exc).__name__}: {exc}") from exc


def _array(volume: Volume) -> F32:
    return np.asarray(volume.array, dtype=np.float32)


def mr_head(array: F32) -> npt.NDArray[np.bool_]:
    """Voxels brighter than a fifth of the 99th percentile: the head, roughly."""
    return array > 0.2 * float(np.percentile(array, 99))


def head_centre(volume: Volume, head: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """The centre of mass of ``head`` in patient coordinates (mm); the grid's centre if empty."""
    if head.any():
        indices = np.argwhere(head).mean(axis=0)
    else:
        indices = (np.asarray(head.shape, dtype=np.float64) - 1) / 2
    return np.asarray(volume.map_indices_to_reference(indices[None, :])[0], dtype=np.float64)


def _indices_of(volume: Volume, point: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    raw = np.asarray(volume.map_reference_to_indices(point[None, :], round_output=False))[0]
    top = np.asarray(volume.spatial_shape) - 1
    i, j, k = (int(v) for v in np.clip(np.rint(raw), 0, top))
    return i, j, k


def _heat(values: F32) -> npt.NDArray[np.uint8]:
    """0..1 as black - red - yellow - white."""
    rgb = np.stack([values * 3, values * 3 - 1, values * 3 - 2], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def plane_images(
    volume: Volume,
    point: npt.NDArray[np.float64],
    window: tuple[float, float],
    *,
    heat: bool = False,
) -> dict[PlaneName, bytes]:
    """PNGs of the three planes of ``volume`` through ``point`` (mm), values in ``window``."""
    array = _array(volume)
    i, j, k = _indices_of(volume, point)
    d0, d1, d2 = (float(s) for s in volume.spacing)
    cuts: dict[PlaneName, tuple[F32, float, float]] = {
        "axial": (array[i, :, :], d1, d2),  # rows front to back, columns right to left
        "coronal": (array[:, j, :], d0, d2),  # rows head to feet
        "sagittal": (array[:, :, k], d0, d1),  # rows head to feet, columns front to back
    }
    low, high = window
    pictures: dict[PlaneName, bytes] = {}
    for plane, (cut, row_mm, column_mm) in cuts.items():
        scaled = np.clip((cut - low) / max(high - low, 1e-6), 0, 1)
        image = (
            Image.fromarray(_heat(scaled), mode="RGB")
            if heat
            else Image.fromarray((scaled * 255).astype(np.uint8), mode="L")
        )
        height_mm, width_mm = cut.shape[0] * row_mm, cut.shape[1] * column_mm
        scale = SIZE / max(height_mm, width_mm)
        size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.BILINEAR).save(buffer, format="PNG", optimize=True)
        pictures[plane] = buffer.getvalue()
    return pictures


def render_job(
    mr_files: Sequence[Path],
    sct_files: Sequence[Path],
    uncertainty: Path | None,
    *,
    threshold_hu: float = DEFAULT_THRESHOLD_HU,
) -> Pictures:
    """The pictures of one job; a series that cannot be read is named in ``missing``.

    ``threshold_hu``: the spread above which a voxel counts as unsure (the job's, see
    :func:`bonect.uncertainty.threshold_hu`).
    """
    pictures = Pictures()
    point: npt.NDArray[np.float64] | None = None
    try:
        mr = read_dicom_volume(mr_files)
        mr_array = _array(mr)
        head = mr_head(mr_array)
        point = head_centre(mr, head)
        inside = mr_array[head] if head.any() else mr_array.ravel()
        low, high = (float(v) for v in np.percentile(inside, (1, 99.5)))
        pictures.png["mr"] = plane_images(mr, point, (low, high))
    except ThumbnailError as exc:
        pictures.missing["mr"] = f"the MR could not be drawn: {exc}"
    if not sct_files:
        pictures.missing["sct"] = "the sCT files are gone (retention) or were never written"
    else:
        try:
            sct = read_dicom_volume(sct_files)
            if point is None:
                point = head_centre(sct, _array(sct) > HEAD_HU)
            pictures.png["sct"] = plane_images(sct, point, window_bounds(BONE_WINDOW))
        except ThumbnailError as exc:
            pictures.missing["sct"] = f"the sCT could not be drawn: {exc}"
    if uncertainty is None or not uncertainty.is_file():
        pictures.missing["uncertainty"] = "not recorded"
        return pictures
    try:
        spread = read_nifti_volume(uncertainty)
        if point is None:
            point = head_centre(spread, np.ones(spread.spatial_shape, dtype=bool))
        pictures.png["uncertainty"] = plane_images(
            spread, point, (0.0, UNCERTAINTY_SHOWN_HU), heat=True
        )
        values = _array(spread)
        in_head = values > 0  # the converter leaves the spread at 0 outside the head
        share = uncertain_share(values, in_head, threshold_hu)
        return Pictures(pictures.png, pictures.missing, share)
    except ThumbnailError as exc:
        pictures.missing["uncertainty"] = f"the uncertainty map could not be drawn: {exc}"
    return pictures


@dataclass
class ThumbnailCache:
    """The pictures of the last few jobs, rendered once (thread-safe; at most ``size`` jobs)."""

    size: int = 8
    _items: OrderedDict[tuple[int, str], Pictures] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[int, str], render: Callable[[], Pictures]) -> Pictures:
        """The cached pictures of ``key`` (job id, version), rendering them when missing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        pictures = render()  # outside the lock: slow, and two renders of one key are harmless
        with self._lock:
            self._items[key] = pictures
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return pictures

"""The volume value object (voxels + affine to patient LPS mm) and NIfTI input/output.

Conventions, shared by every module of bonect:

* ``Volume.array`` is indexed ``[slice, row, column]``.
* ``Volume.affine`` maps the homogeneous index ``(slice, row, column, 1)`` to patient
  coordinates in millimetres, DICOM's LPS (x to the patient's left, y posterior, z superior).
  Column 0 is the step between slices (along the slice normal, ordered by increasing position),
  column 1 the step between rows (DICOM's column direction cosine × row spacing), column 2 the
  step between columns (row direction cosine × column spacing), column 3 the centre of the first
  voxel (ImagePositionPatient of the first slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from bonect.errors import SeriesError

FloatArray = npt.NDArray[np.float32]

# NIfTI is RAS; DICOM is LPS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI voxel order (i, j, k) = our (column, row, slice).
_SWAP_IJK = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass(frozen=True)
class Volume:
    """A 3D image on a regular grid placed in patient space."""

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64] = field(repr=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume needs a 3D array, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slice, row, column)."""
        n = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(n[0]), float(n[1]), float(n[2]))

    @property
    def direction(self) -> npt.NDArray[np.float64]:
        """Unit vectors (columns) of the slice, row and column axes in LPS."""
        return np.asarray(self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def position(self) -> npt.NDArray[np.float64]:
        """LPS position of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def with_array(self, array: npt.NDArray[Any]) -> Volume:
        """The same grid with other voxel values (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine)

    def slice_positions(self) -> npt.NDArray[np.float64]:
        """ImagePositionPatient of every slice, shape (n_slices, 3)."""
        k = np.arange(self.shape[0], dtype=np.float64)
        return self.affine[:3, 3][None, :] + k[:, None] * self.affine[:3, 0][None, :]

    def index_to_patient(self, index: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Map (..., 3) voxel indices to (..., 3) LPS millimetres."""
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


def affine_from_dicom(
    position: npt.ArrayLike,
    orientation: npt.ArrayLike,
    pixel_spacing: npt.ArrayLike,
    slice_step: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Build a volume affine from DICOM plane attributes.

    ``orientation`` is ImageOrientationPatient (row cosines, then column cosines),
    ``pixel_spacing`` is PixelSpacing (row spacing, column spacing) and ``slice_step`` the
    LPS vector from one slice's position to the next.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    affine[:3, 1] = iop[3:6] * spacing[0]
    affine[:3, 2] = iop[0:3] * spacing[1]
    affine[:3, 3] = np.asarray(position, dtype=np.float64)
    return affine


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI file into a :class:`Volume` (float32, LPS affine)."""
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for bad files
        raise SeriesError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SeriesError(f"{path}: expected a 3D image, got shape {data.shape}")
    affine_ras = np.asarray(img.affine, dtype=np.float64)
    affine = _LPS_TO_RAS @ affine_ras @ _SWAP_IJK
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)


def write_nifti(volume: Volume, path: Path) -> Path:
    """Write a :class:`Volume` as NIfTI (RAS affine); the array dtype is kept."""
    affine_ras = _LPS_TO_RAS @ volume.affine @ _SWAP_IJK
    img = nib.Nifti1Image(np.asarray(volume.array).transpose(2, 1, 0), affine_ras)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path

"""The volume value object (highdicom's ``Volume``: voxels + affine to LPS mm) and NIfTI I/O.

:class:`Volume` is ``highdicom.Volume`` with bonect's conventions fixed; its geometry (spacing,
direction, position, with_array, ...) is highdicom's. Conventions, shared by every module of
bonect:

* ``Volume.array`` is indexed ``[slice, row, column]`` (always 3D, no channels).
* ``Volume.affine`` maps the homogeneous index ``(slice, row, column, 1)`` to patient
  coordinates in millimetres, DICOM's LPS (x to the patient's left, y posterior, z superior).
  Column 0 is the step between slices (along the slice normal, ordered by increasing position),
  column 1 the step between rows (DICOM's column direction cosine × row spacing), column 2 the
  step between columns (row direction cosine × column spacing), column 3 the centre of the first
  voxel (ImagePositionPatient of the first slice). The slice axis runs along row cosine ×
  column cosine, so in highdicom's terms the affine is left-handed
  (:func:`bonect.dicom.geometry.stack_affine` builds it from DICOM attributes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom
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


class Volume(highdicom.Volume):
    """A 3D image on a regular grid placed in patient space (``highdicom.Volume``, 3D, LPS).

    ``Volume(array, affine)`` builds one; every other highdicom argument keeps its default
    (the patient coordinate system). The affine must be orthogonal (highdicom refuses others).
    """

    def __init__(
        self,
        array: npt.NDArray[Any],
        affine: npt.NDArray[np.float64],
        coordinate_system: str = "PATIENT",
        frame_of_reference_uid: str | None = None,
        channels: dict[Any, Any] | None = None,
        from_reference_convention: str | None = None,
    ) -> None:
        if array.ndim != 3:
            raise ValueError(f"a volume needs a 3D array, got shape {array.shape}")
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        super().__init__(
            array=array,
            affine=affine,
            coordinate_system=coordinate_system,
            frame_of_reference_uid=frame_of_reference_uid,
            channels=channels or None,
            from_reference_convention=from_reference_convention,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    def slice_positions(self) -> npt.NDArray[np.float64]:
        """ImagePositionPatient of every slice, shape (n_slices, 3)."""
        affine = self.affine
        k = np.arange(self.shape[0], dtype=np.float64)
        return np.asarray(affine[:3, 3][None, :] + k[:, None] * affine[:3, 0][None, :])

    def index_to_patient(self, index: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Map (..., 3) voxel indices to (..., 3) LPS millimetres (any leading shape)."""
        affine = self.affine
        return np.asarray(index @ affine[:3, :3].T + affine[:3, 3])


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
    try:
        return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    except ValueError as exc:  # highdicom refuses sheared (non-orthogonal) affines
        raise SeriesError(f"{path}: unusable NIfTI geometry ({exc})") from exc


def write_nifti(volume: Volume, path: Path) -> Path:
    """Write a :class:`Volume` as NIfTI (RAS affine); the array dtype is kept."""
    affine_ras = _LPS_TO_RAS @ volume.affine @ _SWAP_IJK
    img = nib.Nifti1Image(np.asarray(volume.array).transpose(2, 1, 0), affine_ras)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path

"""Where and how the phantom is sampled: the acquisition plane, voxel size and field of view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bonect.converter.volume import Volume

Orientation = Literal["axial", "sagittal", "coronal"]
ORIENTATIONS: tuple[Orientation, ...] = ("axial", "sagittal", "coronal")

# ImageOrientationPatient (row cosines, column cosines) of each acquisition plane.
_IOP: dict[Orientation, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}
# The field of view, an LPS box (mm) holding head and upper neck.
FOV_MIN = np.array([-112.0, -126.0, -150.0])
FOV_MAX = np.array([112.0, 102.0, 118.0])


@dataclass(frozen=True)
class Acquisition:
    """Where and how an image is sampled: plane and voxel size (slice, row, column) in mm."""

    orientation: Orientation = "axial"
    spacing: tuple[float, float, float] = (2.0, 1.5, 1.5)
    vertex_cut_mm: float = 0.0  # the field of view's top lowered by this (vertex cut off)
    neck_cut_mm: float = 0.0  # its bottom raised by this (neck, then chin, cut off)

    def grid(self) -> Volume:
        """An empty volume whose affine covers the field of view in this plane."""
        row_cos, col_cos = (np.asarray(v) for v in _IOP[self.orientation])
        normal = np.cross(row_cos, col_cos)
        axes = (normal, col_cos, row_cos)  # index order: slice, row, column
        fov_min = FOV_MIN + np.array([0.0, 0.0, self.neck_cut_mm])
        fov_max = FOV_MAX - np.array([0.0, 0.0, self.vertex_cut_mm])
        extent = fov_max - fov_min
        shape = tuple(
            int(np.floor(abs(float(axis @ extent)) / step)) + 1
            for axis, step in zip(axes, self.spacing, strict=True)
        )
        affine = np.eye(4)
        corner = np.where(np.sum(axes, axis=0) >= 0, fov_min, fov_max)  # start of every axis
        for i, (axis, step) in enumerate(zip(axes, self.spacing, strict=True)):
            affine[:3, i] = axis * step
        affine[:3, 3] = corner
        shape3 = (shape[0], shape[1], shape[2])
        return Volume(np.zeros(shape3, dtype=np.uint8), affine)

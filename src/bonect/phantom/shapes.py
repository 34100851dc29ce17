"""The phantom's drawing kit: tissue classes, and head-frame coordinates with shape primitives."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


class Tissue(IntEnum):
    """Tissue classes of the phantom; the contrast tables are keyed by them."""

    AIR = 0  # outside the body
    SOFT = 1  # skin, muscle, mucosa, glands
    FAT = 2
    BRAIN = 3
    CSF = 4
    CORTICAL = 5  # cortical bone: skull tables, mandible, vertebral shells, sinus walls
    CANCELLOUS = 6  # diploë, marrow, vertebral bodies
    TEETH = 7
    AIR_INTERNAL = 8  # sinuses, mastoid cells, nasal cavity, airway
    SHORT_T2 = 9  # dura, falx, tendons, ligaments, fascia: dark on bone MR, soft tissue on CT
    SUTURE = 10  # open cranial sutures and fontanelle (fibrous membrane)
    EYE = 11  # vitreous
    DISC = 12  # intervertebral discs
    MUCUS = 13  # mucoid secretions and fluid in a sinus
    BLOOD = 14  # haemorrhage
    METAL = 15  # dental fillings, titanium plates and screws: a signal void on MR


def tooth_centres(jaw_scale: float = 1.0) -> list[tuple[float, float, float]]:
    """Head-frame centres of the 20 teeth: 0-9 upper arch, 10-19 lower (the mandible's, scaled
    by ``jaw_scale`` about the temporomandibular joints)."""
    upper, lower = [], []
    for x in np.linspace(-24, 24, 10):
        y = -76.0 + 0.022 * x * x
        upper.append((float(x), y + 2, -53.0))
        lower.append(jaw_point((float(x), y, -66.0), jaw_scale))
    return upper + lower


CRANIUM_CENTRE = (0.0, 10.0, 20.0)  # the vault: an ellipsoid (outer table surface)
CRANIUM_AXES = (72.0, 92.0, 84.0)
JAW_PIVOT = (0.0, -2.0, -30.0)  # between the temporomandibular joints


def jaw_point(p: tuple[float, float, float], jaw_scale: float) -> tuple[float, float, float]:
    """A point of the mandible moved as the jaw is scaled about :data:`JAW_PIVOT`."""
    return (
        JAW_PIVOT[0] + (p[0] - JAW_PIVOT[0]) * jaw_scale,
        JAW_PIVOT[1] + (p[1] - JAW_PIVOT[1]) * jaw_scale,
        JAW_PIVOT[2] + (p[2] - JAW_PIVOT[2]) * jaw_scale,
    )


def sinus_cavities(
    frontal: float, maxillary_left: float, maxillary_right: float, sphenoid: float
) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """(centre, semi-axes) of the frontal, left and right maxillary, and sphenoid sinus."""
    return [
        ((0.0, -80.0, 26.0), (15.0 * frontal, 6.0 * frontal, 10.0 * frontal)),
        (
            (25.0, -56.0, -26.0),
            (13.0 * maxillary_left, 17.0 * maxillary_left, 15.0 * maxillary_left),
        ),
        (
            (-25.0, -56.0, -26.0),
            (13.0 * maxillary_right, 17.0 * maxillary_right, 15.0 * maxillary_right),
        ),
        ((0.0, -28.0, -12.0), (12.0 * sphenoid, 10.0 * sphenoid, 9.0 * sphenoid)),
    ]


class Frame:
    """Head-frame coordinates of every voxel of a grid, with the shape primitives on them."""

    def __init__(
        self,
        points: F32,
        shape: tuple[int, int, int],
        rng: np.random.Generator,
        *,
        local_to_index: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
    ) -> None:
        self.x = points[..., 0].reshape(shape)
        self.y = points[..., 1].reshape(shape)
        self.z = points[..., 2].reshape(shape)
        self.shape = shape
        self.rng = rng
        # (matrix, offset) with index = (local - offset) @ matrix: lets a primitive work only
        # inside the grid block that can hold it; None evaluates every voxel
        self._to_index = local_to_index

    def _box(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[slice, slice, slice]:
        """The block of the grid holding the head-frame box [lo, hi] (all of it without a map)."""
        if self._to_index is None:
            return (slice(None), slice(None), slice(None))
        lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        corners = np.array(
            [
                [a, b, c]
                for a in (lo_a[0], hi_a[0])
                for b in (lo_a[1], hi_a[1])
                for c in (lo_a[2], hi_a[2])
            ]
        )
        matrix, offset = self._to_index
        idx = (corners - offset) @ matrix
        start = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, self.shape)
        stop = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 2, 0, self.shape)
        return (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))

    def _within(self, box: tuple[slice, slice, slice], inside: Mask) -> Mask:
        mask = np.zeros(self.shape, dtype=bool)
        mask[box] = inside
        return mask

    def ellipsoid_radius(self, c: tuple[float, float, float], a: tuple[float, float, float]) -> F32:
        """Normalised radius: 1 on the surface of the ellipsoid (centre c, semi-axes a)."""
        r2 = ((self.x - c[0]) / a[0]) ** 2 + ((self.y - c[1]) / a[1]) ** 2
        r2 += ((self.z - c[2]) / a[2]) ** 2
        return np.sqrt(r2)

    def ellipsoid(self, c: tuple[float, float, float], a: tuple[float, float, float]) -> Mask:
        box = self._box(np.subtract(c, a), np.add(c, a))
        x, y, z = self.x[box], self.y[box], self.z[box]
        r2 = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2
        return self._within(box, r2 <= 1.0)

    def cylinder_z(
        self, c: tuple[float, float], a: tuple[float, float], z0: float, z1: float
    ) -> Mask:
        box = self._box((c[0] - a[0], c[1] - a[1], z0), (c[0] + a[0], c[1] + a[1], z1))
        x, y, z = self.x[box], self.y[box], self.z[box]
        r2 = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2
        return self._within(box, (r2 <= 1.0) & (z >= z0) & (z <= z1))

    def capsule(
        self, p0: tuple[float, float, float], p1: tuple[float, float, float], radius: float
    ) -> Mask:
        """Points within `radius` of the segment p0-p1."""
        a = np.asarray(p0, dtype=np.float32)
        d = np.asarray(p1, dtype=np.float32) - a
        box = self._box(np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius)
        x, y, z = self.x[box], self.y[box], self.z[box]
        length2 = float(d @ d)
        t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2
        dist2 += (z - a[2] - t * d[2]) ** 2
        return self._within(box, dist2 <= radius * radius)

    def smooth_noise(self, cells: int = 5, extent: float = 130.0) -> F32:
        """A smooth random field in about [-1, 1] over the head (trilinear lattice noise)."""
        lattice = self.rng.uniform(-1.0, 1.0, size=(cells + 1,) * 3)
        lattice = ndimage.gaussian_filter(lattice, 0.7)
        lattice /= max(float(np.abs(lattice).max()), 1e-6)
        coords = [
            np.clip((v + extent) / (2 * extent), 0.0, 1.0) * cells for v in (self.x, self.y, self.z)
        ]
        field = ndimage.map_coordinates(lattice, coords, order=1, mode="nearest")
        return np.asarray(field, dtype=np.float32)

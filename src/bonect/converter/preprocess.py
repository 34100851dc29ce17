"""The one preprocessing shared by inference and training, and its exact inverse.

Steps: a head mask from the MR alone; intensity normalisation by the soft-tissue peak; then
resampling onto a *model cube*: an isotropic, axis-aligned (LPS) cube of ``size``³ voxels that
is the smallest cube around the head mask plus a margin. Resampling straight onto that cube
makes the volume isotropic (as the paper did before slicing), crops the square around the mask
in every plane, and resizes to the model input, in one interpolation; any acquisition plane or
oblique orientation lands in the same anatomical frame. The cube's axes are
(superior→inferior, anterior→posterior, right→left), so ``cube[k]`` is an axial slice as a
radiologist displays it, ``cube[:, j]`` a coronal one and ``cube[:, :, i]`` a sagittal one.
The inverse samples the cube back onto the MR grid.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bonect.converter.volume import Volume

PREPROCESSING_VERSION = "cube-1"
F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
_G = TypeVar("_G", bound=np.generic)

# LPS directions of the cube's axes (slice, row, column): S→I, A→P, R→L.
_CUBE_AXES = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T


@dataclass(frozen=True)
class Cube:
    """The model cube: where it sits in patient space and its voxel size."""

    size: int
    affine: npt.NDArray[np.float64]

    @property
    def spacing_mm(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))


def head_mask(mr: F32, spacing: tuple[float, float, float]) -> Mask:
    """Head (body) mask from the MR alone: Otsu threshold, largest component, closed, filled.

    The Gaussian, the histogram and the in-slice filling run in slabs on several threads
    (:func:`set_resample_threads`), each exactly what the whole would give."""
    smooth = gaussian_in_slabs(mr.astype(np.float32), sigma=1.0)
    threshold = otsu_threshold(smooth)
    mask = largest_component(smooth > threshold * 0.5)
    if not mask.any():
        return mask
    # close dark structures inside the head (bone, sinuses, airway) and fill what stays enclosed
    mask = close_head(mask, spacing)
    mask = fill_holes(mask, FACES_3D)
    return fill_holes(mask, FACES_IN_SLICE)  # airways open to the outside: slice by slice too


def largest_component(mask: Mask) -> Mask:
    """The largest connected part of ``mask`` (face and edge neighbours: scipy's default)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return np.asarray(labels == (int(np.argmax(sizes[1:])) + 1), dtype=bool)


FACES_3D = ndimage.generate_binary_structure(3, 1)
FACES_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
FACES_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes(mask: Mask, structure: Mask) -> Mask:
    """``mask`` with every background region that does not reach the border filled.

    The same result as :func:`scipy.ndimage.binary_fill_holes` (with ``structure`` the
    connectivity of the background), computed by one labelling instead of a dilation repeated
    until nothing changes. With :data:`FACES_IN_SLICE` every slice ``mask[k]`` is filled on its
    own, as ``binary_fill_holes(mask[k])`` would.
    """
    in_plane_only = not structure[0].any() and not structure[2].any()
    if in_plane_only and mask.shape[0] > 1:  # slices are independent: fill them in slabs
        out = np.empty_like(mask, dtype=bool)

        def slab(start: int, stop: int) -> None:
            out[start:stop] = _fill_one_slab(mask[start:stop], structure)

        in_slabs(mask.shape[0], slab)
        return out
    return _fill_one_slab(mask, structure)


def _fill_one_slab(mask: Mask, structure: Mask) -> Mask:
    background, _ = ndimage.label(~mask, structure=structure)
    in_plane_only = not structure[0].any() and not structure[2].any()
    faces = [background[:, 0], background[:, -1], background[:, :, 0], background[:, :, -1]]
    if not in_plane_only:
        faces += [background[0], background[-1]]
    outside = np.zeros(int(background.max()) + 1, dtype=bool)
    outside[np.unique(np.concatenate([f.ravel() for f in faces]))] = True
    outside[0] = True  # label 0: the mask itself
    return np.asarray(mask | ~outside[background], dtype=bool)


CLOSING_RADIUS_MM = 6.0
"""Dark structures narrower than about twice this (bone, sinus walls, airway) join the head."""

CLOSING_GRID_MM = 2.0
"""The closing runs on a grid no finer than this: its cost grows with the ball's voxel count."""


def close_head(mask: Mask, spacing: tuple[float, float, float]) -> Mask:
    """Morphological closing of the head by a ball of :data:`CLOSING_RADIUS_MM`.

    On grids coarser than :data:`CLOSING_GRID_MM` (every phantom and most bone MR) it is the
    exact closing. On finer grids the cost of the exact closing grows with the ball's voxel
    count (a 0.45 mm grid: about 70 minutes for 512 × 512 × 400), so the closing runs on
    blocks of about 2 mm (a block is in the mask when half of it is), and what it adds, shrunk
    by one block so that it stays inside the head's outline, is added to the fine mask: the
    outline stays the fine one, dark structures inside are filled as before.
    """
    blocks = tuple(max(1, int(CLOSING_GRID_MM // s)) for s in spacing)
    if blocks == (1, 1, 1):
        return _close(mask, spacing)
    b0, b1, b2 = blocks
    shape = mask.shape
    padded = np.zeros([-(-n // b) * b for n, b in zip(shape, blocks, strict=True)], dtype=bool)
    padded[: shape[0], : shape[1], : shape[2]] = mask
    n0, n1, n2 = (n // b for n, b in zip(padded.shape, blocks, strict=True))
    counts = np.zeros((n0, n1, n2), dtype=np.int32)
    for k in range(b0):  # one block offset at a time: no full-size temporaries
        counts += padded[k::b0].reshape(n0, n1, b1, n2, b2).sum(axis=(2, 4), dtype=np.int32)
    small = counts * 2 >= b0 * b1 * b2
    coarse = (spacing[0] * b0, spacing[1] * b1, spacing[2] * b2)
    inner = ndimage.binary_erosion(_close(small, coarse))
    up = inner.repeat(b0, 0)[: shape[0]].repeat(b1, 1)[:, : shape[1]].repeat(b2, 2)
    return np.asarray(mask | up[:, :, : shape[2]], dtype=bool)


def _close(mask: Mask, spacing: tuple[float, float, float]) -> Mask:
    structure = _ball(CLOSING_RADIUS_MM, spacing)
    pad = [(s // 2, s // 2) for s in structure.shape]
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=structure)
    return np.asarray(closed[tuple(slice(p, -p if p else None) for p, _ in pad)], dtype=bool)


def otsu_threshold(image: F32, bins: int = 256) -> float:
    """Otsu's threshold of an image's histogram (counted in slabs, summed: the same counts)."""
    hist, edges = histogram_in_slabs(image, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _ball(radius_mm: float, spacing: tuple[float, float, float]) -> Mask:
    half = [max(1, round(radius_mm / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(dist2 <= 1.0)


def soft_tissue_peak(mr: F32, mask: Mask) -> float:
    """The MR value of soft tissue: the histogram mode above the bone/air range inside the mask."""
    values = mr[mask]
    if values.size == 0:
        return 1.0
    high = float(np.percentile(values, 99.5))
    if high <= 0:
        return 1.0
    hist, edges = np.histogram(values, bins=128, range=(0.0, high))
    hist = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
    lower = int(0.3 * len(hist))  # the soft-tissue peak lies above bone and air
    peak = lower + int(np.argmax(hist[lower:]))
    return float((edges[peak] + edges[peak + 1]) / 2)


def normalise(mr: F32, mask: Mask) -> F32:
    """MR scaled so that soft tissue is 1."""
    return (mr / np.float32(soft_tissue_peak(mr, mask))).astype(np.float32)


def model_cube(volume: Volume, mask: Mask, size: int, *, margin_mm: float = 6.0) -> Cube:
    """The smallest axis-aligned cube (plus a margin) around the mask, sampled at size³."""
    ends = _bounding_box(mask) or [(0, n - 1) for n in mask.shape]
    corners = np.array(
        [[a, b, c] for a in ends[0] for b in ends[1] for c in ends[2]], dtype=np.float64
    )
    pts = volume.index_to_patient(corners) @ _CUBE_AXES  # in cube-axis coordinates
    lo, hi = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    side = float(np.max(hi - lo))
    centre = (lo + hi) / 2
    step = side / size
    start = centre - side / 2 + step / 2  # centre of the first voxel, in cube-axis coordinates
    affine = np.eye(4)
    affine[:3, :3] = _CUBE_AXES * step
    affine[:3, 3] = _CUBE_AXES @ start
    return Cube(size=size, affine=affine)


def _bounding_box(mask: Mask) -> list[tuple[int, int]] | None:
    """First and last index of ``mask``'s True voxels along each axis; None if there are none.

    From the projections of the mask on each axis: no index array of every voxel (at
    512 x 512 x 400 that was 2 s and up to 1 GB)."""
    ends = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        (present,) = np.nonzero(np.any(mask, axis=others))
        if present.size == 0:
            return None
        ends.append((int(present[0]), int(present[-1])))
    return ends


def to_cube(volume: Volume, cube: Cube, *, order: int = 1, cval: float = 0.0) -> F32:
    """Sample `volume` on the cube grid (trilinear by default)."""
    matrix = np.linalg.inv(volume.affine) @ cube.affine  # cube index -> volume index
    image = np.asarray(volume.array, dtype=np.float32)
    return _resample(image, matrix, (cube.size,) * 3, order, cval)


def from_cube(cube_array: F32, cube: Cube, like: Volume, *, order: int = 1, cval: float) -> F32:
    """The inverse of :func:`to_cube`: sample a cube array back onto the grid of `like`."""
    matrix = np.linalg.inv(cube.affine) @ like.affine  # volume index -> cube index
    return _resample(cube_array.astype(np.float32), matrix, like.shape, order, cval)


_resample_threads = 0


def set_resample_threads(threads: int) -> None:
    """Use ``threads`` threads to prepare (head mask) and to resample to and from the cube
    (0: one per available core)."""
    global _resample_threads
    _resample_threads = max(0, threads)


def _threads() -> int:
    return _resample_threads or len(os.sched_getaffinity(0))


def in_slabs(n: int, slab: Callable[[int, int], None]) -> None:
    """Call ``slab(start, stop)`` for consecutive ranges of ``0..n`` on :func:`_threads` threads
    (scipy's ndimage and numpy's reductions release the GIL); in this thread when one."""
    bounds = np.linspace(0, n, min(_threads(), n) + 1).astype(int)
    if len(bounds) <= 2:
        slab(0, n)
        return
    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        list(pool.map(slab, bounds[:-1], bounds[1:]))


GAUSSIAN_TRUNCATE = 4.0  # scipy's default: the kernel reaches int(4 sigma + 0.5) voxels


def gaussian_in_slabs(image: F32, sigma: float) -> F32:
    """``ndimage.gaussian_filter(image, sigma)``, computed in slabs along the first axis.

    Each slab is filtered with the kernel's reach of neighbouring slices around it and keeps
    its own part: every voxel sees exactly the neighbours it sees in the whole, and the volume's
    own edges are reflected as before. The result is identical (a test checks it)."""
    reach = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    out = np.empty_like(image)
    n = image.shape[0]

    def slab(start: int, stop: int) -> None:
        low, high = max(0, start - reach), min(n, stop + reach)
        filtered = ndimage.gaussian_filter(image[low:high], sigma, truncate=GAUSSIAN_TRUNCATE)
        out[start:stop] = filtered[start - low : stop - low]

    in_slabs(n, slab)
    return out


def histogram_in_slabs(
    image: F32, bins: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``np.histogram(image, bins)`` (range: the image's min and max), counted in slabs."""
    first, last = image.min(), image.max()  # in the image's type, as numpy takes them itself
    _, edges = np.histogram(np.empty(0, dtype=image.dtype), bins=bins, range=(first, last))
    parts: list[npt.NDArray[np.int64]] = []
    lock = threading.Lock()

    def slab(start: int, stop: int) -> None:
        counts, _ = np.histogram(image[start:stop], bins=bins, range=(first, last))
        with lock:
            parts.append(counts)

    in_slabs(image.shape[0], slab)
    return np.sum(parts, axis=0).astype(np.int64), edges


def _resample(
    image: F32,
    matrix: npt.NDArray[np.float64],
    shape: tuple[int, ...],
    order: int,
    cval: float,
) -> F32:
    """``affine_transform`` of ``image`` onto ``shape``, in slabs of output rows on several threads.

    scipy's ``affine_transform`` runs on one core but releases the GIL; every output voxel is
    computed from its own coordinates, so slabs computed apart are exactly the whole.
    """
    out = np.empty(shape, dtype=np.float32)

    def slab(start: int, stop: int) -> None:
        ndimage.affine_transform(
            image,
            matrix[:3, :3],
            offset=matrix[:3, 3] + matrix[:3, 0] * start,  # output row `start` is row 0 here
            output_shape=(stop - start, *shape[1:]),
            output=out[start:stop],
            order=order,
            mode="constant",
            cval=cval,
            prefilter=False,
        )

    in_slabs(shape[0], slab)
    return out


def model_input(normalised_cube: F32) -> F32:
    """Map normalised MR (soft tissue = 1) to the network's [0, 1] input."""
    return np.asarray(np.clip(normalised_cube / 2.0, 0.0, 1.0), dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """An MR volume made ready for the model: cube input, head mask, and where the cube is."""

    cube: Cube
    image: F32  # model input in [0, 1], shape (size, size, size)
    mask: Mask  # head mask on the MR grid
    cube_mask: Mask  # head mask on the cube


def prepare(mr: Volume, size: int) -> Prepared:
    """Mask, normalise and resample an MR volume onto its model cube."""
    data = np.asarray(mr.array, dtype=np.float32)
    mask = head_mask(data, mr.spacing)
    norm = normalise(data, mask)
    cube = model_cube(mr, mask, size)
    image = model_input(to_cube(mr.with_array(norm), cube))
    cube_mask = to_cube(mr.with_array(mask.astype(np.float32)), cube) > 0.5
    return Prepared(cube=cube, image=image, mask=mask, cube_mask=cube_mask)


def cube_round_trip(volume: Volume, prepared: Prepared, like: Volume, *, cval: float) -> F32:
    """``volume`` sampled onto the model cube and back onto the grid of ``like``, outside the
    head set to ``cval``: what a perfect model at this input size could give at best, since
    every prediction passes through the cube. Detail finer than the cube's voxel is lost."""
    back = from_cube(to_cube(volume, prepared.cube, cval=cval), prepared.cube, like, cval=cval)
    back[~prepared.mask] = cval
    return back


# Planes as axes of the cube.
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def slices(cube_array: npt.NDArray[np.generic], plane: str) -> npt.NDArray[np.generic]:
    """The cube as a stack of 2D slices of one plane: shape (n, size, size)."""
    return np.moveaxis(cube_array, PLANE_AXIS[plane], 0)


def with_neighbours(stack: npt.NDArray[_G], context: int, which: npt.ArrayLike) -> npt.NDArray[_G]:
    """Slices ``which`` of a stack (n, h, w), each with its ``context`` neighbours on either
    side as channels: shape (len(which), 2·context + 1, h, w), the slice itself in the middle
    channel (the 2.5D input; context 0 gives one channel). Beyond the first and last slice the
    edge slice is repeated, as outside the cube there is only what the cube's edge shows."""
    offsets = np.arange(-context, context + 1)
    rows = np.clip(np.asarray(which, dtype=np.int64)[:, None] + offsets, 0, len(stack) - 1)
    picked: npt.NDArray[_G] = stack[rows]
    return picked


def unslice(stack: npt.NDArray[np.generic], plane: str) -> npt.NDArray[np.generic]:
    """Inverse of :func:`slices`."""
    return np.moveaxis(stack, 0, PLANE_AXIS[plane])

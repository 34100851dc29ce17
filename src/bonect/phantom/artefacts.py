"""MR artefacts a bone-MR model meets on real scanners: Gibbs ringing and motion ghosts.

Both act in k-space along the phase-encoding axis of a real-valued image (the magnitude
image's signal before noise): ringing cuts the outer part of k-space, as a short acquisition
matrix does; motion moves the head for a share of the phase-encoding lines, which puts
ghosts of every edge along that axis.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def gibbs_ringing(image: F32, *, axis: int, cut: float) -> F32:
    """``image`` with the outer ``cut`` share of its spatial frequencies along ``axis`` removed."""
    if not 0.0 < cut < 1.0:
        return image
    spectrum = np.fft.fft(image, axis=axis)
    n = image.shape[axis]
    keep = np.abs(np.fft.fftfreq(n)) <= 0.5 * (1.0 - cut)
    shape = [1] * image.ndim
    shape[axis] = n
    spectrum *= keep.reshape(shape)
    return np.asarray(np.real(np.fft.ifft(spectrum, axis=axis)), dtype=np.float32)


def motion_ghosts(
    image: F32, axis: int, share: float, shift_voxels: float, rng: np.random.Generator
) -> F32:
    """The magnitude of ``image`` acquired with ``share`` of its phase-encoding lines (along
    ``axis``) taken while the head sat ``shift_voxels`` further along that axis."""
    if share <= 0.0 or shift_voxels == 0.0:
        return image
    n = image.shape[axis]
    spectrum = np.fft.fft(image, axis=axis)
    frequencies = np.fft.fftfreq(n)
    moved = rng.random(n) < share
    phase = np.where(moved, np.exp(-2j * np.pi * frequencies * shift_voxels), 1.0)
    shape = [1] * image.ndim
    shape[axis] = n
    spectrum *= phase.reshape(shape)
    return np.asarray(np.abs(np.fft.ifft(spectrum, axis=axis)), dtype=np.float32)

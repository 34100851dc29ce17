"""Proposed fixes, tried from the benchmarks without touching ``src/``.

Each function here is a drop-in candidate for a function in ``src/bonect``; a benchmark run
with ``--what-if NAME`` patches it in (in its child processes only) and labels its rows
``what-if``. Nothing here is used by bonect itself; the report says which change to make.
Applied in ``src/`` since (2026-11-29): the closing on ~2 mm blocks (as in ``mask-closing``,
keeping the fine outline), the dataset handed to the sink (``sink-dataset``), and the file's
bytes sent as stored (was ``send-path``); the candidates stay here for comparison.

``mask``: :func:`bonect.converter.preprocess.head_mask` works at the MR's own resolution and
closes the mask with a 6 mm ball (``ndimage.binary_closing``), whose cost grows with voxels x
ball voxels: 23 s of 27 s at 256 x 256 x 200 here, about 60x that at 512 x 512 x 400 (ball of
6885 voxels). The candidate computes the same mask (the same steps: smoothing, Otsu, largest
component, closing, fills) on a grid of about 2 mm (block means of the MR, slab by slab) and
brings it back to the MR grid by repeating blocks: everything but two passes over the full
volume becomes ~60x smaller. ``mask-closing`` keeps the full-resolution mask and does only
the closing on the coarse grid.

``sink-dataset``: :meth:`bonect.daemon.node.CatalogSink.record` reads back the header of the
file the SCP has just written (``dcmread(path, stop_before_pixels=True)``), although the
handler holds the decoded dataset already. The candidate hands ``event.dataset`` down (here:
kept in a thread-local by the handler and returned by the module's ``dcmread``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bonect.converter.preprocess import head_mask as _EXACT_HEAD_MASK  # before any patching

Mask = npt.NDArray[np.bool_]
COARSE_MM = 2.0


def _blocks(spacing: tuple[float, float, float], coarse_mm: float) -> tuple[int, int, int]:
    b = [max(1, int(coarse_mm / s + 1e-6)) for s in spacing]
    return b[0], b[1], b[2]


def close_coarse(
    mask: Mask,
    spacing: tuple[float, float, float],
    radius_mm: float,
    *,
    coarse_mm: float = COARSE_MM,
) -> Mask:
    """``mask`` closed by a ``radius_mm`` ball, computed on blocks of about ``coarse_mm``."""
    from bonect.converter.preprocess import _ball

    blocks = _blocks(spacing, coarse_mm)
    shape = mask.shape
    padded_shape = [-(-n // b) * b for n, b in zip(shape, blocks, strict=True)]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = mask
    grouped = padded.reshape(
        padded_shape[0] // blocks[0],
        blocks[0],
        padded_shape[1] // blocks[1],
        blocks[1],
        padded_shape[2] // blocks[2],
        blocks[2],
    )
    small = grouped.mean(axis=(1, 3, 5)) >= 0.5
    small_spacing = (spacing[0] * blocks[0], spacing[1] * blocks[1], spacing[2] * blocks[2])
    structure = _ball(radius_mm, small_spacing)
    pad = [(s // 2, s // 2) for s in structure.shape]
    closed = ndimage.binary_closing(np.pad(small, pad), structure=structure)
    closed = closed[tuple(slice(p, -p if p else None) for p, _ in pad)]
    up = closed.repeat(blocks[0], 0).repeat(blocks[1], 1).repeat(blocks[2], 2)
    return np.asarray(mask | up[: shape[0], : shape[1], : shape[2]], dtype=bool)


def block_mean(
    volume: npt.NDArray[np.float32], blocks: tuple[int, int, int]
) -> npt.NDArray[np.float32]:
    """Means over blocks (the last, partial blocks included), one slab at a time."""
    b0, b1, b2 = blocks
    n0, n1, n2 = (-(-n // b) for n, b in zip(volume.shape, blocks, strict=True))
    out = np.empty((n0, n1, n2), dtype=np.float32)
    for k in range(n0):
        slab = np.asarray(volume[k * b0 : (k + 1) * b0], dtype=np.float32)
        padded = np.zeros((b0, n1 * b1, n2 * b2), dtype=np.float32)
        counts = np.zeros_like(padded)
        padded[: slab.shape[0], : slab.shape[1], : slab.shape[2]] = slab
        counts[: slab.shape[0], : slab.shape[1], : slab.shape[2]] = 1.0
        sums = padded.reshape(b0, n1, b1, n2, b2).sum(axis=(0, 2, 4))
        out[k] = sums / np.maximum(counts.reshape(b0, n1, b1, n2, b2).sum(axis=(0, 2, 4)), 1)
    return out


def head_mask(mr: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> Mask:
    """The head mask computed on a ~2 mm grid and repeated back onto the MR grid."""
    exact = _EXACT_HEAD_MASK
    blocks = _blocks(spacing, COARSE_MM)
    if blocks == (1, 1, 1):
        return exact(mr, spacing)
    small_spacing = (spacing[0] * blocks[0], spacing[1] * blocks[1], spacing[2] * blocks[2])
    small = exact(block_mean(mr, blocks), small_spacing)
    up = small.repeat(blocks[0], 0)[: mr.shape[0]]
    up = up.repeat(blocks[1], 1)[:, : mr.shape[1]]
    return np.ascontiguousarray(up.repeat(blocks[2], 2)[:, :, : mr.shape[2]])


def head_mask_closing(mr: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> Mask:
    """:func:`bonect.converter.preprocess.head_mask` with :func:`close_coarse` for the closing."""
    from bonect.converter.preprocess import otsu_threshold

    smooth = ndimage.gaussian_filter(mr.astype(np.float32), sigma=1.0)
    threshold = otsu_threshold(smooth)
    mask = smooth > threshold * 0.5
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.asarray(mask, dtype=bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = close_coarse(mask, spacing, 6.0)
    mask = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return np.asarray(mask, dtype=bool)


_handled = threading.local()


def apply(name: str) -> None:
    """Patch candidate ``name`` into the imported bonect modules (this process only)."""
    if name in ("mask", "mask-closing"):
        import bonect.converter.classical as classical
        import bonect.converter.preprocess as preprocess

        candidate = head_mask if name == "mask" else head_mask_closing
        preprocess.head_mask = candidate  # type: ignore[assignment]
        classical.head_mask = candidate  # type: ignore[assignment]
    elif name == "sink-dataset":
        import bonect.daemon.node as node
        import bonect.daemon.scp as scp

        store, read = scp._Handlers._store, node.dcmread

        def _store(self: Any, event: Any) -> int:
            _handled.dataset = event.dataset
            try:
                return int(store(self, event))
            finally:
                _handled.dataset = None

        def dcmread(path: Any, *args: Any, **kwargs: Any) -> Any:
            dataset = getattr(_handled, "dataset", None)
            return dataset if dataset is not None else read(path, *args, **kwargs)

        scp._Handlers._store = _store  # type: ignore[method-assign]
        node.dcmread = dcmread  # type: ignore[assignment]
    elif name:
        raise ValueError(f"no what-if named {name!r}")

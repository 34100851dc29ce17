"""How a registration is judged: the quality score for the trainer, the overlay for a person.

The score is :func:`registration_quality` (its docstring says how it is computed and why).
The overlay (:func:`overlay_png`) shows three orthogonal planes (axial, coronal, sagittal)
through the centre of the head, oriented as a radiologist displays them: the MR in grey, the
CT's bone (above 300 HU) in translucent orange and the CT's outline (-500 HU) as a cyan line.
On a good registration the orange lies on the dark bone of the MR and the cyan line on the
skin; the title gives the score and the threshold under which the pair is set aside.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.colors import ListedColormap
from scipy import ndimage, stats

from bonect.converter.preprocess import (
    FACES_3D,
    FACES_IN_SLICE,
    fill_holes,
    head_mask,
    largest_component,
    otsu_threshold,
)
from bonect.converter.volume import Volume

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

DEFAULT_THRESHOLD = 0.7  # pairs scoring below this are set aside (see registration_quality)
SCORE_MM = 3.0  # voxel size the score is computed at (speed, and comparable across grids)
SKIN_MM = 4.0  # the bone term looks this far inside the head and deeper
BODY_HU = -500.0  # CT body: above this
BONE_HU = 300.0  # CT bone: above this
SOFT_HU = (-200.0, 200.0)  # CT soft tissue (no bone, no air): inside this range

# -- the score ---------------------------------------------------------------------------------


def ct_body_mask(ct: F32) -> Mask:
    """CT body: above -500 HU, largest component, holes (sinuses, airway) filled per slice too."""
    mask = fill_holes(largest_component(ct > BODY_HU), FACES_3D)
    return fill_holes(mask, FACES_IN_SLICE)


def dice(a: Mask, b: Mask) -> float:
    """The Dice coefficient of two masks (0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def _darker_auc(low: F32, high: F32) -> float:
    """P(a value of `low` < a value of `high`) (Mann-Whitney AUC); 0.5 when either is empty."""
    if low.size == 0 or high.size == 0:
        return 0.5
    values = np.concatenate([low, high]).astype(np.float64)
    ranks = np.asarray(stats.rankdata(values), dtype=np.float64)  # ties share their mean rank
    u = float(ranks[: low.size].sum()) - low.size * (low.size + 1) / 2.0
    return 1.0 - u / (float(low.size) * float(high.size))


def _block_mean(
    array: F32, spacing: tuple[float, float, float]
) -> tuple[F32, tuple[float, float, float]]:
    """Averaged over blocks of whole voxels towards SCORE_MM (edge voxels that do not fill a
    block are dropped), with the new voxel size."""
    f = [max(1, int(SCORE_MM / s + 1e-6)) for s in spacing]
    n = [size // k for size, k in zip(array.shape, f, strict=True)]
    if f == [1, 1, 1]:
        return array, spacing
    blocks = array[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    blocks = blocks.reshape(n[0], f[0], n[1], f[1], n[2], f[2])
    mean = np.asarray(blocks.mean(axis=(1, 3, 5)), dtype=np.float32)
    return mean, (spacing[0] * f[0], spacing[1] * f[1], spacing[2] * f[2])


def quality_terms(mr: Volume, ct_on_mr: Volume) -> tuple[float, float]:
    """The two terms of :func:`registration_quality`: (outline Dice, bone contrast 2·AUC - 1)."""
    mr_array, spacing = _block_mean(np.asarray(mr.array, dtype=np.float32), mr.spacing)
    ct_array, _ = _block_mean(np.asarray(ct_on_mr.array, dtype=np.float32), mr.spacing)
    head = head_mask(mr_array, spacing)
    outline = dice(head, ct_body_mask(ct_array))
    # inside the head, away from the skin (partial volume with air looks like bone on bone MR)
    inner = ndimage.distance_transform_edt(head, sampling=spacing) > SKIN_MM
    bone = inner & (ct_array > BONE_HU)
    soft = inner & (ct_array > SOFT_HU[0]) & (ct_array < SOFT_HU[1])
    rng = np.random.default_rng(0)
    mr_bone, mr_soft = (_subsample(mr_array[m], rng) for m in (bone, soft))
    gini = max(0.0, 2.0 * _darker_auc(mr_bone, mr_soft) - 1.0)
    return outline, gini


def _subsample(values: F32, rng: np.random.Generator, most: int = 200_000) -> F32:
    if values.size <= most:
        return values
    return values[rng.choice(values.size, size=most, replace=False)]


def registration_quality(mr: Volume, ct_on_mr: Volume) -> float:
    """How well a CT on the MR grid fits the MR, in [0, 1]: higher is better.

    The geometric mean of two terms a physicist can check on the overlay:

    * **outline**: the Dice coefficient between the head mask from the MR alone
      (:func:`bonect.converter.preprocess.head_mask`) and the CT body mask (above -500 HU,
      holes filled). It catches gross failures (shifts, wrong field of view, a CT that is
      noise) but not a CT of another head of similar size: outlines of heads look alike.
    * **bone contrast**: inside the head (4 mm away from the skin), bone MR is dark where CT
      has bone. The term is 2·AUC − 1 (Gini) of "a voxel that is bone on the CT (above
      300 HU) is darker on the MR than a voxel that is soft tissue on the CT (-200..200 HU)",
      clipped at 0: 1 when every CT-bone voxel is darker than every CT-soft-tissue voxel, 0
      when MR intensity says nothing about CT bone (chance). Skull, skull base and teeth must
      land on the dark MR structures, so a few millimetres of error lower it clearly. It
      depends only on the ranks of MR values, so the bone-MR contrast (ZTE, UTE, GRE), the
      receiver gain and a smooth bias field barely matter.

    The geometric mean is high only when both are. Both are computed on voxels of about
    :data:`SCORE_MM` (block averages), so scores compare across acquisitions. On the phantom a
    correct registration scores 0.84-0.93, a 10 mm shift about 0.5, a 30 mm shift about 0.25,
    a noise CT about 0, another patient's CT placed without registration 0.3-0.66, registered
    0.27-0.48 when the heads differ in size. The score checks alignment, not identity: a CT
    of another phantom patient with a head of the same size registers and scores like the
    right one (the phantom's heads are one template); pairing by patient is the guard there.
    """
    if mr.shape != ct_on_mr.shape or not np.allclose(mr.affine, ct_on_mr.affine, atol=1e-3):
        raise ValueError("ct_on_mr must be on the grid of mr")
    outline, gini = quality_terms(mr, ct_on_mr)
    return float(np.sqrt(outline * gini))


# -- the overlay -------------------------------------------------------------------------------


# LPS directions of the display axes (slice, row, column): S→I, A→P, R→L, as in figures.py
_DISPLAY_AXES = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
_BONE_COLOUR = ListedColormap(["#ff8c00"])
_PLANES = ("axial", "coronal", "sagittal")


def _reorient(
    volume: Volume, arrays: list[npt.NDArray[np.float32]]
) -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
    """Arrays on the grid of `volume` permuted and flipped to the nearest display axes."""
    direction = volume.direction
    order, flips = [], []
    for axis in _DISPLAY_AXES:
        dots = axis @ direction
        best = int(np.argmax(np.abs(dots)))
        order.append(best)
        flips.append(bool(dots[best] < 0))
    out = []
    for array in arrays:
        data = np.transpose(array, order)
        for i, flip in enumerate(flips):
            if flip:
                data = np.flip(data, axis=i)
        out.append(np.ascontiguousarray(data))
    return out, np.asarray(volume.spacing, dtype=np.float64)[order]


def _cut(
    data: npt.NDArray[np.float32], plane: str, centre: tuple[int, int, int]
) -> npt.NDArray[np.float32]:
    k, j, i = centre
    cut = {"axial": data[k], "coronal": data[:, j], "sagittal": data[:, :, i]}[plane]
    return np.asarray(cut, dtype=np.float32)


def _aspect(plane: str, spacing: npt.NDArray[np.float64]) -> float:
    rows, cols = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[plane]
    return float(spacing[rows] / spacing[cols])


def overlay_png(
    mr: Volume,
    ct_on_mr: Volume,
    path: Path,
    *,
    title: str = "",
    score: float | None = None,
) -> Path:
    """Write the overlay of `ct_on_mr` (HU, on the MR grid) over `mr` to `path` (PNG).

    ``score`` is shown in the title; without it, :func:`registration_quality` is computed.
    Keep patient names and IDs out of ``title``: the file may travel.
    """
    if mr.shape != ct_on_mr.shape:
        raise ValueError(f"ct_on_mr {ct_on_mr.shape} is not on the MR grid {mr.shape}")
    if score is None:
        score = registration_quality(mr, ct_on_mr)
    mr_array = np.asarray(mr.array, dtype=np.float32)
    (mr_view, ct_view), spacing = _reorient(
        mr, [mr_array, np.asarray(ct_on_mr.array, dtype=np.float32)]
    )
    head = mr_view > 0.5 * otsu_threshold(mr_view)
    centre = ndimage.center_of_mass(head) if head.any() else tuple(s / 2 for s in head.shape)
    k, j, i = (int(np.rint(c)) for c in centre)
    high = float(np.percentile(mr_view[head], 99)) if head.any() else float(mr_view.max())
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.2))
    try:
        for ax, plane in zip(axes, _PLANES, strict=True):
            aspect = _aspect(plane, spacing)
            ct_plane = _cut(ct_view, plane, (k, j, i))
            ax.imshow(
                _cut(mr_view, plane, (k, j, i)), cmap="gray", vmin=0.0, vmax=high, aspect=aspect
            )
            bone = ct_plane > BONE_HU
            ax.imshow(
                np.ma.masked_where(~bone, bone.astype(np.float32)),
                cmap=_BONE_COLOUR,
                alpha=0.45,
                aspect=aspect,
                interpolation="nearest",
            )
            if (ct_plane > BODY_HU).any() and (ct_plane <= BODY_HU).any():
                ax.contour(ct_plane > BODY_HU, levels=[0.5], colors="cyan", linewidths=0.7)
            ax.set_title(plane, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        verdict = "kept" if score >= DEFAULT_THRESHOLD else "set aside"
        heading = f"registration score {score:.2f} ({verdict}; threshold {DEFAULT_THRESHOLD:.2f})"
        fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=10)
        fig.text(
            0.5,
            0.02,
            f"grey: bone MR   orange: CT bone > {BONE_HU:g} HU   cyan: CT outline ({BODY_HU:g} HU)",
            ha="center",
            fontsize=8,
        )
        fig.tight_layout(rect=(0.0, 0.04, 1.0, 1.0))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=72)
    finally:
        plt.close(fig)
    return path

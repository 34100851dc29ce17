"""What the paper lists as hard for a bone-MR model, painted into a phantom patient.

Dental fillings and titanium hardware (metal: the CT's highest number, a signal void with
blooming on MR), a craniotomy defect (bone replaced by soft tissue), an intracranial
haemorrhage, and mucoid secretions in the paranasal sinuses (a fluid level: air above, fluid
below; on bone MR both sinus air and dense bone are dark, fluid is not). Every place is drawn
with the patient's parameters (:mod:`bonect.phantom.variation`), so the CT session and the MR
session of one patient show the same lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bonect.phantom.shapes import CRANIUM_AXES, CRANIUM_CENTRE, Frame, Tissue, sinus_cavities

BONE = (Tissue.CORTICAL, Tissue.CANCELLOUS, Tissue.SUTURE)


@dataclass(frozen=True)
class Pathology:
    """The lesions and hardware of one patient (head frame, mm); none by default."""

    fillings: tuple[int, ...] = ()  # teeth (0-19, see shapes.tooth_centres) with a filling
    craniotomy: tuple[float, float, float, float] | None = None  # direction (x, y, z), radius
    plate: bool = False  # titanium plates and screws across the craniotomy's edge
    haemorrhage: tuple[float, float, float, float] | None = None  # centre (x, y, z), radius
    mucus: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # fill fraction of the
    # frontal, left and right maxillary, and sphenoid sinus

    @property
    def any(self) -> bool:
        return bool(
            self.fillings or self.craniotomy or self.haemorrhage or any(f > 0 for f in self.mucus)
        )


def paint_pathology(
    f: Frame,
    labels: npt.NDArray[np.uint8],
    pathology: Pathology,
    *,
    sinus_scales: tuple[float, float, float, float],
    teeth: list[tuple[float, float, float]],
    missing_teeth: tuple[int, ...] = (),
) -> None:
    """Paint ``pathology`` over finished anatomy (``teeth``: every tooth's centre, as
    :func:`~bonect.phantom.shapes.tooth_centres`; a missing tooth gets no filling)."""
    for cavity, fraction, scale in zip(
        sinus_cavities(*sinus_scales), pathology.mucus, sinus_scales, strict=True
    ):
        if fraction <= 0 or scale * min(cavity[1]) < 2.0:
            continue
        centre, axes = cavity
        level = centre[2] - axes[2] + 2 * axes[2] * fraction
        inside = f.ellipsoid(centre, axes) & (f.z <= level) & (labels == Tissue.AIR_INTERNAL)
        labels[inside] = Tissue.MUCUS
    if pathology.haemorrhage is not None:
        x, y, z, r = pathology.haemorrhage
        blood = f.ellipsoid((x, y, z), (r, 0.8 * r, 0.7 * r))
        labels[blood & np.isin(labels, (Tissue.BRAIN, Tissue.CSF))] = Tissue.BLOOD
    if pathology.craniotomy is not None:
        _paint_craniotomy(f, labels, pathology.craniotomy, plate=pathology.plate)
    for index in pathology.fillings:
        if 0 <= index < len(teeth) and index not in missing_teeth:
            c = teeth[index]
            occlusal = c[2] - 2.5 if index < 10 else c[2] + 2.5  # the biting surface
            labels[f.ellipsoid((c[0], c[1], occlusal), (1.7, 2.1, 1.8))] = Tissue.METAL


def _paint_craniotomy(
    f: Frame,
    labels: npt.NDArray[np.uint8],
    craniotomy: tuple[float, float, float, float],
    *,
    plate: bool,
) -> None:
    """A round defect of the vault around ``direction`` (bone to soft tissue), with plates."""
    direction = np.asarray(craniotomy[:3], dtype=np.float64)
    direction /= max(float(np.linalg.norm(direction)), 1e-9)
    radius = craniotomy[3]
    vx = f.x - CRANIUM_CENTRE[0]
    vy = f.y - CRANIUM_CENTRE[1]
    vz = f.z - CRANIUM_CENTRE[2]
    along = vx * direction[0] + vy * direction[1] + vz * direction[2]
    perp2 = vx * vx + vy * vy + vz * vz - along * along
    defect = (along > 0) & (perp2 < radius * radius) & np.isin(labels, BONE)
    labels[defect] = Tissue.SOFT
    if not plate:
        return
    # two plates across the rim, each a thin bar on the outer table with a screw at each end
    helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    across = np.cross(direction, helper)
    across /= np.linalg.norm(across)
    for sign in (-1.0, 1.0):
        inner = _vault_surface(direction * 1.0 + across * sign * (radius - 5.0), outward=1.2)
        outer = _vault_surface(direction * 1.0 + across * sign * (radius + 7.0), outward=1.2)
        labels[f.capsule(inner, outer, 0.8)] = Tissue.METAL
        screw_end = _vault_surface(direction * 1.0 + across * sign * (radius + 5.0), outward=-4.0)
        screw_head = _vault_surface(direction * 1.0 + across * sign * (radius + 5.0), outward=1.2)
        labels[f.capsule(screw_head, screw_end, 0.9)] = Tissue.METAL


def _vault_surface(
    towards: npt.NDArray[np.float64], *, outward: float
) -> tuple[float, float, float]:
    """The point of the cranium's outer surface seen from its centre along ``towards``, moved
    ``outward`` mm along the ray (negative: into the bone)."""
    unit = towards / max(float(np.linalg.norm(towards)), 1e-9)
    distance = 1.0 / float(np.sqrt(np.sum((unit / np.asarray(CRANIUM_AXES)) ** 2)))
    p = np.asarray(CRANIUM_CENTRE) + unit * (distance + outward)
    return (float(p[0]), float(p[1]), float(p[2]))

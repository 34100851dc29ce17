"""The head-and-neck anatomy of the phantom: tissue labels and bone mineralisation on any grid.

Every structure is an analytic shape in a head frame (millimetres; x to the patient's left,
y posterior, z superior, origin near the centre of the brain), scaled, rotated and shifted per
patient, and painted in order: later structures override earlier ones. See the package
docstring for the model and its parameters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bonect.phantom.pathology import Pathology, paint_pathology
from bonect.phantom.shapes import (
    CRANIUM_AXES,
    CRANIUM_CENTRE,
    Frame,
    Tissue,
    jaw_point,
    sinus_cavities,
    tooth_centres,
)

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PatientParams:
    """The per-patient random parameters of the phantom (drawn by :func:`draw_patient`)."""

    seed: int
    paediatric: bool
    scale: float  # overall head size relative to an adult
    mineralisation: float  # 0.3 (infant) .. 1.0 (adult): bone density, drives HU and MR signal
    skull_thickness_mm: float  # mean thickness of the cranial vault (adult frame)
    sutures_open: bool
    sinus_scale: float  # paranasal sinus size (small in children)
    mastoid_cells: int
    rotation_deg: tuple[float, float, float]  # head pose in the scanner (about x, y, z)
    shift_mm: tuple[float, float, float]
    # the wider families (bonect.phantom.variation) set these; the defaults are the classic phantom
    shape_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # head width, length, height
    jaw_scale: float = 1.0  # mandible and lower teeth about the temporomandibular joints
    sinus_scales: tuple[float, float, float, float] | None = None  # frontal, maxillary L/R,
    # sphenoid; None: all sinus_scale
    mastoid_cell_mm: tuple[float, float] = (1.5, 3.5)  # radius range of the mastoid air cells
    missing_teeth: tuple[int, ...] = ()  # 0-9 upper arch, 10-19 lower arch
    pathology: Pathology = field(default_factory=lambda: Pathology())


def draw_patient(seed: int) -> PatientParams:
    """Draw one patient's parameters from a seed (40 % paediatric, as in the paper's cohort)."""
    rng = np.random.default_rng(seed)
    paediatric = bool(rng.random() < 0.4)
    if paediatric:
        scale = float(rng.uniform(0.78, 0.9))
        mineralisation = float(rng.uniform(0.3, 0.6))
        thickness = float(rng.uniform(2.5, 4.0))
        sutures_open = bool(rng.random() < 0.8)
        sinus_scale = float(rng.uniform(0.3, 0.7))
        mastoid = int(rng.integers(0, 6))
    else:
        scale = float(rng.uniform(0.93, 1.05))
        mineralisation = float(rng.uniform(0.75, 1.0))
        thickness = float(rng.uniform(5.0, 8.0))
        sutures_open = False
        sinus_scale = float(rng.uniform(0.8, 1.2))
        mastoid = int(rng.integers(10, 22))
    rotation = tuple(float(v) for v in rng.uniform(-6.0, 6.0, size=3))
    shift = tuple(float(v) for v in rng.uniform(-5.0, 5.0, size=3))
    return PatientParams(
        seed=seed,
        paediatric=paediatric,
        scale=scale,
        mineralisation=mineralisation,
        skull_thickness_mm=thickness,
        sutures_open=sutures_open,
        sinus_scale=sinus_scale,
        mastoid_cells=mastoid,
        rotation_deg=(rotation[0], rotation[1], rotation[2]),
        shift_mm=(shift[0], shift[1], shift[2]),
    )


def rotation_matrix(degrees: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def render_anatomy(
    params: PatientParams,
    points: F32,
    shape: tuple[int, int, int],
    *,
    grid_affine: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.uint8], F32]:
    """Labels (:class:`Tissue`) and bone mineralisation (0..1) at LPS points on a grid.

    ``points`` has shape (n, 3) in LPS millimetres (n = product of ``shape``). Given the
    ``grid_affine`` the points came from, each shape is evaluated only in the block of the
    grid that can hold it (same result, several times faster).
    """
    rot = rotation_matrix(params.rotation_deg)
    shift = np.asarray(params.shift_mm, dtype=np.float64)
    scale = params.scale * np.asarray(params.shape_scale, dtype=np.float64)
    local = (points - shift.astype(np.float32)) @ rot.astype(np.float32)
    local /= scale.astype(np.float32)
    to_index = None
    if grid_affine is not None:  # local = index @ L + b
        linear = grid_affine[:3, :3].T @ rot / scale
        offset = (grid_affine[:3, 3] - shift) @ rot / scale
        to_index = (np.asarray(np.linalg.inv(linear), dtype=np.float64), offset)
    f = Frame(
        local.astype(np.float32),
        shape,
        np.random.default_rng(params.seed + 7919),
        local_to_index=to_index,
    )
    labels = np.zeros(shape, dtype=np.uint8)
    _paint_soft_tissue(f, labels)
    _paint_cranium(f, labels, params)
    _paint_skull_base_and_face(f, labels, params)
    _paint_neck(f, labels)
    if params.pathology.any:
        paint_pathology(
            f,
            labels,
            params.pathology,
            sinus_scales=params.sinus_scales or (params.sinus_scale,) * 4,
            teeth=tooth_centres(params.jaw_scale),
            missing_teeth=params.missing_teeth,
        )
    mineral = np.full(shape, params.mineralisation, dtype=np.float32)
    # thin and peripheral bone is less mineralised than thick bone: vary it smoothly
    mineral *= 1.0 + 0.12 * f.smooth_noise(cells=4)
    np.clip(mineral, 0.2, 1.0, out=mineral)
    return labels, mineral


def _paint_soft_tissue(f: Frame, labels: npt.NDArray[np.uint8]) -> None:
    head = f.ellipsoid((0, 8, 18), (80, 100, 92))
    face = f.ellipsoid((0, -25, -45), (60, 72, 58))
    neck = f.cylinder_z((0, 12), (56, 60), -200, -40)
    body = head | face | neck
    labels[body] = Tissue.FAT
    # skin and muscle: everything but a subcutaneous fat layer of 3-6 mm
    inner = f.ellipsoid((0, 8, 18), (75, 95, 87)) | f.ellipsoid((0, -25, -45), (55, 67, 53))
    inner |= f.cylinder_z((0, 12), (50, 54), -200, -40)
    labels[inner] = Tissue.SOFT
    skin = body & ~(
        f.ellipsoid((0, 8, 18), (78, 98, 90))
        | f.ellipsoid((0, -25, -45), (58, 70, 56))
        | f.cylinder_z((0, 12), (54, 58), -200, -40)
    )
    labels[skin] = Tissue.SOFT
    # temporalis fascia: a thin short-T2 sheet over the temporal squama
    fascia = (np.abs(f.ellipsoid_radius((0, 10, 20), (76, 96, 88)) - 1.0) < 0.012) & (
        (np.abs(f.x) > 45) & (f.z > -10) & (f.z < 45)
    )
    labels[fascia] = Tissue.SHORT_T2


def _paint_cranium(f: Frame, labels: npt.NDArray[np.uint8], p: PatientParams) -> None:
    centre, axes = CRANIUM_CENTRE, CRANIUM_AXES
    rho = f.ellipsoid_radius(centre, axes)
    mean_axis = float(np.mean(axes))
    thickness = p.skull_thickness_mm * (1.0 + 0.35 * f.smooth_noise(cells=6))  # varies over vault
    depth = (1.0 - rho) * mean_axis  # mm inside the outer table surface
    vault = (f.z > -12.0) | ((f.z > -30.0) & (f.y > 25.0))  # above the skull base; occiput lower
    table = np.minimum(1.6, thickness / 3.0)
    skull = vault & (depth >= 0) & (depth <= thickness)
    labels[skull] = Tissue.CORTICAL
    diploe = skull & (depth > table) & (depth < thickness - table)
    labels[diploe] = Tissue.CANCELLOUS
    intracranial = (depth > thickness) & ((f.z > -13.0) | ((f.y > 22.0) & (f.z > -38.0)))
    dura = intracranial & (depth <= thickness + 1.2)
    csf = intracranial & (depth > thickness + 1.2) & (depth <= thickness + 3.5)
    brain = intracranial & (depth > thickness + 3.5)
    labels[dura] = Tissue.SHORT_T2
    labels[csf] = Tissue.CSF
    labels[brain] = Tissue.BRAIN
    # falx cerebri and tentorium: thin dural sheets
    labels[brain & (np.abs(f.x) < 0.9) & (f.z > 0)] = Tissue.SHORT_T2
    labels[brain & (np.abs(f.z - (-8.0 + 0.15 * f.y)) < 0.8) & (f.y > 35)] = Tissue.SHORT_T2
    ventricles = f.ellipsoid((-9, 8, 18), (6, 22, 9)) | f.ellipsoid((9, 8, 18), (6, 22, 9))
    labels[ventricles & brain] = Tissue.CSF
    if p.sutures_open:
        gap = 1.2 + 1.5 * (1.0 - p.mineralisation)
        sagittal = (np.abs(f.x) < gap) & (f.z > 35)
        coronal = (np.abs(f.y - (-28.0 + 0.25 * f.z)) < gap) & (f.z > 10)
        lambdoid = (np.abs(f.y - (70.0 - 0.6 * f.z)) < gap) & (f.z > -5)
        fontanelle = f.ellipsoid((0, -22, 100), (14, 14, 30))
        labels[skull & (sagittal | coronal | lambdoid | fontanelle)] = Tissue.SUTURE


def _paint_skull_base_and_face(f: Frame, labels: npt.NDArray[np.uint8], p: PatientParams) -> None:
    s = p.sinus_scale
    # skull base: a thick plate with dense petrous ridges
    base = f.ellipsoid((0, 6, -20), (60, 72, 7)) & ~f.ellipsoid((0, 60, -20), (14, 14, 20))
    labels[base] = Tissue.CANCELLOUS
    labels[base & ~f.ellipsoid((0, 6, -20), (57, 69, 4.5))] = Tissue.CORTICAL
    for side in (-1.0, 1.0):
        labels[f.capsule((side * 20, 0, -20), (side * 48, 25, -24), 6.0)] = Tissue.CORTICAL
        # mastoid: a bone process full of small air cells
        mastoid_c = (side * 50.0, 28.0, -34.0)
        labels[f.ellipsoid(mastoid_c, (11, 13, 15))] = Tissue.CANCELLOUS
        labels[
            f.ellipsoid(mastoid_c, (11, 13, 15)) & ~f.ellipsoid(mastoid_c, (9.5, 11.5, 13.5))
        ] = Tissue.CORTICAL
        for _ in range(p.mastoid_cells):
            offset = f.rng.uniform(-1, 1, size=3) * np.array([7.0, 8.5, 10.0])
            cell = tuple(float(v) for v in np.asarray(mastoid_c) + offset)
            r = float(f.rng.uniform(*p.mastoid_cell_mm))
            labels[f.ellipsoid((cell[0], cell[1], cell[2]), (r, r, r))] = Tissue.AIR_INTERNAL
    # orbits: bony cone, fat, globe
    for side in (-1.0, 1.0):
        c = (side * 31.0, -70.0, 2.0)
        labels[f.ellipsoid(c, (19, 22, 18)) & (f.y > c[1] - 4)] = Tissue.CORTICAL
        labels[f.ellipsoid(c, (17, 20, 16))] = Tissue.FAT
        labels[f.ellipsoid((c[0], c[1] - 4, c[2]), (12, 12, 12))] = Tissue.EYE
        labels[f.capsule((side * 31, -60, 2), (side * 14, -25, -6), 2.2)] = Tissue.SHORT_T2
    # paranasal sinuses with thin bony walls
    fr, ml, mr, sp = p.sinus_scales or (s, s, s, s)
    for c, a in sinus_cavities(fr, ml, mr, sp):
        if min(a) < 2.0:
            continue
        wall = (a[0] + 1.6, a[1] + 1.6, a[2] + 1.6)
        labels[f.ellipsoid(c, wall)] = Tissue.CORTICAL
        labels[f.ellipsoid(c, a)] = Tissue.AIR_INTERNAL
    # ethmoid air cells: a honeycomb of small cells between the orbits
    ethmoid_box = f.ellipsoid((0, -58, 2), (9, 16, 11))
    labels[ethmoid_box] = Tissue.CORTICAL
    for _ in range(int(14 * s) + 2):
        c = (f.rng.uniform(-6, 6), f.rng.uniform(-70, -46), f.rng.uniform(-6, 10))
        r = float(f.rng.uniform(2.0, 3.6) * max(s, 0.6))
        labels[ethmoid_box & f.ellipsoid((c[0], c[1], c[2]), (r, r, r))] = Tissue.AIR_INTERNAL
    # nasal cavity with septum, nasopharynx
    nasal = f.ellipsoid((0, -66, -24), (13, 24, 18))
    labels[f.ellipsoid((0, -66, -24), (14.5, 25.5, 19.5)) & ~nasal] = Tissue.CORTICAL
    labels[nasal] = Tissue.AIR_INTERNAL
    labels[nasal & (np.abs(f.x) < 1.0)] = Tissue.CORTICAL
    labels[f.ellipsoid((0, -30, -40), (11, 14, 9))] = Tissue.AIR_INTERNAL
    # hard palate and maxillary alveolus
    labels[f.ellipsoid((0, -54, -46), (28, 26, 3.5))] = Tissue.CORTICAL
    labels[f.ellipsoid((0, -54, -46), (25, 23, 1.8))] = Tissue.CANCELLOUS
    # mandible: body and rami as capsules (cortex) with marrow, teeth on both arches
    j = p.jaw_scale
    arch = [jaw_point((x, -76.0 + 0.022 * x * x, -76.0), j) for x in np.linspace(-44, 44, 9)]
    for a0, a1 in itertools.pairwise(arch):
        labels[f.capsule(a0, a1, 6.5 * j)] = Tissue.CORTICAL
        labels[f.capsule(a0, a1, 4.0 * j)] = Tissue.CANCELLOUS
    for side in (-1.0, 1.0):
        ramus = (jaw_point((side * 44, -42, -76), j), jaw_point((side * 48, -2, -30), j))
        labels[f.capsule(*ramus, 6.0 * j)] = Tissue.CORTICAL
        labels[f.capsule(*ramus, 3.5 * j)] = Tissue.CANCELLOUS
        # masseter tendon: short-T2 band lateral to the ramus
        tendon = (jaw_point((side * 53, -40, -70), j), jaw_point((side * 55, -15, -35), j))
        labels[f.capsule(*tendon, 1.6)] = Tissue.SHORT_T2
    missing = set(p.missing_teeth)
    for i, centre in enumerate(tooth_centres(j)):
        if i not in missing:
            labels[f.ellipsoid(centre, (2.4, 3.0, 4.5))] = Tissue.TEETH
    # oral cavity air between the arches
    labels[f.ellipsoid((0, -56, -60), (16, 16, 3.0))] = Tissue.AIR_INTERNAL


def _paint_neck(f: Frame, labels: npt.NDArray[np.uint8]) -> None:
    # airway: oropharynx and larynx
    labels[f.cylinder_z((0, -14), (10, 7), -200, -44)] = Tissue.AIR_INTERNAL
    # cervical vertebrae C1..C7 with discs, canal and cord, posterior elements
    for i in range(8):
        z_top = -50.0 - 13.0 * i
        z_bottom = z_top - 9.5
        body_outer = f.cylinder_z((0, 8), (10, 8.5), z_bottom, z_top)
        body_inner = f.cylinder_z((0, 8), (8.5, 7.0), z_bottom + 1.3, z_top - 1.3)
        labels[body_outer] = Tissue.CORTICAL
        labels[body_inner] = Tissue.CANCELLOUS
        labels[f.cylinder_z((0, 8), (9.5, 8.0), z_top, z_top + 3.5)] = Tissue.DISC
        lamina = f.cylinder_z((0, 26), (12, 10), z_bottom, z_top) & ~f.cylinder_z(
            (0, 26), (8, 7), z_bottom, z_top
        )
        labels[lamina & (f.y > 18)] = Tissue.CORTICAL
        spinous = (np.abs(f.x) < 2.6) & (f.y > 34) & (f.y < 48) & (f.z > z_bottom) & (f.z < z_top)
        labels[spinous] = Tissue.CORTICAL
    labels[f.cylinder_z((0, 26), (8, 7), -200, -40)] = Tissue.CSF
    labels[f.cylinder_z((0, 26), (5, 4.5), -200, -40)] = Tissue.BRAIN  # spinal cord
    # ligaments and fascia: short-T2 soft tissue
    labels[(np.abs(f.x) < 1.2) & (f.y > 50) & (f.y < 66) & (f.z < -40) & (f.z > -200)] = (
        Tissue.SHORT_T2
    )
    labels[f.cylinder_z((0, -1.5), (8, 1.2), -200, -48) & (labels == Tissue.SOFT)] = Tissue.SHORT_T2
    neck_fascia = (np.abs(np.sqrt((f.x / 42.0) ** 2 + ((f.y - 12) / 46.0) ** 2) - 1.0) < 0.02) & (
        f.z < -80
    )
    labels[neck_fascia & (labels == Tissue.SOFT)] = Tissue.SHORT_T2
    for side in (-1.0, 1.0):
        # sternocleidomastoid tendon, from the mastoid forwards and down
        labels[f.capsule((side * 48, 30, -45), (side * 22, -38, -200), 2.4)] = Tissue.SHORT_T2
        # deep cervical fat pads
        labels[f.ellipsoid((side * 30, 30, -110), (10, 8, 30)) & (labels == Tissue.SOFT)] = (
            Tissue.FAT
        )

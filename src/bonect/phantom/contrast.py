"""How the phantom's tissues look: CT numbers, bone-MR signal per contrast, and MR artefacts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bonect.hounsfield import AIR_HU, HU_RANGE
from bonect.phantom.artefacts import gibbs_ringing, motion_ghosts
from bonect.phantom.shapes import Tissue

Contrast = Literal["zte", "ute", "gre"]
CONTRASTS: tuple[Contrast, ...] = ("zte", "ute", "gre")
F32 = npt.NDArray[np.float32]

# CT numbers (HU) of non-bone tissue; bone is computed from mineralisation.
CT_HU: dict[Tissue, float] = {
    Tissue.AIR: AIR_HU,
    Tissue.SOFT: 50.0,
    Tissue.FAT: -95.0,
    Tissue.BRAIN: 35.0,
    Tissue.CSF: 8.0,
    Tissue.AIR_INTERNAL: AIR_HU,
    Tissue.SHORT_T2: 85.0,
    Tissue.SUTURE: 60.0,
    Tissue.EYE: 10.0,
    Tissue.DISC: 80.0,
    Tissue.TEETH: 2600.0,
    Tissue.MUCUS: 25.0,
    Tissue.BLOOD: 65.0,
    Tissue.METAL: 3071.0,  # titanium and amalgam lie beyond the CT scale: clipped to its top
}

# Bone-MR signal relative to soft tissue (= 1). Bone is (a, b): signal = a - b * mineralisation.
MR_SIGNAL: dict[Contrast, dict[Tissue, float]] = {
    "zte": {
        Tissue.AIR: 0.0,
        Tissue.SOFT: 1.0,
        Tissue.FAT: 0.82,
        Tissue.BRAIN: 0.93,
        Tissue.CSF: 1.05,
        Tissue.AIR_INTERNAL: 0.0,
        Tissue.SHORT_T2: 0.38,
        Tissue.SUTURE: 0.7,
        Tissue.EYE: 1.02,
        Tissue.DISC: 1.0,
        Tissue.TEETH: 0.03,
    },
    "ute": {
        Tissue.AIR: 0.0,
        Tissue.SOFT: 1.0,
        Tissue.FAT: 1.1,
        Tissue.BRAIN: 0.86,
        Tissue.CSF: 0.92,
        Tissue.AIR_INTERNAL: 0.0,
        Tissue.SHORT_T2: 0.5,
        Tissue.SUTURE: 0.75,
        Tissue.EYE: 0.95,
        Tissue.DISC: 0.95,
        Tissue.TEETH: 0.05,
    },
    "gre": {
        Tissue.AIR: 0.0,
        Tissue.SOFT: 1.0,
        Tissue.FAT: 1.3,
        Tissue.BRAIN: 0.8,
        Tissue.CSF: 0.55,
        Tissue.AIR_INTERNAL: 0.0,
        Tissue.SHORT_T2: 0.28,
        Tissue.SUTURE: 0.6,
        Tissue.EYE: 0.6,
        Tissue.DISC: 0.85,
        Tissue.TEETH: 0.02,
    },
}
MR_BONE: dict[Contrast, dict[Tissue, tuple[float, float]]] = {
    "zte": {Tissue.CORTICAL: (0.62, 0.42), Tissue.CANCELLOUS: (0.95, 0.2)},
    "ute": {Tissue.CORTICAL: (0.7, 0.4), Tissue.CANCELLOUS: (1.0, 0.25)},
    "gre": {Tissue.CORTICAL: (0.25, 0.17), Tissue.CANCELLOUS: (0.55, 0.2)},
}


@dataclass(frozen=True)
class BoneCurve:
    """Bone-MR signal of one bone class against mineralisation m (0..1):
    ``at_zero - (at_zero - at_one) * m ** gamma``: linear for gamma 1, as in the classic tables."""

    at_zero: float
    at_one: float
    gamma: float = 1.0

    def signal(self, mineral: F32) -> F32:
        shape = np.power(np.clip(mineral, 0.0, 1.0), self.gamma)
        return (self.at_zero - (self.at_zero - self.at_one) * shape).astype(np.float32)


@dataclass(frozen=True)
class MrAppearance:
    """How one bone-MR acquisition renders tissue: signal table, bone curves and artefacts."""

    technique: str
    tissue: dict[Tissue, float]  # signal relative to soft tissue (= 1)
    cortical: BoneCurve
    cancellous: BoneCurve
    texture: float = 0.04  # std of the smooth tissue texture (fraction)
    noise_sigma: float = 0.035  # Rician noise, fraction of soft tissue
    bias_amplitude: float = 0.2  # smooth multiplicative field: 1 ± this
    blooming_mm: float = 0.0  # signal void around metal beyond the metal itself
    ringing: float = 0.0  # Gibbs ringing: share of k-space cut along the phase axis (0: none)
    motion_share: float = 0.0  # share of phase-encode lines acquired with the head moved
    motion_mm: float = 0.0  # how far it moved
    phase_axis: int = 1  # the in-plane axis (1: rows, 2: columns) of the phase encoding


def classic_appearance(contrast: Contrast) -> MrAppearance:
    """The classic phantom's fixed tables for ``contrast`` as an appearance."""
    bone = MR_BONE[contrast]
    a, b = bone[Tissue.CORTICAL]
    c, d = bone[Tissue.CANCELLOUS]
    return MrAppearance(
        technique=contrast,
        tissue=MR_SIGNAL[contrast],
        cortical=BoneCurve(a, a - b),
        cancellous=BoneCurve(c, c - d),
    )


def ct_from_anatomy(
    labels: npt.NDArray[np.uint8],
    mineral: F32,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> F32:
    """CT in HU: tissue table, bone HU from mineralisation, partial volume and noise."""
    hu = _lookup(labels, CT_HU)
    cortical = labels == Tissue.CORTICAL
    hu[cortical] = 250.0 + 1550.0 * mineral[cortical]
    cancellous = labels == Tissue.CANCELLOUS
    hu[cancellous] = 130.0 + 620.0 * mineral[cancellous]
    hu = _partial_volume(hu, spacing)
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return np.clip(hu, *HU_RANGE).astype(np.float32)


def mr_from_anatomy(
    labels: npt.NDArray[np.uint8],
    mineral: F32,
    spacing: tuple[float, float, float],
    contrast: Contrast | MrAppearance,
    rng: np.random.Generator,
    bias: F32,
    *,
    noise_sigma: float | None = None,
) -> F32:
    """Bone-MR magnitude image (soft tissue near 1): partial volume, bias field, Rician noise,
    and the appearance's metal blooming, ringing and motion ghosts."""
    look = contrast if isinstance(contrast, MrAppearance) else classic_appearance(contrast)
    signal = _lookup(labels, look.tissue)
    for tissue, curve in ((Tissue.CORTICAL, look.cortical), (Tissue.CANCELLOUS, look.cancellous)):
        sel = labels == tissue
        signal[sel] = curve.signal(mineral[sel])
    # tissue texture: a few per cent of smooth variation, so no class is one flat value
    signal *= (
        1.0
        + look.texture
        * ndimage.gaussian_filter(rng.normal(size=signal.shape).astype(np.float32), 1.5)
        / 0.1
    )
    if look.blooming_mm > 0 and np.any(labels == Tissue.METAL):
        signal[_dilate_mm(labels == Tissue.METAL, look.blooming_mm, spacing)] = 0.0
    signal = _partial_volume(signal, spacing)
    signal *= bias
    if look.ringing > 0:
        signal = gibbs_ringing(signal, axis=look.phase_axis, cut=look.ringing)
    if look.motion_share > 0:
        shift = look.motion_mm / spacing[look.phase_axis]
        signal = motion_ghosts(signal, look.phase_axis, look.motion_share, shift, rng)
    sigma = look.noise_sigma if noise_sigma is None else noise_sigma
    real = signal + rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def _dilate_mm(
    mask: npt.NDArray[np.bool_], mm: float, spacing: tuple[float, float, float]
) -> npt.NDArray[np.bool_]:
    """``mask`` grown by ``mm`` (an ellipsoidal ball in voxels of ``spacing``)."""
    radius = [max(1, round(mm / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grids, radius, strict=True)) <= 1.0
    return np.asarray(ndimage.binary_dilation(mask, structure=ball), dtype=bool)


def _lookup(labels: npt.NDArray[np.uint8], table: dict[Tissue, float]) -> F32:
    lut = np.zeros(256, dtype=np.float32)
    for tissue, value in table.items():
        lut[int(tissue)] = value
    return lut[labels]


def _partial_volume(image: F32, spacing: tuple[float, float, float]) -> F32:
    """Blur by the voxel's own extent: a Gaussian with sigma ~ 0.4 voxel on every axis."""
    del spacing  # the sigma is in voxels: a voxel averages what lies inside it
    return np.asarray(ndimage.gaussian_filter(image, sigma=0.45), dtype=np.float32)

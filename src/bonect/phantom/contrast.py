"""How the phantom's tissues look: CT numbers, bone-MR signal per contrast, and MR artefacts."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from bonect.hounsfield import AIR_HU, HU_RANGE
from bonect.phantom.anatomy import Tissue

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
    contrast: Contrast,
    rng: np.random.Generator,
    bias: F32,
    *,
    noise_sigma: float = 0.035,
) -> F32:
    """Bone-MR magnitude image (soft tissue near 1): partial volume, bias field, Rician noise."""
    signal = _lookup(labels, MR_SIGNAL[contrast])
    for tissue, (a, b) in MR_BONE[contrast].items():
        sel = labels == tissue
        signal[sel] = a - b * mineral[sel]
    # tissue texture: a few per cent of smooth variation, so no class is one flat value
    signal *= (
        1.0
        + 0.04
        * ndimage.gaussian_filter(rng.normal(size=signal.shape).astype(np.float32), 1.5)
        / 0.1
    )
    signal = _partial_volume(signal, spacing)
    signal *= bias
    real = signal + rng.normal(0.0, noise_sigma, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, noise_sigma, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def _lookup(labels: npt.NDArray[np.uint8], table: dict[Tissue, float]) -> F32:
    lut = np.zeros(256, dtype=np.float32)
    for tissue, value in table.items():
        lut[int(tissue)] = value
    return lut[labels]


def _partial_volume(image: F32, spacing: tuple[float, float, float]) -> F32:
    """Blur by the voxel's own extent: a Gaussian with sigma ~ 0.4 voxel on every axis."""
    del spacing  # the sigma is in voxels: a voxel averages what lies inside it
    return np.asarray(ndimage.gaussian_filter(image, sigma=0.45), dtype=np.float32)

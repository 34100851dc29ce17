"""The training-free ZTE/PETRA map: bias correction, soft-tissue normalisation, a linear bone map.

After Wiesinger et al. and Miscouridou et al. (2022): N4 bias-field correction; the MR is
normalised so that the soft-tissue histogram peak is 1; inside the head, voxels darker than
``air_below`` are air, voxels in the bone band ``[air_below, bone_above]`` are bone with
``HU = slope · n + intercept`` (ZTE: -2085 · n + 2329), all else is soft tissue (42 HU);
outside the head is air. A thin rim under the skin is never called bone, since partial volume
with the air outside puts it in the bone band.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from bonect.converter.preprocess import head_mask, normalise
from bonect.converter.volume import Volume
from bonect.hounsfield import AIR_HU

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ClassicalParameters:
    air_below: float = 0.1
    bone_above: float = 0.6
    slope: float = -2085.0
    intercept: float = 2329.0
    soft_tissue_hu: float = 42.0
    air_hu: float = AIR_HU
    rim_mm: float = 3.0
    n4_shrink: int = 4
    n4_iterations: int = 20


PETRA = ClassicalParameters(slope=-2929.6, intercept=3274.9)


def bias_correct(mr: Volume, mask: npt.NDArray[np.bool_], *, shrink: int, iterations: int) -> F32:
    """N4 bias-field correction on a shrunk image; the field is applied at full resolution.

    Each axis is shrunk by ``shrink`` at most, and never below two voxels (N4 fits its field
    on at least two); a volume one voxel thick along an axis has no field to fit and is
    returned as it is.
    """
    data = np.asarray(mr.array, dtype=np.float32)
    if min(data.shape) < 2:
        return data
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(tuple(float(s) for s in reversed(mr.spacing)))
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factor = [max(1, min(shrink, size // 2)) for size in image.GetSize()]
    small = sitk.Shrink(image, factor)
    small_mask = sitk.Shrink(mask_image, factor)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([iterations] * 3)
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    corrected = sitk.GetArrayFromImage(image) / np.exp(sitk.GetArrayFromImage(log_field))
    return np.asarray(corrected, dtype=np.float32)


def classical_sct(mr: Volume, params: ClassicalParameters = ClassicalParameters()) -> Volume:
    """Synthetic CT (HU, float32) on the MR's grid by the classical map."""
    data = np.asarray(mr.array, dtype=np.float32)
    mask = head_mask(data, mr.spacing)
    corrected = bias_correct(mr, mask, shrink=params.n4_shrink, iterations=params.n4_iterations)
    n = normalise(corrected, mask)
    rim = max(1, round(params.rim_mm / min(mr.spacing)))
    core = ndimage.binary_erosion(mask, iterations=rim)
    hu = np.full(data.shape, params.air_hu, dtype=np.float32)
    hu[mask] = params.soft_tissue_hu
    air = core & (n < params.air_below)
    bone = core & (n >= params.air_below) & (n <= params.bone_above)
    hu[air] = params.air_hu
    hu[bone] = params.slope * n[bone] + params.intercept
    return mr.with_array(hu)

"""Registration of a patient's real CT onto the grid of their bone MR (rigid, then affine).

The CT comes from another session: its own grid, Frame of Reference and head pose. SimpleITK
registers it in two stages, both with Mattes mutual information (bone is dark on bone MR and
bright on CT; MI needs no intensity relation beyond a statistical one):

1. **rigid** (:class:`SimpleITK.Euler3DTransform`), started from whichever of two guesses
   overlaps the MR head mask better with the CT body mask: the alignment of their centres of
   mass (``CenteredTransformInitializer``, MOMENTS: another Frame of Reference) or the identity
   in patient space (same scanner coordinates); three resolution levels (shrink 4, 2, 1;
   smoothing 2, 1, 0 voxels);
2. **affine** (:class:`SimpleITK.AffineTransform`) from the rigid result, at shrink 2 and 1,
   for scanner scale calibration and gradient non-linearity that a rigid transform cannot take.

Both images are first averaged down (bin-shrunk) to voxels of about :data:`WORKING_MM`, the
CT is clipped to the HU range that matters and the MR to its 99.5th percentile, and the metric
samples only the head and an 8 mm band of air around it (the skin edge is the strongest
feature both share). Sampling is regular with a random jitter from ``seed``, so a result is
reproducible. Optimisation is regular-step gradient descent with scales from physical shift.
The CT is then resampled from its full-resolution original with linear interpolation, -1000 HU
outside its field of view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from bonect.converter.preprocess import head_mask
from bonect.converter.volume import Volume
from bonect.errors import BonectError
from bonect.hounsfield import AIR_HU
from bonect.trainer.overlay import (
    BODY_HU,
    DEFAULT_THRESHOLD,
    ct_body_mask,
    dice,
    registration_quality,
)

__all__ = [  # the score and its threshold live in overlay.py and are re-exported here
    "DEFAULT_THRESHOLD",
    "RegistrationError",
    "RegistrationResult",
    "image_to_volume",
    "register_ct_to_mr",
    "registration_quality",
    "resample_ct",
    "transform_matrix",
    "volume_to_image",
]

logger = logging.getLogger(__name__)

Mask = npt.NDArray[np.bool_]

WORKING_MM = 3.0  # voxel size the registration works at (the images are averaged down to it)
CT_CLIP = (-1000.0, 2000.0)  # CT range seen by the metric (metal and air would waste bins)
MIN_HEAD_COVERAGE = 0.5  # fraction of the MR head the CT must cover after registration
HISTOGRAM_BINS = 48
AFFINE_SCALE_LIMITS = (0.9, 1.1)  # singular values an affine result may have (see _optimise)


class RegistrationError(BonectError):
    """The CT cannot be registered onto the MR: unusable input, no overlap, or ITK failed."""


@dataclass(frozen=True)
class RegistrationResult:
    """A CT brought onto the MR grid, how well it fits, and how to redo it.

    ``score`` is :func:`registration_quality` of ``ct_on_mr``; ``metric_value`` is ITK's
    Mattes metric at the end of the last stage kept (minus the mutual information: more
    negative is better; phantom pairs end near -0.9, unrelated images near 0); ``stages`` is
    ``("rigid", "affine")``, or ``("rigid",)`` when the affine stage was rejected.
    ``transform`` maps an MR point to a CT point, both in LPS mm: the 3×3 matrix row by row,
    then the translation (SimpleITK's ``AffineTransform`` parameters with the centre at the
    origin); :func:`transform_matrix` makes it a 4×4 matrix, :func:`resample_ct` applies it.
    """

    ct_on_mr: Volume
    score: float
    metric_value: float
    transform: list[float]
    seconds: float
    stages: tuple[str, ...]


def volume_to_image(volume: Volume) -> sitk.Image:
    """A float32 SimpleITK image on the same grid (sitk index (x, y, z) = our (col, row, slice))."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetOrigin(tuple(float(v) for v in volume.position))
    image.SetSpacing(tuple(float(v) for v in reversed(volume.spacing)))
    direction = volume.direction[:, ::-1]  # columns: column axis, row axis, slice axis
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def image_to_volume(image: sitk.Image) -> Volume:
    """The inverse of :func:`volume_to_image` (float32 voxels)."""
    array = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = (direction * spacing[None, :])[:, ::-1]
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return Volume(array, affine)


def transform_matrix(parameters: list[float]) -> npt.NDArray[np.float64]:
    """The 4×4 matrix (MR LPS mm → CT LPS mm) of :attr:`RegistrationResult.transform`."""
    if len(parameters) != 12:
        raise ValueError(f"an affine has 12 parameters, got {len(parameters)}")
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(parameters[:9], dtype=np.float64).reshape(3, 3)
    matrix[:3, 3] = parameters[9:]
    return matrix


def _as_affine(transform: sitk.AffineTransform) -> sitk.AffineTransform:
    """Any linear transform as an AffineTransform with its centre at the origin."""
    linear = sitk.AffineTransform(3)
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    offset = np.asarray(transform.GetTranslation(), dtype=np.float64) + centre - matrix @ centre
    linear.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    linear.SetTranslation(tuple(float(v) for v in offset))
    return linear


def resample_ct(
    mr: Volume, ct: Volume, transform: list[float], *, threads: int | None = None
) -> Volume:
    """The CT on the MR grid through `transform` (linear, -1000 HU outside the CT)."""
    linear = sitk.AffineTransform(3)
    linear.SetParameters(tuple(float(v) for v in transform))
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(volume_to_image(mr.with_array(np.zeros(mr.shape, np.float32))))
    resampler.SetTransform(linear)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(AIR_HU)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    if threads is not None:
        resampler.SetNumberOfThreads(threads)
    array = sitk.GetArrayFromImage(resampler.Execute(volume_to_image(ct)))
    return mr.with_array(np.asarray(array, dtype=np.float32))


def _one_line(exc: BaseException) -> str:
    """ITK's multi-line exception text, reduced to its message on one line."""
    text = str(exc)
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1]
        text = text.split(":", 1)[1] if ":" in text.split("\n", 1)[0] else text
    return " ".join(text.split())[:300]


def _working(image: sitk.Image, low: float, high: float) -> sitk.Image:
    """Averaged down to voxels of about WORKING_MM (never up) and clipped to [low, high]."""
    factors = [max(1, int(WORKING_MM / s + 1e-6)) for s in image.GetSpacing()]
    small = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    clipped: sitk.Image = sitk.Clamp(small, sitk.sitkFloat32, low, high)
    return clipped


def _mask_image(mask: Mask, like: sitk.Image) -> sitk.Image:
    image: sitk.Image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return image


def _spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    x, y, z = image.GetSpacing()
    return (float(z), float(y), float(x))


def _overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of two uint8 masks with `moving` brought onto `fixed` through `transform`."""
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a = sitk.GetArrayViewFromImage(fixed) > 0
    b = sitk.GetArrayViewFromImage(moved) > 0
    return dice(np.asarray(a), np.asarray(b))


def _start(fixed_mask: sitk.Image, moving_mask: sitk.Image) -> tuple[sitk.Euler3DTransform, str]:
    """The better rigid start: moments of the masks, or the identity in patient space."""
    moments = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            sitk.Cast(fixed_mask, sitk.sitkFloat32),
            sitk.Cast(moving_mask, sitk.sitkFloat32),
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
    )
    identity = sitk.Euler3DTransform()
    identity.SetCenter(moments.GetCenter())
    if _overlap(fixed_mask, moving_mask, identity) > _overlap(fixed_mask, moving_mask, moments):
        return identity, "identity"
    return moments, "moments"


# per stage: shrink factors, smoothing sigmas (voxels), first step of the optimiser
_LEVELS = {"rigid": ([4, 2, 1], [2.0, 1.0, 0.0], 2.0), "affine": ([2, 1], [1.0, 0.0], 0.5)}


def _method(
    sampled: sitk.Image, stage: str, *, seed: int, sampling: float
) -> sitk.ImageRegistrationMethod:
    shrink, smooth, learning_rate = _LEVELS[stage]
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.REGULAR)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift ours by one
    method.SetMetricSamplingPercentage(sampling, seed + 1)
    method.SetMetricFixedMask(sampled)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=100,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smooth)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextmanager
def _itk_threads(threads: int | None) -> Iterator[None]:
    """ITK's global default number of threads for one call (the registration method's metric
    and pyramid take that default, not the method's own setting); restored on the way out."""
    if threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _check_inputs(mr: Volume, ct: Volume) -> None:
    for name, volume in (("MR", mr), ("CT", ct)):
        if min(volume.shape) < 2:
            raise RegistrationError(f"the {name} is not a volume (shape {volume.shape})")
        if not np.isfinite(volume.array).all():
            raise RegistrationError(f"the {name} has non-finite voxel values")
    if not (np.asarray(ct.array) > BODY_HU).any():
        raise RegistrationError(f"the CT is empty: no voxel above {BODY_HU:g} HU")
    if float(np.ptp(np.asarray(mr.array))) <= 0.0:
        raise RegistrationError("the MR is empty: all voxels have the same value")


@dataclass(frozen=True)
class _Working:
    """What the optimiser sees: both images averaged down and clipped, and their masks."""

    fixed: sitk.Image  # MR
    moving: sitk.Image  # CT
    head: sitk.Image  # MR head mask on `fixed`
    body: sitk.Image  # CT body mask on `moving`
    sampled: sitk.Image  # where the metric samples: the head and a band of air around it


def _prepare(mr: Volume, ct: Volume) -> _Working:
    _check_inputs(mr, ct)
    mr_array = np.asarray(mr.array, dtype=np.float32)
    mr_high = float(np.percentile(mr_array, 99.5))
    fixed = _working(volume_to_image(mr), float(mr_array.min()), mr_high)
    moving = _working(volume_to_image(ct), *CT_CLIP)
    spacing = _spacing_zyx(fixed)
    head = head_mask(sitk.GetArrayFromImage(fixed), spacing)
    if not head.any():
        raise RegistrationError("the MR is empty: no head found")
    band_mm = 8.0  # the skin edge is the strongest feature both images share
    around = ndimage.distance_transform_edt(~head, sampling=spacing) <= band_mm
    body = ct_body_mask(sitk.GetArrayFromImage(moving))
    head_ml = float(head.sum()) * float(np.prod(spacing)) / 1000.0
    body_ml = float(body.sum()) * float(np.prod(_spacing_zyx(moving))) / 1000.0
    if body_ml < MIN_HEAD_COVERAGE * head_ml:  # cannot cover enough of the head in any pose
        raise RegistrationError(
            f"no overlap: the CT holds {body_ml:.0f} ml of body, the MR head {head_ml:.0f} ml"
        )
    return _Working(
        fixed=fixed,
        moving=moving,
        head=_mask_image(head, fixed),
        body=_mask_image(body, moving),
        sampled=_mask_image(around, fixed),
    )


def _affine_from(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return affine


def _optimise(
    work: _Working, *, seed: int, sampling: float
) -> tuple[sitk.AffineTransform, float, tuple[str, ...], str]:
    """Rigid then affine: the transform, its final metric value, the stages kept, the start.

    An affine stage that scales or shears by more than :data:`AFFINE_SCALE_LIMITS` has fitted
    something other than one patient's head (a CT of another patient, or noise): the rigid
    result is kept instead.
    """
    rigid, start = _start(work.head, work.body)
    method = _method(work.sampled, "rigid", seed=seed, sampling=sampling)
    method.SetInitialTransform(rigid, inPlace=True)
    method.Execute(work.fixed, work.moving)
    rigid_metric = float(method.GetMetricValue())
    affine = _affine_from(rigid)
    method = _method(work.sampled, "affine", seed=seed, sampling=sampling)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(work.fixed, work.moving)
    scales = np.linalg.svd(np.reshape(affine.GetMatrix(), (3, 3)), compute_uv=False)
    low, high = AFFINE_SCALE_LIMITS
    if scales.min() < low or scales.max() > high:
        logger.warning("affine stage scaled by %.3f..%.3f: rigid result kept", *scales[[2, 0]])
        return _affine_from(rigid), rigid_metric, ("rigid",), start
    return affine, float(method.GetMetricValue()), ("rigid", "affine"), start


def _coverage(head: sitk.Image, ct: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of the head mask whose points fall inside the CT's field of view."""
    inside = sitk.Image(ct.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(ct)
    moved = sitk.Resample(inside, head, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = sitk.GetArrayViewFromImage(head) > 0
    return float(np.mean(sitk.GetArrayViewFromImage(moved)[mask] > 0))


def register_ct_to_mr(
    mr: Volume,
    ct: Volume,
    *,
    seed: int = 0,
    sampling: float = 0.1,
    threads: int | None = None,
) -> RegistrationResult:
    """Register `ct` (any grid, any pose) onto the grid of `mr`: rigid, then affine.

    Parameters
    ----------
    mr, ct
        The bone MR (any units) and the CT in HU, each on its own grid in LPS millimetres.
    seed
        Seed of the metric's sampling jitter. The same seed gives the same transform: bit for
        bit with ``threads=1``, to about 1e-6 mm with more threads (ITK's threads add their
        histograms in varying order).
    sampling
        Fraction of the (working-resolution) MR voxels the metric samples, in (0, 1].
    threads
        Threads for ITK during the call; ``None`` keeps ITK's default (every core).

    Raises
    ------
    RegistrationError
        Unusable input (empty, non-finite, too small), a CT covering less than half of the
        head, or a failure inside ITK; the message is one line.
    """
    if not 0.0 < sampling <= 1.0:
        raise ValueError(f"sampling must be in (0, 1], got {sampling}")
    started = time.perf_counter()
    with _itk_threads(threads):
        try:
            work = _prepare(mr, ct)
            affine, metric, stages, start = _optimise(work, seed=seed, sampling=sampling)
            coverage = _coverage(work.head, work.moving, affine)
            parameters = [float(v) for v in _as_affine(affine).GetParameters()]
            ct_on_mr = resample_ct(mr, ct, parameters, threads=threads)
        except RuntimeError as exc:  # SimpleITK raises RuntimeError for every ITK exception
            raise RegistrationError(f"registration failed: {_one_line(exc)}") from exc
    if coverage < MIN_HEAD_COVERAGE:
        raise RegistrationError(
            f"no overlap: the CT covers {100 * coverage:.0f} % of the head on the MR "
            f"(at least {100 * MIN_HEAD_COVERAGE:.0f} % needed)"
        )
    score = registration_quality(mr, ct_on_mr)
    seconds = time.perf_counter() - started
    message = "registered CT onto MR (start: %s; %s): Mattes %.4f, score %.3f, %.1f s"
    logger.info(message, start, " + ".join(stages), metric, score, seconds)
    return RegistrationResult(ct_on_mr, score, metric, parameters, seconds, stages)

"""Where the sCT is unsure: the threshold on the planes' spread, the share above it, its wording.

The U-Net predicts the volume in three planes and keeps the median; the spread between the
planes (max - min, HU) is the uncertainty (:mod:`bonect.converter.inference`). A voxel whose
planes disagree by more than the *threshold* is "unsure". The threshold is decided here and
nowhere else (:func:`threshold_hu`): a model calibrated on held-out data records it in its
manifest's metrics under :data:`THRESHOLD_KEY`; a model that does not is judged against
:data:`DEFAULT_THRESHOLD_HU`. The worker's Image Comments and DICOM uncertainty objects, the
job record, ``bonect-daemon status`` and the status page all use it.

Free of PyTorch and of every part (the status page and the registry import it).
"""

from __future__ import annotations

import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt

from bonect.registry import Manifest

logger = logging.getLogger(__name__)

THRESHOLD_KEY: Final = "uncertainty_threshold_hu"
"""The manifest metrics key of a calibrated threshold (HU)."""

DEFAULT_THRESHOLD_HU: Final = 100.0
"""The threshold of a model whose manifest records none (HU): planes that disagree by more
than this about a voxel make it unsure. 100 HU is about the gap between soft tissue and the
least dense cancellous bone, so a voxel above it may be bone or not."""


def threshold_hu(manifest: Manifest) -> float:
    """The threshold (HU) for a model: its calibrated one, else :data:`DEFAULT_THRESHOLD_HU`.

    A calibrated value that is not a positive finite number is ignored (with a warning).
    """
    value = manifest.metrics.get(THRESHOLD_KEY)
    if value is None:
        return DEFAULT_THRESHOLD_HU
    if not math.isfinite(value) or value <= 0:
        logger.warning(
            "model %s: %s = %r is not a positive number; using %g HU",
            manifest.label,
            THRESHOLD_KEY,
            value,
            DEFAULT_THRESHOLD_HU,
        )
        return DEFAULT_THRESHOLD_HU
    return float(value)


def uncertain_share(
    spread: npt.NDArray[np.floating], head: npt.NDArray[np.bool_], threshold: float
) -> float:
    """The share (0..1) of the ``head``'s voxels whose ``spread`` exceeds ``threshold``.

    An empty head gives 0.
    """
    if spread.shape != head.shape:
        raise ValueError(f"spread {spread.shape} and head mask {head.shape} differ in shape")
    inside = spread[head]
    return float(np.mean(inside > threshold)) if inside.size else 0.0


def summary(share: float, threshold: float) -> str:
    """The share in words, e.g. ``planes disagree by > 100 HU in 3.2 % of the head``."""
    return f"planes disagree by > {threshold:g} HU in {100 * share:.1f} % of the head"

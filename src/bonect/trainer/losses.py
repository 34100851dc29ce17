"""The training losses: L1, L2, the paper's mix, and L1 weighted towards bone.

Every loss takes the prediction and the target as the network sees them, CT numbers scaled from
[:data:`~bonect.hounsfield.HU_MIN`, :data:`~bonect.hounsfield.HU_MAX`] onto [0, 1], and returns a
scalar to minimise. :data:`LOSSES` is the registry ``[trainer] loss`` names a loss from.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from bonect.hounsfield import HU_MAX, HU_MIN

BONE_HU = 300.0  # CT above this counts as bone for the bone-weighted loss
BONE_WEIGHT = 1.0  # ``mae_bone``: bone voxels count 1 + this many times
MIX_WEIGHT = 4.4  # L1 + 4.4·L2: about equal contributions (the paper)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bone_weighted_l1(
    prediction: torch.Tensor, target: torch.Tensor, bone_weight: float
) -> torch.Tensor:
    """L1 with voxels whose target is bone (above 300 HU) counting ``1 + bone_weight`` times.

    Plain L1 predicts the median, and where the MR cannot tell thin bone from soft tissue the
    median is soft tissue: bone comes out low. Weighting bone moves that balance."""
    level = (BONE_HU - HU_MIN) / (HU_MAX - HU_MIN)
    weight = 1.0 + bone_weight * (target > level).to(prediction.dtype)
    return (weight * (prediction - target).abs()).sum() / weight.sum()


def mix_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's mix: L1 + 4.4·L2."""
    return F.l1_loss(prediction, target) + MIX_WEIGHT * F.mse_loss(prediction, target)


LOSSES: dict[str, Loss] = {
    "mae": F.l1_loss,
    "mse": F.mse_loss,
    "mix": mix_loss,
    "mae_bone": partial(bone_weighted_l1, bone_weight=BONE_WEIGHT),
}
"""The losses by the name ``[trainer] loss`` gives."""

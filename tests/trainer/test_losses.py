"""The bone-weighted L1 (``mae_bone``): bone counts 1 + bone_weight times; it is a trainer loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bonect.config import load_config
from bonect.errors import ConfigError
from bonect.hounsfield import HU_MAX, HU_MIN
from bonect.trainer import demo_model
from bonect.trainer.losses import BONE_HU, LOSSES, bone_weighted_l1
from bonect.trainer.training import TrainingOptions


def _scaled(hu: float) -> float:
    return (hu - HU_MIN) / (HU_MAX - HU_MIN)


def test_bone_voxels_weigh_one_plus_bone_weight() -> None:
    # one soft-tissue voxel (40 HU) and one bone voxel (1000 HU), each predicted 0.1 too low
    target = torch.tensor([_scaled(40.0), _scaled(1000.0)])
    prediction = target - 0.1
    assert float(bone_weighted_l1(prediction, target, 0.0)) == pytest.approx(0.1)
    assert float(bone_weighted_l1(prediction, target, 0.0)) == pytest.approx(
        float(F.l1_loss(prediction, target))
    )
    # errors 0.1 (soft, weight 1) and 0.3 (bone, weight 3): (0.1 + 0.9) / 4
    prediction = target - torch.tensor([0.1, 0.3])
    assert float(bone_weighted_l1(prediction, target, 2.0)) == pytest.approx(0.25)
    assert float(LOSSES["mae_bone"](prediction, target)) == pytest.approx((0.1 + 0.6) / 3)


def test_the_threshold_is_300_hu_of_the_target() -> None:
    target = torch.tensor([_scaled(BONE_HU - 1.0), _scaled(BONE_HU + 1.0)])
    prediction = target + torch.tensor([0.2, 0.0])  # only the soft voxel is wrong
    assert float(bone_weighted_l1(prediction, target, 1.0)) == pytest.approx(0.2 / 3)


def test_mae_bone_is_a_trainer_loss_and_a_config_value(tmp_path: Path) -> None:
    assert TrainingOptions(loss="mae_bone").loss == "mae_bone"
    assert demo_model.bone_weighted_l1 is bone_weighted_l1  # one definition, shared
    path = tmp_path / "config.toml"
    path.write_text('[trainer]\nloss = "mae_bone"\n', encoding="utf-8")
    config = load_config(path)
    assert config.trainer.loss == "mae_bone" and config.trainer.balance_sites
    path.write_text('[trainer]\nloss = "huber"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"trainer\.loss"):
        load_config(path)

"""The demo model's trainer: its 2.5D input (a slice with its neighbours as channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bonect.converter.inference import predict_cube
from bonect.converter.model_folder import load_model
from bonect.trainer.demo_model import slice_pairs, train

SEED, SIZE = 5, 32


def test_the_25d_slices_are_the_2d_slices_with_their_neighbours() -> None:
    flat, targets = slice_pairs(SEED, [0], SIZE)
    wide, targets_25d = slice_pairs(SEED, [0], SIZE, context=1)

    assert flat.ndim == 4 and flat.shape[1] == 1  # one channel
    assert wide.shape == (len(flat), 3, SIZE, SIZE)
    np.testing.assert_array_equal(wide[:, 1], flat[:, 0])
    np.testing.assert_array_equal(targets_25d, targets)
    # inside a plane's run of kept slices, the channel before is the slice before
    np.testing.assert_array_equal(wide[2:10, 0], flat[1:9, 0])
    np.testing.assert_array_equal(wide[2:10, 2], flat[3:11, 0])


def test_a_25d_demo_model_records_its_input_and_converts(tmp_path: Path) -> None:
    folder = train(
        tmp_path / "model",
        seed=SEED,
        patients=1,
        size=SIZE,
        epochs=1,
        steps_per_epoch=2,
        calibration_patients=0,
        context=1,
    )

    model = load_model(folder)
    assert model.manifest.arguments["in_channels"] == 3
    assert model.manifest.context_slices == 1
    image = np.random.default_rng(0).random((SIZE,) * 3, dtype=np.float32)
    prediction = predict_cube(model, image, ["axial", "sagittal"], device=torch.device("cpu"))
    assert prediction.hu.shape == (SIZE,) * 3
    assert np.isfinite(prediction.hu).all()


def test_the_epoch_cannot_be_picked_without_a_validation_patient(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one validation patient"):
        train(tmp_path / "model", patients=1, size=SIZE, validation_patients=0)

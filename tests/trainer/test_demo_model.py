"""The demo model's trainer: its 2.5D input (a slice with its neighbours as channels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bonect.converter.inference import predict_cube
from bonect.converter.model_folder import load_model
from bonect.trainer.demo_model import main, train
from bonect.trainer.phantom_slices import slice_pairs

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


def _train_tiny(folder: Path, **changes: Any) -> Path:
    """A demo model of one 32³ patient and two batches, with `changes` to the defaults."""
    options: dict[str, Any] = {
        "seed": SEED,
        "patients": 1,
        "size": SIZE,
        "epochs": 1,
        "steps_per_epoch": 2,
        "calibration_patients": 0,
    }
    return train(folder, **(options | changes))


def test_patients_rendered_in_several_processes_are_the_same_slices() -> None:
    one = slice_pairs(SEED, [0, 1, 2], SIZE, context=1)
    three = slice_pairs(SEED, [0, 1, 2], SIZE, context=1, workers=3)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_25d_demo_model_records_its_input_and_converts(tmp_path: Path) -> None:
    folder = _train_tiny(tmp_path / "model", context=1)

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_training_on_a_missing_gpu_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "model"), "--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no CUDA device is available" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "model").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_demo_model_trains_on_the_gpu_and_loads_on_the_cpu(tmp_path: Path) -> None:
    folder = _train_tiny(tmp_path / "model", epochs=2, calibration_patients=1, device="cuda")
    model = load_model(folder, device=torch.device("cpu"))
    assert "training on GPU " in model.manifest.description
    assert next(model.network.parameters()).device.type == "cpu"
    assert np.isfinite(model.manifest.metrics["validation_l1_hu"])

"""The training loop on tiny phantom caches: best weights, early stop, resume, seeds, losses."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bonect.config import load_config
from bonect.converter.inference import predict_cube
from bonect.converter.model_folder import load_model, save_model
from bonect.converter.networks import build_model
from bonect.converter.preprocess import prepare
from bonect.converter.volume import read_nifti
from bonect.errors import ConfigError
from bonect.trainer.batch_augmentation import augment
from bonect.trainer.cache import (
    HU_MAX,
    HU_MIN,
    CachedPair,
    SliceIndex,
    build_cache,
    split_patients,
)
from bonect.trainer.curves import EpochRecord, read_history
from bonect.trainer.generalizability import training_options
from bonect.trainer.training import (
    CHECKPOINT,
    LOSSES,
    TrainingError,
    TrainingOptions,
    TrainingResult,
    manifest_for,
    train,
)
from trainer.conftest import COARSE_SIZE

SIZE = COARSE_SIZE  # the cached pairs of conftest
OPTIONS = TrainingOptions(
    arguments={"base_filters": 8, "levels": 3},
    batch_size=8,
    max_epochs=3,
    steps_per_epoch=3,
    seed=5,
    device="cpu",
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: fast on a shared 2-core machine, and one thread count throughout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(coarse_pairs: list[CachedPair]) -> list[CachedPair]:
    """Three coarse phantom patients, cached at 32² (conftest)."""
    return coarse_pairs


@pytest.fixture(scope="module")
def reference(pairs: list[CachedPair], tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """An uninterrupted run of three epochs."""
    return train(pairs, OPTIONS, tmp_path_factory.mktemp("reference"), progress=False)


def _trajectory(history: list[EpochRecord]) -> list[tuple[float, ...]]:
    """What a seed fixes (timings excluded)."""
    return [(r.epoch, r.train_loss, r.val_loss, r.val_mae_hu, r.learning_rate) for r in history]


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _val_mae_hu(network: torch.nn.Module, pairs: list[CachedPair]) -> float:
    index = SliceIndex(pairs)
    split = split_patients(pairs, index, OPTIONS.validation_fraction, OPTIONS.seed)
    x, y = index.load(split.val)
    with torch.inference_mode():
        return float((network(x) - y).abs().double().mean()) * (HU_MAX - HU_MIN)


def test_a_short_run_learns_and_returns_its_best_weights(
    reference: TrainingResult, pairs: list[CachedPair]
) -> None:
    history = reference.history
    assert [r.epoch for r in history] == [1, 2, 3]
    assert reference.stopped_because == "max epochs"
    assert history[-1].train_loss < history[0].train_loss
    assert all(np.isfinite(r.val_mae_hu) and r.slices_per_second > 0 for r in history)
    best = min(history, key=lambda r: r.val_loss)
    assert reference.best_epoch == best.epoch
    assert reference.best_val_mae_hu == best.val_mae_hu
    # the network returned is the best one: its validation MAE is the best epoch's
    network = reference.network
    assert not network.training and next(network.parameters()).device.type == "cpu"
    assert _val_mae_hu(network, pairs) == pytest.approx(best.val_mae_hu, rel=1e-4)
    saved = torch.load(reference.run_dir / CHECKPOINT, weights_only=True)["best_weights"]
    assert all(torch.equal(v, saved[k]) for k, v in network.state_dict().items())
    # patients, not slices, are split
    assert len(reference.val_patients) == 1
    assert set(reference.train_patients) | set(reference.val_patients) == {"key1", "key2", "key3"}
    assert not set(reference.train_patients) & set(reference.val_patients)
    assert reference.slices == sum(
        p.n_slices for p in pairs if p.source.patient_key in reference.train_patients
    )


def test_the_run_folder_holds_history_and_loss_curve(reference: TrainingResult) -> None:
    run = reference.run_dir
    assert read_history(run) == reference.history
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["val_mae_hu"]) == pytest.approx(reference.history[0].val_mae_hu)
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_the_manifest_describes_the_model(reference: TrainingResult, tmp_path: Path) -> None:
    manifest = manifest_for(
        reference,
        OPTIONS,
        name="test",
        version="1",
        size=SIZE,
        sites=["external-phantom"],
        command="pytest",
    )
    assert manifest.training.patient_keys == ("key1", "key2", "key3")
    assert manifest.training.epochs == 3 and manifest.training.loss == "mae"
    assert manifest.training.slices == reference.slices
    assert manifest.metrics["validation_mae_hu"] == pytest.approx(reference.best_val_mae_hu, 0.01)
    loaded = load_model(save_model(tmp_path / "model", manifest, reference.network))
    assert _weights_equal(loaded.network, reference.network)


def test_same_seed_and_data_give_the_same_history(
    reference: TrainingResult, pairs: list[CachedPair], tmp_path: Path
) -> None:
    again = train(pairs, dataclasses.replace(OPTIONS, max_epochs=2), tmp_path / "a", progress=False)
    assert _trajectory(again.history) == _trajectory(reference.history[:2])
    other_seed = dataclasses.replace(OPTIONS, max_epochs=1, seed=6)
    other = train(pairs, other_seed, tmp_path / "b", progress=False)
    assert _trajectory(other.history) != _trajectory(reference.history[:1])


def test_an_interrupted_run_resumes_as_if_never_interrupted(
    reference: TrainingResult, pairs: list[CachedPair], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = train(pairs, dataclasses.replace(OPTIONS, max_epochs=1), run, progress=False)
    assert len(first.history) == 1  # stopped by max epochs, as a shorter budget would

    def interrupt(record: EpochRecord) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(pairs, OPTIONS, run, progress=False, on_epoch=interrupt)
    assert [r.epoch for r in read_history(run)] == [1, 2]

    resumed = train(pairs, OPTIONS, run, progress=False)
    assert _trajectory(resumed.history) == _trajectory(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    assert _weights_equal(resumed.network, reference.network)


def test_resuming_with_other_options_or_data_is_refused(
    reference: TrainingResult, pairs: list[CachedPair], tmp_path: Path
) -> None:
    run = tmp_path / "copy"
    run.mkdir()
    (run / CHECKPOINT).write_bytes((reference.run_dir / CHECKPOINT).read_bytes())
    with pytest.raises(TrainingError, match="seed: 5 -> 9") as other_options:
        train(pairs, dataclasses.replace(OPTIONS, seed=9), run, progress=False)
    with pytest.raises(TrainingError, match="data differ: 3 pairs then, 2 now") as other_data:
        train(pairs[:2], OPTIONS, run, progress=False)
    for error in (other_options, other_data):
        assert "\n" not in str(error.value)
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        train(pairs, OPTIONS, run, progress=False)


def test_early_stop_after_patience_epochs_without_improvement(
    pairs: list[CachedPair], tmp_path: Path
) -> None:
    # a huge learning rate saturates the sigmoid at once: the validation loss stops improving
    options = dataclasses.replace(
        OPTIONS, learning_rate=10.0, patience=2, max_epochs=8, steps_per_epoch=2, augment=False
    )
    result = train(pairs, options, tmp_path, progress=False)
    assert result.stopped_because == "early stop: 2 epochs without improvement"
    assert len(result.history) == result.best_epoch + 2 < 8
    best = result.history[result.best_epoch - 1].val_loss
    assert all(r.val_loss >= best for r in result.history)


def test_mix_loss_and_time_budget(pairs: list[CachedPair], tmp_path: Path) -> None:
    p, t = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    expected = (p - t).abs().mean() + 4.4 * ((p - t) ** 2).mean()
    assert float(LOSSES["mix"](p, t)) == pytest.approx(float(expected), rel=1e-6)

    options = dataclasses.replace(OPTIONS, loss="mix", max_minutes=0.0)
    result = train(pairs, options, tmp_path, progress=False)
    assert result.stopped_because == "time budget" and len(result.history) == 1
    (record,) = result.history
    assert np.isfinite(record.val_loss) and record.val_loss > record.val_mae_hu / (HU_MAX - HU_MIN)


def test_validation_split_by_patient_and_single_patient_fallback(
    pairs: list[CachedPair],
) -> None:
    index = SliceIndex(pairs)
    split = split_patients(pairs, index, 0.15, seed=0)
    assert len(split.val_patients) == 1 and len(split.train_patients) == 2
    assert not set(split.train.tolist()) & set(split.val.tolist())
    assert len(split.train) + len(split.val) == len(index)

    one = SliceIndex(pairs[:1])
    single = split_patients(pairs[:1], one, 0.15, seed=0)
    assert single.val_patients == () and single.train_patients == ("key1",)
    assert len(single.val) == round(0.15 * len(one)) and len(single.train) == len(one) - len(
        single.val
    )


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="loss 'huber'"):
        TrainingOptions(loss="huber")
    with pytest.raises(ValueError, match="architecture"):
        TrainingOptions(architecture="resnet")
    with pytest.raises(ValueError, match="crop_size must be a multiple of 16"):
        TrainingOptions(crop_size=20)
    with pytest.raises(ValueError, match="contrast_remap must lie between 0 and 1"):
        TrainingOptions(contrast_remap=1.5)
    with pytest.raises(ValueError, match="context_slices must lie between 0 and 3"):
        TrainingOptions(context_slices=4)
    with pytest.raises(ValueError, match="vgg16_unet takes at most context_slices 1"):
        TrainingOptions(architecture="vgg16_unet", context_slices=2)
    with pytest.raises(ValueError, match="in_channels 1 does not match context_slices 1"):
        TrainingOptions(arguments={"in_channels": 1}, context_slices=1)


def test_contrast_remap_goes_from_the_config_to_the_training(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[trainer]\ncontrast_remap = 0.4\n", encoding="utf-8")
    options = training_options(load_config(path).trainer)
    assert options.contrast_remap == 0.4
    path.write_text("[trainer]\ncontrast_remap = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"trainer\.contrast_remap"):
        load_config(path)


def test_context_slices_goes_from_the_config_to_the_training(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[trainer]\ncontext_slices = 1\n", encoding="utf-8")
    options = training_options(load_config(path).trainer)
    assert options.context_slices == 1 and options.network_arguments == {"in_channels": 3}
    for wrong in (4, -1):
        path.write_text(f"[trainer]\ncontext_slices = {wrong}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"trainer\.context_slices:"):
            load_config(path)
    path.write_text('[trainer]\narchitecture = "vgg16_unet"\ncontext_slices = 2\n')
    with pytest.raises(ConfigError, match="vgg16_unet takes at most 1"):
        load_config(path)


def test_a_model_trained_on_neighbouring_slices_is_converted_with_them(
    pairs: list[CachedPair], tmp_path: Path
) -> None:
    """``context_slices`` 1: the cache holds three channels, the network takes them, and the
    model folder says so (``in_channels``), so that the converter feeds the neighbours."""
    sources = [p.source for p in pairs]
    deep = build_cache(tmp_path / "cache", sources, SIZE, context=1, progress=False)
    options = dataclasses.replace(OPTIONS, context_slices=1, max_epochs=1, steps_per_epoch=2)
    with pytest.raises(TrainingError, match="1 channels, but context_slices 1 needs 3"):
        train(pairs, options, tmp_path / "2d-cache", progress=False)
    result = train(deep, options, tmp_path / "run", progress=False)
    assert np.isfinite(result.best_val_mae_hu)
    with torch.inference_mode():  # the network takes three channels
        assert result.network(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, SIZE, SIZE)
    manifest = manifest_for(
        result, options, name="t", version="1", size=SIZE, sites=["phantom"], command="pytest"
    )
    assert manifest.arguments == {"base_filters": 8, "levels": 3, "in_channels": 3}
    assert OPTIONS.network_arguments == OPTIONS.arguments  # a 2D model's manifest as before
    loaded = load_model(save_model(tmp_path / "model", manifest, result.network))
    assert loaded.manifest.arguments["in_channels"] == 3 and loaded.manifest.context_slices == 1
    assert _weights_equal(loaded.network, result.network)
    image = prepare(read_nifti(sources[0].mr), SIZE).image
    prediction = predict_cube(loaded, image, ("axial", "coronal"), device=torch.device("cpu"))
    assert prediction.hu.shape == image.shape and np.isfinite(prediction.hu).all()
    assert float(prediction.hu.min()) >= HU_MIN and float(prediction.hu.max()) <= HU_MAX


def test_training_on_windows_validates_on_whole_slices(
    pairs: list[CachedPair], tmp_path: Path
) -> None:
    """``crop_size``: each step sees 16² windows of the 32² slices; validation and the network
    returned work on whole slices, and the windows are part of what a resume must match."""
    options = dataclasses.replace(OPTIONS, crop_size=16, max_epochs=2)
    result = train(pairs, options, tmp_path / "windows", progress=False)
    assert [r.epoch for r in result.history] == [1, 2]
    assert all(np.isfinite(r.train_loss) and np.isfinite(r.val_mae_hu) for r in result.history)
    assert _val_mae_hu(result.network, pairs) == pytest.approx(result.best_val_mae_hu, rel=1e-4)
    with pytest.raises(TrainingError, match="crop_size: 16 -> None"):
        train(pairs, dataclasses.replace(options, crop_size=None), tmp_path / "windows")


def test_vgg16_unet_takes_a_training_step(pairs: list[CachedPair]) -> None:
    """Construction smoke (a full run would write a ~450 MB checkpoint per epoch)."""
    options = TrainingOptions(architecture="vgg16_unet", batch_size=2)
    torch.manual_seed(0)
    network = build_model(options.architecture, options.arguments)
    network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    ((x, y),) = SliceIndex(pairs).batches([np.array([10, 40])], torch.device("cpu"))
    x, y = augment(x, y, torch.Generator().manual_seed(0))
    prediction = network(x)
    loss = LOSSES[options.loss](prediction, y)
    loss.backward()  # type: ignore[no-untyped-call]
    optimiser.step()
    assert prediction.shape == (2, 1, SIZE, SIZE) and np.isfinite(float(loss.detach()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_mixed_precision(pairs: list[CachedPair], tmp_path: Path) -> None:
    options = dataclasses.replace(OPTIONS, device="cuda", max_epochs=2)
    result = train(pairs, options, tmp_path, progress=False)
    assert len(result.history) == 2 and np.isfinite(result.best_val_mae_hu)
    assert next(result.network.parameters()).device.type == "cpu"
    resumed = train(pairs, dataclasses.replace(options, max_epochs=3), tmp_path, progress=False)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]


def test_mae_bone_loss_with_local_and_external_sites_in_equal_share(
    pairs: list[CachedPair], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = split_patients(pairs, SliceIndex(pairs), OPTIONS.validation_fraction, OPTIONS.seed)
    mixed = [  # one training patient becomes local, the others stay external
        dataclasses.replace(p, source=dataclasses.replace(p.source, key="local/PH1"))
        if p.source.patient_key == split.train_patients[0]
        else p
        for p in pairs
    ]
    options = dataclasses.replace(
        OPTIONS, loss="mae_bone", max_epochs=1, local_sites=("local",), augment=False
    )
    with caplog.at_level("INFO", logger="bonect.trainer.training"):
        result = train(mixed, options, tmp_path, progress=False)
    (record,) = result.history
    assert np.isfinite(record.train_loss) and np.isfinite(record.val_loss)
    assert "each epoch draws local and external slices in equal share" in caplog.text

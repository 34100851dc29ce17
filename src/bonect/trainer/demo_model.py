"""Train the small phantom-only Light_U-Net that ships for the demo and the tests.

A plain loop, not the product's trainer: phantom patients of the ``wide`` family
(:mod:`bonect.phantom.variation`: every technique, tissue signal, bone curve, resolution, field
of view, pose, age and pathology drawn per patient) are rendered, prepared by the converter's
own preprocessing and sliced in three planes; a Light_U-Net is fitted with a bone-weighted L1
loss on batches augmented as the product's trainer does (geometry on input and target, MR
contrast on the input), with a cosine learning-rate decay. The 3-plane spread threshold that
marks voxels likely to be wrong by more than 200 HU is then calibrated on held-out patients and
written to the manifest. The result is labelled phantom-trained, not for clinical use.

Reproduce the committed model with the command in its manifest (``training.command``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bonect.converter.inference import pick_device
from bonect.converter.model_folder import LoadedModel, load_model, save_model
from bonect.converter.networks import LightUNet, count_parameters
from bonect.errors import DeviceError
from bonect.hounsfield import HU_MAX, HU_MIN
from bonect.phantom.generate import PhantomCase
from bonect.phantom.variation import FAMILY_NAMES, Family
from bonect.registry import Manifest, TrainingProvenance, input_channels, read_manifest
from bonect.trainer.batch_augmentation import AugmentationOptions, augment, random_windows
from bonect.trainer.losses import bone_weighted_l1
from bonect.trainer.phantom_slices import phantom_case, slice_pairs
from bonect.trainer.spread_calibration import SpreadCalibration, calibrate, spread_and_error
from bonect.uncertainty import THRESHOLD_KEY

logger = logging.getLogger(__name__)


def _batches(n: int, batch: int, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    return [order[i : i + batch] for i in range(0, n, batch)]


def _tensor(a: npt.NDArray[np.float16]) -> torch.Tensor:
    """A batch as (n, c, h, w) float32, channels-last; (n, h, w) becomes one channel."""
    t = torch.from_numpy(a.astype(np.float32))
    return (t[:, None] if t.ndim == 3 else t).contiguous(memory_format=torch.channels_last)


def train(
    out: Path,
    *,
    seed: int = 2024,
    patients: int = 8,
    size: int = 128,
    crop: int | None = None,
    epochs: int = 12,
    batch: int = 16,
    max_minutes: float = 30.0,
    steps_per_epoch: int | None = None,
    val_slices: int = 96,
    validation_patients: int = 1,
    family: Family = "wide",
    bone_weight: float = 1.0,
    l2_weight: float = 0.0,
    augmentation: bool = True,
    dark_probability: float = 0.0,
    remap_probability: float = 0.0,
    calibration_patients: int = 2,
    init: Path | None = None,
    learning_rate: float = 1e-3,
    cosine: bool = True,
    device: str = "auto",
    workers: int = 1,
    context: int = 0,
    command: str = "",
) -> Path:
    """Render, slice, fit, calibrate and save; returns the model folder.

    The network trains on `device` (``auto``: CUDA when present); batches are cut and augmented
    on the CPU from the seeded generators either way, so a run sees the same samples on both.
    """
    if validation_patients < 1:
        raise ValueError("at least one validation patient is needed to pick the epoch kept")
    target = pick_device(device)  # before rendering: a missing GPU is refused at once
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    train_idx = list(range(patients))
    val_idx = list(range(patients, patients + validation_patients))  # for the epoch kept
    render = functools.partial(
        slice_pairs, seed, size=size, family=family, context=context, workers=workers
    )
    x_train, y_train = render(train_idx)
    x_val, y_val = render(val_idx)
    pick = np.random.default_rng(seed + 1).permutation(len(x_val))[: val_slices * len(val_idx)]
    x_val, y_val = x_val[pick], y_val[pick]
    logger.info("%d training and %d validation slices", len(x_train), len(x_val))
    arguments = {"base_filters": 16, "levels": 5}
    if context > 0:  # the 2.5D input: the slice and its neighbours as channels
        arguments["in_channels"] = input_channels(context)
    net = LightUNet(**arguments).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if init is not None:  # fine-tune a model already trained
        net.load_state_dict(load_model(init).network.state_dict())
    else:
        # start the sigmoid at the mean target, not at 0.5 (~1000 HU): L1's gradient is only a
        # sign, so a saturated start costs epochs
        mean_target = float(np.clip(y_train.astype(np.float32).mean(), 1e-3, 1 - 1e-3))
        with torch.no_grad():
            net.head.bias.fill_(float(np.log(mean_target / (1 - mean_target))))
    net.to(target)
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    per_epoch = min(math.ceil(len(x_train) / batch), steps_per_epoch or len(x_train))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=max(1, epochs * per_epoch), eta_min=2e-5 if cosine else learning_rate
    )
    best_state, best_val, history = copy.deepcopy(net.state_dict()), float("inf"), []
    best_objective = float("inf")
    options = AugmentationOptions(
        dark_probability=dark_probability, remap_probability=remap_probability
    )
    started = time.monotonic()
    epoch = 0
    for epoch in range(1, epochs + 1):
        net.train()
        batches = _batches(len(x_train), batch, rng)[:steps_per_epoch]
        losses = []
        for idx in tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False):
            x, y = random_windows(_tensor(x_train[idx]), _tensor(y_train[idx]), crop, generator)
            if augmentation:
                x, y = augment(x, y, generator, options)
            elif rng.random() < 0.5:  # left-right flip
                x, y = x.flip(-1), y.flip(-1)
            x, y = x.to(target, non_blocking=True), y.to(target, non_blocking=True)
            prediction = net(x)
            loss = bone_weighted_l1(prediction, y, bone_weight)
            if l2_weight > 0:  # L2 predicts the mean where L1 predicts the median
                loss = loss + l2_weight * F.mse_loss(prediction, y)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()) * (HU_MAX - HU_MIN))
        val, val_l2 = _validate(net, x_val, y_val, batch, target)
        history.append((epoch, float(np.mean(losses)), val))
        logger.info("epoch %d: train L1 %.1f HU, validation L1 %.1f HU", *history[-1])
        # keep the epoch best by the loss trained on: with L2 in it, not L1 alone
        objective = val / (HU_MAX - HU_MIN) + l2_weight * val_l2
        if objective < best_objective:
            best_objective, best_val = objective, val
            best_state = copy.deepcopy(net.state_dict())
        if (time.monotonic() - started) / 60 > max_minutes:
            logger.info("time budget of %.0f min reached after epoch %d", max_minutes, epoch)
            break
    net.load_state_dict(best_state)
    net.eval()
    keys = tuple(hashlib.sha256(f"phantom:{seed}:{i}".encode()).hexdigest()[:16] for i in train_idx)
    slices_seen, epochs_run, history_note = len(x_train), epoch, ""
    if init is not None:  # the provenance of the model fine-tuned is part of this one's
        before = read_manifest(init)
        keys = before.training.patient_keys + keys
        slices_seen += before.training.slices
        epochs_run += before.training.epochs
        history_note = f"; fine-tuned from {before.label} ({before.training.command})"
    manifest = Manifest(
        name="phantom-light-unet",
        version=datetime.now(UTC).strftime("%Y%m%d"),
        architecture="light_unet",
        arguments=arguments,
        input_size=size,
        hu_min=HU_MIN,
        hu_max=HU_MAX,
        clinical_use=False,
        description=(
            f"Light_U-Net trained on bonect's digital phantom only ({family} family: "
            + (
                "ZTE contrast"
                if family == "classic"
                else "ZTE, UTE and black-bone GRE, randomised scanners, anatomy and acquisitions"
            )
            + f"; {time.monotonic() - started:.0f} s of training on {describe_device(target)})"
            + history_note
            + "; for the demo and the tests. NOT FOR CLINICAL USE."
        ),
        training=TrainingProvenance(
            sites=("phantom",),
            patient_keys=keys,
            slices=slices_seen,
            epochs=epochs_run,
            loss=("mae" if bone_weight == 0 else f"mae, bone x{1 + bone_weight:g}")
            + (f" + {l2_weight:g}·mse" if l2_weight > 0 else ""),
            command=command or f"python -m bonect.trainer.demo_model {out} --seed {seed}",
        ),
        metrics={"validation_l1_hu": round(best_val, 2), "parameters": count_parameters(net)},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if calibration_patients > 0:
        first = patients + validation_patients  # after the training and validation patients
        cases = [phantom_case(seed, i, family) for i in range(first, first + calibration_patients)]
        calibration = calibrate_on(LoadedModel(manifest, net, out), cases)
        logger.info("3-plane spread calibrated: %s", calibration.as_dict())
        metrics = dict(manifest.metrics)
        metrics[THRESHOLD_KEY] = round(calibration.threshold_hu, 1)
        metrics["uncertainty_auc"] = round(calibration.auc, 3)
        manifest = manifest.model_copy(update={"metrics": metrics})
    return save_model(out, manifest, net.to("cpu"))  # weights any machine loads


def calibrate_on(model: LoadedModel, cases: Sequence[PhantomCase]) -> SpreadCalibration:
    """Calibrate the 3-plane spread threshold on held-out phantom patients."""
    spreads, errors = [], []
    for case in tqdm(cases, desc="calibrating the spread", unit="patient"):
        spread, error = spread_and_error(model, case.mr, case.ct_on_mr, case.labels.array > 0)
        spreads.append(spread)
        errors.append(error)
    return calibrate(spreads, errors)


def describe_device(device: torch.device) -> str:
    """What the training ran on, for the manifest's budget: the GPU, or the CPU's threads."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"{torch.get_num_threads()} CPU thread(s), {platform.processor() or platform.machine()}"


@torch.inference_mode()
def _validate(
    net: torch.nn.Module,
    x: npt.NDArray[np.float16],
    y: npt.NDArray[np.float16],
    batch: int,
    device: torch.device,
) -> tuple[float, float]:
    """Validation L1 in HU and L2 in the network's units."""
    net.eval()
    l1 = l2 = 0.0
    for i in range(0, len(x), batch):
        rows = slice(i, i + batch)
        difference = net(_tensor(x[rows]).to(device)) - _tensor(y[rows]).to(device)
        l1 += float(difference.abs().sum())
        l2 += float(difference.square().sum())
    voxels = y.size
    return float(l1 / voxels * (HU_MAX - HU_MIN)), float(l2 / voxels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bonect.trainer.demo_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="model input size (multiple of 16)")
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        help="train on random windows of this side (multiple of 16) of the --size slices",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument(
        "--family", choices=FAMILY_NAMES, default="wide", help="phantom family to train on"
    )
    parser.add_argument(
        "--bone-weight", type=float, default=1.0, help="extra L1 weight of bone voxels (0: plain)"
    )
    parser.add_argument(
        "--l2-weight",
        type=float,
        default=0.0,
        help="add this many times L2 to the loss (the paper's mix: 4.4); L1 alone predicts the "
        "median, which calls uncertain bone soft tissue",
    )
    parser.add_argument(
        "--no-augmentation", action="store_true", help="left-right flips only (the old recipe)"
    )
    parser.add_argument(
        "--calibration-patients", type=int, default=2, help="held-out patients for the threshold"
    )
    parser.add_argument(
        "--validation-patients",
        type=int,
        default=1,
        help="held-out patients whose slices (96 each) pick the epoch kept",
    )
    parser.add_argument(
        "--dark-curve",
        type=float,
        default=0.0,
        help="share of slices whose signal below soft tissue gets a random monotone curve",
    )
    parser.add_argument(
        "--contrast-remap",
        type=float,
        default=0.0,
        help="share of slices whose signal goes through a random, not necessarily monotone "
        "curve (the product trainer's [trainer] contrast_remap)",
    )
    parser.add_argument("--init", type=Path, default=None, help="model folder to fine-tune")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's, at the start")
    parser.add_argument(
        "--constant-lr", action="store_true", help="no cosine decay (the old recipe)"
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="batches per epoch (default: all)"
    )
    parser.add_argument(
        "--context-slices",
        type=int,
        choices=range(4),
        default=0,
        metavar="{0..3}",
        help="neighbouring slices on either side as input channels (1: the 2.5D input of three "
        "slices; 0: 2D)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network trains (auto: CUDA when present, else the CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that render the phantom patients (the same data from any number)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: must be at least 1, got {args.workers}")
    try:
        pick_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = train(
        args.out,
        seed=args.seed,
        patients=args.patients,
        size=args.size,
        crop=args.crop,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        steps_per_epoch=args.steps_per_epoch,
        family=args.family,
        bone_weight=args.bone_weight,
        l2_weight=args.l2_weight,
        augmentation=not args.no_augmentation,
        dark_probability=args.dark_curve,
        remap_probability=args.contrast_remap,
        calibration_patients=args.calibration_patients,
        validation_patients=args.validation_patients,
        init=args.init,
        learning_rate=args.learning_rate,
        cosine=not args.constant_lr,
        device=args.device,
        workers=args.workers,
        context=args.context_slices,
        command=" ".join(["python -m bonect.trainer.demo_model", *(argv or sys.argv[1:])]),
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

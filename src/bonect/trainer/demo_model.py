"""Train the small phantom-only Light_U-Net that ships for the demo and the tests.

A plain loop, not the product's trainer: phantom patients are rendered, prepared by the
converter's own preprocessing, sliced in three planes, and a Light_U-Net is fitted with the
L1 loss (the paper's best MAE). The result is labelled phantom-trained, not for clinical use.

Reproduce the committed model with::

    python -m bonect.trainer.demo_model models/phantom-light-unet
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from bonect.converter.model_folder import save_model
from bonect.converter.networks import LightUNet, count_parameters
from bonect.converter.preprocess import PLANE_AXIS, prepare, slices, to_cube
from bonect.hounsfield import AIR_HU, HU_MAX, HU_MIN
from bonect.phantom.generate import ORIENTATIONS, Acquisition, generate_case
from bonect.registry import Manifest, TrainingProvenance

logger = logging.getLogger(__name__)


def slice_pairs(
    seed: int, indices: Sequence[int], size: int, *, min_fraction: float = 0.04
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float16]]:
    """Model inputs and targets ([0, 1]) from phantom patients, three planes each."""
    inputs, targets = [], []
    for i in tqdm(indices, desc="phantom patients", unit="patient"):
        orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
        case = generate_case(
            seed, i, acquisition=Acquisition(orientation, (2.0, 1.6, 1.6)), ct_acquisition=None
        )
        prepared = prepare(case.mr, size)
        ct = to_cube(case.ct_on_mr, prepared.cube, cval=AIR_HU)
        target = (np.clip(ct, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
        for plane in PLANE_AXIS:
            frac = slices(prepared.cube_mask, plane).mean(axis=(1, 2))
            keep = frac >= min_fraction
            inputs.append(slices(prepared.image, plane)[keep].astype(np.float16))
            targets.append(slices(target, plane)[keep].astype(np.float16))
    return np.concatenate(inputs), np.concatenate(targets)


def _batches(n: int, batch: int, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    return [order[i : i + batch] for i in range(0, n, batch)]


def _tensor(a: npt.NDArray[np.float16]) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))[:, None].contiguous(
        memory_format=torch.channels_last
    )


def train(
    out: Path,
    *,
    seed: int = 2024,
    patients: int = 8,
    size: int = 128,
    epochs: int = 12,
    batch: int = 16,
    max_minutes: float = 30.0,
    steps_per_epoch: int | None = None,
    val_slices: int = 96,
    command: str = "",
) -> Path:
    """Render, slice, fit and save; returns the model folder."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_idx = list(range(patients))
    val_idx = [patients]  # one held-out patient for early stopping
    x_train, y_train = slice_pairs(seed, train_idx, size)
    x_val, y_val = slice_pairs(seed, val_idx, size)
    pick = np.random.default_rng(seed + 1).permutation(len(x_val))[:val_slices]
    x_val, y_val = x_val[pick], y_val[pick]
    logger.info("%d training and %d validation slices", len(x_train), len(x_val))
    net = LightUNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # start the sigmoid at the mean target, not at 0.5 (~1000 HU): L1's gradient is only a sign,
    # so a saturated start costs epochs
    mean_target = float(np.clip(y_train.astype(np.float32).mean(), 1e-3, 1 - 1e-3))
    with torch.no_grad():
        net.head.bias.fill_(float(np.log(mean_target / (1 - mean_target))))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    best_state, best_val, history = copy.deepcopy(net.state_dict()), float("inf"), []
    started = time.monotonic()
    epoch = 0
    for epoch in range(1, epochs + 1):
        net.train()
        batches = _batches(len(x_train), batch, rng)[:steps_per_epoch]
        losses = []
        for idx in tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False):
            x, y = _tensor(x_train[idx]), _tensor(y_train[idx])
            if rng.random() < 0.5:  # left-right flip
                x, y = x.flip(-1), y.flip(-1)
            loss = torch.nn.functional.l1_loss(net(x), y)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            losses.append(float(loss.detach()) * (HU_MAX - HU_MIN))
        val = _validate(net, x_val, y_val, batch)
        history.append((epoch, float(np.mean(losses)), val))
        logger.info("epoch %d: train L1 %.1f HU, validation L1 %.1f HU", *history[-1])
        if val < best_val:
            best_val, best_state = val, copy.deepcopy(net.state_dict())
        if (time.monotonic() - started) / 60 > max_minutes:
            logger.info("time budget of %.0f min reached after epoch %d", max_minutes, epoch)
            break
    net.load_state_dict(best_state)
    keys = tuple(hashlib.sha256(f"phantom:{seed}:{i}".encode()).hexdigest()[:16] for i in train_idx)
    manifest = Manifest(
        name="phantom-light-unet",
        version=datetime.now(UTC).strftime("%Y%m%d"),
        architecture="light_unet",
        arguments={"base_filters": 16, "levels": 5},
        input_size=size,
        hu_min=HU_MIN,
        hu_max=HU_MAX,
        clinical_use=False,
        description=(
            "Light_U-Net trained on bonect's digital phantom only (ZTE contrast); for the demo "
            "and the tests. NOT FOR CLINICAL USE."
        ),
        training=TrainingProvenance(
            sites=("phantom",),
            patient_keys=keys,
            slices=len(x_train),
            epochs=epoch,
            loss="mae",
            command=command or f"python -m bonect.trainer.demo_model {out} --seed {seed}",
        ),
        metrics={"validation_l1_hu": round(best_val, 2), "parameters": count_parameters(net)},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return save_model(out, manifest, net)


@torch.inference_mode()
def _validate(
    net: torch.nn.Module, x: npt.NDArray[np.float16], y: npt.NDArray[np.float16], batch: int
) -> float:
    net.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        pred = net(_tensor(x[i : i + batch]))
        total += float((pred - _tensor(y[i : i + batch])).abs().sum())
    return float(total / (len(x) * x.shape[1] * x.shape[2]) * (HU_MAX - HU_MIN))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bonect.trainer.demo_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="model input size (multiple of 16)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="batches per epoch (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = train(
        args.out,
        seed=args.seed,
        patients=args.patients,
        size=args.size,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        steps_per_epoch=args.steps_per_epoch,
        command=" ".join(["python -m bonect.trainer.demo_model", *(argv or sys.argv[1:])]),
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training loop of the paper: Adam, a loss of :mod:`~bonect.trainer.losses`, patient split,
early stop, resume.

Slices come from the memory-mapped :mod:`~bonect.trainer.cache` (a batch is gathered, sorted for
locality and copied into a float32 tensor by a background thread while the model works on the
previous one), are augmented on the device (:mod:`~bonect.trainer.batch_augmentation`) and fed
channels-last to the network; CUDA runs under autocast with a gradient scaler. Every epoch's
randomness (order of the slices, augmentation) is seeded from ``(seed, epoch)``, and after every
epoch ``checkpoint.pt`` is replaced atomically, so a run resumed after an interruption retraces
the run that was not interrupted. The best weights (lowest validation loss) are kept. With local
and external sites together, epochs may draw both in equal share (:mod:`~bonect.trainer.sampling`).
With ``processes`` > 1 the same loop runs on several processes, data-parallel, and trains the
same model up to the order of floating-point sums (:mod:`~bonect.trainer.parallel`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from bonect.converter.inference import pick_device
from bonect.converter.networks import ARCHITECTURES, build_model, count_parameters
from bonect.registry import Manifest, TrainingProvenance, input_channels
from bonect.trainer.batch_augmentation import AugmentationOptions, augment, random_windows
from bonect.trainer.cache import (
    HU_MAX,
    HU_MIN,
    MAX_CONTEXT,
    CachedPair,
    SliceIndex,
    SliceSplit,
    split_patients,
)
from bonect.trainer.curves import (
    CHECKPOINT,
    LOSS_CURVE,
    EpochRecord,
    RunState,
    TrainingError,
    cpu_copy,
    draw_loss_curve,
    identity_of,
    load_checkpoint,
    save_checkpoint,
    write_history,
)
from bonect.trainer.losses import LOSSES
from bonect.trainer.parallel import SINGLE, Ranks, batch_norm_over_ranks, check_processes, launch
from bonect.trainer.sampling import EpochSampler

logger = logging.getLogger(__name__)

Indices = npt.NDArray[np.int64]
CURVE_EVERY_S = 300.0  # redraw loss_curve.png during a run at most this often; always at the end

__all__ = [
    "CHECKPOINT",
    "LOSSES",
    "EpochRecord",
    "TrainingError",
    "TrainingOptions",
    "TrainingResult",
    "manifest_for",
    "split_patients",
    "train",
]


@dataclass(frozen=True)
class TrainingOptions:
    """How to train; the defaults are the paper's."""

    architecture: str = "light_unet"  # or "vgg16_unet"
    arguments: dict[str, Any] = field(default_factory=dict)  # for build_model and the manifest
    loss: str = "mae"  # "mae" | "mse" | "mix" (L1 + 4.4·L2) | "mae_bone" (L1, bone x2)
    batch_size: int = 128
    crop_size: int | None = None  # train on random windows of this side; None: whole slices
    max_epochs: int = 100
    patience: int = 5  # early stop after this many epochs without validation improvement
    learning_rate: float = 1e-3  # Adam, otherwise default parameters
    validation_fraction: float = 0.15  # of patients; at least 1 when there are 2 or more
    steps_per_epoch: int | None = None  # cap on batches per epoch (tests, demos)
    augment: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    max_minutes: float | None = None  # stop after the epoch that exceeds it (from this call)
    local_sites: tuple[str, ...] = ()  # pairs of these sites are local, any other external
    balance_sites: bool = True  # epochs draw local and external slices in equal share
    processes: int = 1  # data-parallel ranks (parallel.py); batch_size stays the global batch
    contrast_remap: float = 0.0  # share of slices whose signal gets a random, non-monotone remap
    context_slices: int = 0  # neighbours on either side as input channels (1: 2.5D); 0: 2D

    def __post_init__(self) -> None:
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture {self.architecture!r} not in {sorted(ARCHITECTURES)}")
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} not in {sorted(LOSSES)}")
        if self.batch_size < 2:
            problems.append("batch_size must be at least 2 (batch norm)")
        if self.max_epochs < 1 or self.patience < 1:
            problems.append("max_epochs and patience must be at least 1")
        if not 0.0 < self.validation_fraction < 1.0:
            problems.append("validation_fraction must lie between 0 and 1")
        if self.crop_size is not None and (self.crop_size < 16 or self.crop_size % 16):
            problems.append("crop_size must be a multiple of 16")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be at least 1")
        if self.processes < 1:
            problems.append(f"processes must be at least 1, got {self.processes}")
        elif self.batch_size < self.processes:
            problems.append("batch_size must be at least processes (each takes a share)")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device {self.device!r} is not auto, cpu or cuda")
        if not 0.0 <= self.contrast_remap <= 1.0:
            problems.append("contrast_remap must lie between 0 and 1")
        if not 0 <= self.context_slices <= MAX_CONTEXT:
            problems.append(f"context_slices must lie between 0 and {MAX_CONTEXT}")
        elif self.architecture == "vgg16_unet" and self.context_slices > 1:
            problems.append("vgg16_unet takes at most context_slices 1 (3 input channels)")
        channels = self.arguments.get("in_channels")
        if channels is not None and channels != self.in_channels:
            problems.append(
                f"arguments' in_channels {channels} does not match context_slices "
                f"{self.context_slices} ({self.in_channels} channels)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def in_channels(self) -> int:
        """Input channels of the network: the slice and its neighbours on either side."""
        return input_channels(self.context_slices)

    @property
    def network_arguments(self) -> dict[str, Any]:
        """The arguments of :func:`build_model` and of the manifest: ``arguments``, with
        ``in_channels`` for a 2.5D input (a 2D model's manifest stays as it was)."""
        arguments = copy.deepcopy(self.arguments)
        if self.context_slices > 0:
            arguments["in_channels"] = self.in_channels
        return arguments


@dataclass(frozen=True)
class TrainingResult:
    """A finished run: the best network and how it got there."""

    network: nn.Module  # best weights loaded, eval mode, on the CPU
    history: list[EpochRecord]
    best_epoch: int
    best_val_mae_hu: float
    stopped_because: str  # "early stop: 5 epochs without improvement" | "max epochs" | ...
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]
    slices: int  # training slices
    run_dir: Path


def train(
    pairs: Sequence[CachedPair],
    options: TrainingOptions,
    run_dir: Path,
    *,
    progress: bool = True,
    resume: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainingResult:
    """Train a network on cached pairs, writing checkpoint, history and loss curve to `run_dir`.

    Parameters
    ----------
    pairs
        The cached pairs (all of one image size).
    options
        What to train and how. With ``processes`` > 1 the loop runs on that many processes
        (:mod:`~bonect.trainer.parallel`), each on its share of every batch, and this process
        waits for them and reads the result from the checkpoint.
    run_dir
        The run folder; holds ``checkpoint.pt``, ``history.csv``, ``history.json`` and
        ``loss_curve.png``.
    progress
        Show a progress bar per epoch.
    resume
        Continue from ``run_dir/checkpoint.pt`` when there is one (it must come from the same
        options and data; ``max_epochs``, ``patience``, ``max_minutes``, ``device`` and
        ``processes`` may differ). Without it, a checkpoint there is overwritten.
    on_epoch
        Called after each epoch, once its checkpoint is written (one process only).
    """
    index = SliceIndex(pairs)
    if len(index) < 2:
        raise TrainingError(f"{len(pairs)} pairs with {len(index)} slices: nothing to train on")
    if index.channels != options.in_channels:
        raise TrainingError(
            f"the cached inputs have {index.channels} channels, but context_slices "
            f"{options.context_slices} needs {options.in_channels} (build the cache with "
            f"context={options.context_slices})"
        )
    try:
        device = pick_device(options.device)
    except RuntimeError as exc:
        raise TrainingError(str(exc)) from exc
    check_processes(options.processes, device)
    if options.processes > 1 and on_epoch is not None:
        raise ValueError("on_epoch is called in one process only: processes must be 1")
    run_dir.mkdir(parents=True, exist_ok=True)
    split = split_patients(pairs, index, options.validation_fraction, options.seed)
    logger.info(
        "training %s (%s loss) on %d slices of %d patients, validating on %d slices of %d%s",
        options.architecture, options.loss, len(split.train), len(split.train_patients),
        len(split.val), len(split.val_patients),
        f" on {options.processes} processes" if options.processes > 1 else "",
    )  # fmt: skip
    arguments = (pairs, split, options, run_dir, progress, resume)
    if options.processes == 1:
        network, state, reason = _run(SINGLE, device, *arguments, on_epoch=on_epoch)
    else:
        threads = max(torch.get_num_threads() // options.processes, 1)
        reason = launch(
            _run_rank, arguments, processes=options.processes, device=device, threads=threads
        )
        network = build_model(options.architecture, options.network_arguments)
        state = _run_state(run_dir / CHECKPOINT, pairs, options, network)
    logger.info("stopped (%s); best epoch %d", reason, state.best_epoch)
    network.load_state_dict(state.best_weights)
    network.to(device="cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    network.eval()
    return TrainingResult(
        network=network,
        history=list(state.history),
        best_epoch=state.best_epoch,
        best_val_mae_hu=state.best_val_mae_hu,
        stopped_because=reason,
        train_patients=split.train_patients,
        val_patients=split.val_patients,
        slices=len(split.train),
        run_dir=run_dir,
    )


def _identity(pairs: Sequence[CachedPair], options: TrainingOptions) -> dict[str, Any]:
    return identity_of(
        asdict(options),
        [(p.source.key, p.source.patient_key, p.cache_key, p.n_slices) for p in pairs],
    )


def _run_state(
    checkpoint: Path, pairs: Sequence[CachedPair], options: TrainingOptions, network: nn.Module
) -> RunState:
    """The finished run as its checkpoint holds it (the caller's RNG untouched)."""
    optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    with torch.random.fork_rng(devices=[]):
        return load_checkpoint(checkpoint, _identity(pairs, options), network, optimiser, scaler)


def _run_rank(
    ranks: Ranks,
    device: torch.device,
    pairs: Sequence[CachedPair],
    split: SliceSplit,
    options: TrainingOptions,
    run_dir: Path,
    progress: bool,
    resume: bool,
) -> str:
    """One rank of a run on several processes; returns why it stopped."""
    return _run(ranks, device, pairs, split, options, run_dir, progress, resume)[2]


def _run(
    ranks: Ranks,
    device: torch.device,
    pairs: Sequence[CachedPair],
    split: SliceSplit,
    options: TrainingOptions,
    run_dir: Path,
    progress: bool,
    resume: bool,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[nn.Module, RunState, str]:
    """The loop, on one rank (of one or several): the network, where the run ends, and why.

    Rank 0 alone writes the run folder; every rank takes the same decisions (validation is
    summed over the ranks, the stop is rank 0's).
    """
    index = SliceIndex(pairs)
    sampler = EpochSampler.for_pairs(
        pairs,
        index,
        split.train,
        local_sites=options.local_sites,
        balance=options.balance_sites,
        batch_size=options.batch_size,
        seed=options.seed,
        steps_per_epoch=options.steps_per_epoch,
    )
    if sampler.balanced and ranks.main:
        logger.info("each epoch draws local and external slices in equal share")
    cuda = [device.index or 0] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda),  # seed here without touching the caller's RNG
        torch.backends.cudnn.flags(enabled=True, benchmark=device.type == "cuda"),
    ):
        torch.manual_seed(options.seed)
        network = build_model(options.architecture, options.network_arguments)
        _start_head_at_mean(network, index, split.train, options.seed)
        if ranks.world > 1:
            network = batch_norm_over_ranks(network, device)
        network.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        identity = _identity(pairs, options)
        checkpoint = run_dir / CHECKPOINT
        if resume and checkpoint.exists():
            state = load_checkpoint(checkpoint, identity, network, optimiser, scaler)
            if ranks.main:
                logger.info("resuming %s after epoch %d", run_dir, state.epoch)
        else:
            state = RunState(best_weights=cpu_copy(network))
        model = network if ranks.world == 1 else _data_parallel(network, device)
        started, first_epoch, drawn = time.monotonic(), state.epoch, time.monotonic()
        while (
            reason := ranks.from_main(_stop_reason(state, options, started, first_epoch))
        ) is None:
            epoch_started = time.monotonic()
            epoch = state.epoch + 1
            train_loss, rate = _train_epoch(
                model, optimiser, scaler, index, sampler, options, epoch, device,
                progress and ranks.main, ranks,
            )  # fmt: skip
            val_loss, val_mae = _validate(network, index, split.val, options, device, ranks)
            record = EpochRecord(
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                val_mae_hu=val_mae,
                seconds=time.monotonic() - epoch_started,
                slices_per_second=rate,
                learning_rate=float(optimiser.param_groups[0]["lr"]),
            )
            state = state.after_epoch(network, record)
            if not ranks.main:
                continue
            save_checkpoint(checkpoint, identity, state, network, optimiser, scaler)
            write_history(run_dir, state.history)
            if time.monotonic() - drawn > CURVE_EVERY_S:  # a long run's curve, now and then
                draw_loss_curve(state.history, state.best_epoch, run_dir / LOSS_CURVE)
                drawn = time.monotonic()
            logger.info(
                "epoch %d: loss %.5f, validation %.5f (%.1f HU)%s, %.1f slices/s",
                epoch, train_loss, val_loss, val_mae,
                " best" if state.best_epoch == epoch else "", rate,
            )  # fmt: skip
            if on_epoch is not None:
                on_epoch(record)
    if ranks.main:
        draw_loss_curve(state.history, state.best_epoch, run_dir / LOSS_CURVE)
    return network, state, reason


def _data_parallel(network: nn.Module, device: torch.device) -> nn.Module:
    """`network` with its gradients averaged over the ranks (the buffers are kept equal by the
    batch norm over all ranks, so they are not broadcast before every forward)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids, forward_sync_buffers=False)


def _stop_reason(
    state: RunState, options: TrainingOptions, started: float, first_epoch: int
) -> str | None:
    """Why to stop before the next epoch, or None; the time budget counts from this call."""
    if state.bad_epochs >= options.patience:
        return f"early stop: {options.patience} epochs without improvement"
    if state.epoch >= options.max_epochs:
        return "max epochs"
    minutes, budget = (time.monotonic() - started) / 60, options.max_minutes
    if budget is not None and state.epoch > first_epoch and minutes >= budget:
        return "time budget"
    return None


def _start_head_at_mean(network: nn.Module, index: SliceIndex, train: Indices, seed: int) -> None:
    """Start the sigmoid head at the mean target, not at 0.5 (~1000 HU).

    L1's gradient is only a sign, so a saturated start costs the first epochs.
    """
    head = getattr(network, "head", None)
    if not isinstance(head, nn.Conv2d) or head.bias is None:
        return
    rng = np.random.default_rng([seed, 2])
    sample = np.sort(rng.choice(train, size=min(len(train), 512), replace=False))
    x = np.empty((len(sample), index.channels, *index.shape), np.float32)
    y = np.empty((len(sample), *index.shape), np.float32)
    index.gather(sample, x, y)
    mean = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    with torch.no_grad():
        head.bias.fill_(math.log(mean / (1 - mean)))


def _train_epoch(
    network: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    index: SliceIndex,
    sampler: EpochSampler,
    options: TrainingOptions,
    epoch: int,
    device: torch.device,
    progress: bool,
    ranks: Ranks = SINGLE,
) -> tuple[float, float]:
    """One pass; returns the mean training loss and the training slices per second.

    Every rank gathers and augments the whole batch (one generator, the same draws as one
    process), then trains on its rows; its loss is weighted by its share, so that the gradients
    averaged over the ranks are those of the whole batch.
    """
    network.train()
    loss_fn = LOSSES[options.loss]
    seed = int(np.random.SeedSequence([options.seed, 4, epoch]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    batches = [b for b in sampler.batches(epoch) if len(b) >= ranks.world]  # a share each
    amp = device.type == "cuda"
    augmentation = AugmentationOptions(remap_probability=options.contrast_remap)
    total = torch.zeros((), device=device)
    seen = 0
    started = time.monotonic()
    bar = tqdm(
        index.batches(batches, device),
        total=len(batches),
        desc=f"epoch {epoch}/{options.max_epochs}",
        unit="batch",
        leave=False,
        disable=not progress,
    )
    for step, (x, y) in enumerate(bar):
        x, y = random_windows(x, y, options.crop_size, generator)
        if options.augment:
            x, y = augment(x, y, generator, augmentation)
        rows = ranks.rows(len(x))
        share = ranks.world * (rows.stop - rows.start) / len(x)
        x, y = x[rows], y[rows]
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            prediction = network(x)
        loss = loss_fn(prediction.float(), y)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss * share).backward()
        scaler.step(optimiser)
        scaler.update()
        total += loss.detach() * len(x)
        seen += len(x)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    sums = ranks.all_sum(
        torch.stack([total.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = max(time.monotonic() - started, 1e-9)
    loss_sum, slices = float(sums[0]), float(sums[1])
    return loss_sum / max(slices, 1.0), slices / seconds


@torch.inference_mode()
def _validate(
    network: nn.Module,
    index: SliceIndex,
    val: Indices,
    options: TrainingOptions,
    device: torch.device,
    ranks: Ranks = SINGLE,
) -> tuple[float, float]:
    """Validation loss and MAE in HU over every pixel of the validation slices (the batches
    shared out between the ranks, the sums added up)."""
    network.eval()
    loss_fn = LOSSES[options.loss]
    size = options.batch_size
    batches = [val[i : i + size] for i in range(0, len(val), size)][ranks.rank :: ranks.world]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    abs_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in index.batches(batches, device):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            prediction = network(x).float()
        loss_sum += loss_fn(prediction, y).double() * len(x)
        abs_sum += (prediction - y).abs().sum(dtype=torch.float64)
        pixels += y.numel()
    sums = ranks.all_sum(torch.stack([loss_sum, abs_sum, pixels]))
    slices = max(len(val), 1)
    mae = float(sums[1]) / max(float(sums[2]), 1.0) * (HU_MAX - HU_MIN)
    return float(sums[0]) / slices, mae


def manifest_for(
    result: TrainingResult,
    options: TrainingOptions,
    *,
    name: str,
    version: str,
    size: int,
    sites: Sequence[str],
    command: str,
) -> Manifest:
    """The manifest of the trained model: architecture, provenance (hashed keys) and metrics.

    The patient keys are those of every patient the run used, training and validation.
    """
    return Manifest(
        name=name,
        version=version,
        architecture=options.architecture,
        arguments=options.network_arguments,
        input_size=size,
        hu_min=HU_MIN,
        hu_max=HU_MAX,
        clinical_use=False,
        description=(
            f"{options.architecture} trained by bonect on {', '.join(sites)} "
            f"({options.loss} loss, best epoch {result.best_epoch})."
        ),
        training=TrainingProvenance(
            sites=tuple(sites),
            patient_keys=tuple(sorted({*result.train_patients, *result.val_patients})),
            slices=result.slices,
            epochs=result.history[-1].epoch if result.history else 0,
            loss=options.loss,
            command=command,
        ),
        metrics={
            "validation_mae_hu": round(result.best_val_mae_hu, 2),
            "best_epoch": result.best_epoch,
            "parameters": count_parameters(result.network),
        },
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )

"""Training on several processes: launching the ranks, their share of a batch, batch norm over all.

``train`` with ``processes`` > 1 runs its loop once per rank, in processes this module starts with
:func:`torch.multiprocessing.start_processes` (start method ``spawn``) and joins into a process
group over a file store in a temporary folder (no port to pick): gloo on the CPU, NCCL on CUDA
with one GPU per rank. Only the training loop runs on several processes: registering, caching,
scoring, reports and publishing stay in the calling process, which is why this is not a
``torchrun`` of the whole command. Rank 0 alone writes the run folder and shows the progress bar;
the log records of every rank (rank 0's at the caller's level, the others' from WARNING) reach
the caller's own handlers through a queue.

Every rank gathers and augments the whole batch from the same seeded generator and then trains on
its share of the rows, so that N processes see exactly the samples one process would: the batch
size stays the global batch. Batch norm takes its statistics over the whole batch, across the
ranks (:class:`torch.nn.SyncBatchNorm` on CUDA; :class:`AllRanksBatchNorm` on the CPU, where
PyTorch's does not run), so N processes compute what one computes, up to the order of sums
(exactly so for the losses that are means over the batch; ``mae_bone`` divides each share by its
own weights, a close approximation).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import (
    ProcessExitedException,
    ProcessRaisedException,
    start_processes,
)

from bonect.trainer.curves import TrainingError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one training run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes, logs and shows progress."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's rows of a batch of `n`: contiguous, the shares differing by at most one."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (in place)."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, value: T) -> T:
        """Rank 0's `value`, on every rank (decisions that must not differ: when to stop)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Ranks()


class AllRanksBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the whole batch, over every rank.

    For gloo on the CPU, where :class:`torch.nn.SyncBatchNorm` does not run. The sums travel
    through an all-reduce that autograd differentiates; evaluation uses the running statistics,
    which stay equal on every rank since every rank updates them from the same numbers.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(input)
        x = input.float()
        dims = (0, 2, 3)
        wide = x.double()  # the statistics in float64: E[x²] - E[x]² cancels in float32
        count = torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=wide.dtype, device=x.device)
        sums = _sum_over_ranks(torch.stack([wide.sum(dims), (wide * wide).sum(dims), count]))
        n = sums[2]
        mean = sums[0] / n
        var = (sums[1] / n - mean * mean).clamp_min(0.0)
        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = 0.1 if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.float(), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / (n - 1)).float(), alpha=m)
        shape = (1, -1, 1, 1)
        y = (x - mean.float().view(shape)) * torch.rsqrt(var + self.eps).float().view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        out: torch.Tensor = y.to(input.dtype)
        return out


class _SumOverRanks(torch.autograd.Function):
    """A sum over the ranks that autograd differentiates: the gradient is summed back too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    total: torch.Tensor = _SumOverRanks.apply(tensor)  # type: ignore[no-untyped-call]
    return total


def batch_norm_over_ranks(network: nn.Module, device: torch.device) -> nn.Module:
    """`network` with every 2-D batch norm computing its statistics over all ranks."""
    if device.type == "cuda":
        synced: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # type: ignore[no-untyped-call]
        return synced
    for name, child in network.named_children():
        if type(child) is nn.BatchNorm2d:
            swapped = AllRanksBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            swapped.load_state_dict(child.state_dict())
            setattr(network, name, swapped)
        else:
            batch_norm_over_ranks(child, device)
    return network


def check_processes(processes: int, device: torch.device) -> None:
    """Refuse more CUDA ranks than GPUs (one line)."""
    available = torch.cuda.device_count() if device.type == "cuda" else processes
    if processes > available:
        raise TrainingError(
            f"{processes} training processes on CUDA need a GPU each, this machine has "
            f"{available}: ask for at most {available} (--nproc), or train on the CPU "
            "([trainer] device = 'cpu')"
        )


def launch(
    target: Callable[..., T],
    args: tuple[Any, ...],
    *,
    processes: int,
    device: torch.device,
    threads: int,
) -> T:
    """Run ``target(ranks, device, *args)`` on `processes` ranks; return rank 0's result.

    Each rank uses `threads` PyTorch CPU threads and, on CUDA, GPU ``rank``. A rank that fails
    stops the others; the failure comes back as a one-line :class:`TrainingError`.
    """
    context = mp.get_context("spawn")
    records: Any = context.Queue()
    results: Any = context.SimpleQueue()
    root = logging.getLogger()
    handlers = root.handlers or [logging.lastResort or logging.StreamHandler()]
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bonect-ranks-") as folder:
            store = Path(folder) / "store"
            level = root.getEffectiveLevel()
            setup = (processes, target, args, device.type, store, threads, level)
            ranks = start_processes(  # type: ignore[no-untyped-call]
                _entry,
                args=(*setup, records, results),
                nprocs=processes,
                join=False,
                start_method="spawn",
            )
            try:
                while not ranks.join():
                    pass
            finally:  # a failed rank's traceback file (world-readable, in /tmp): read by now
                _remove(ranks.error_files)
    except ProcessRaisedException as exc:  # its message ends with "module.Class: message"
        last = [line for line in str(exc).splitlines() if line.strip()][-1]
        name, _, message = last.partition(": ")
        error = f"{name.rsplit('.', 1)[-1]}: {message}" if message else last
        raise TrainingError(f"training process {exc.error_index} failed: {error}") from exc
    except ProcessExitedException as exc:
        raise TrainingError(
            f"training process {exc.error_index} ended with exit code {exc.exit_code}"
        ) from exc
    finally:
        listener.stop()
    if results.empty():
        raise TrainingError("training process 0 ended without a result")
    return results.get()  # type: ignore[no-any-return]


def _remove(paths: list[str | None]) -> None:
    for path in paths:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _entry(
    rank: int,
    world: int,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    device_type: str,
    store: Path,
    threads: int,
    level: int,
    records: Any,
    results: Any,
) -> None:
    """One rank: logging to the parent, threads, device, process group; then the target."""
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))
    for noisy in ("PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    torch.set_num_threads(max(threads, 1))
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo",
        init_method=store.as_uri(),
        rank=rank,
        world_size=world,
    )
    try:
        result = target(Ranks(rank, world), device, *args)
        if rank == 0:
            results.put(result)
    finally:
        dist.destroy_process_group()
    _leave(records)


def _leave(records: Any) -> NoReturn:
    """End a rank that finished: its log records sent, then out without finalizing Python.

    A spawned process ends in ``sys.exit``, which finalizes the interpreter while gloo's worker
    threads may still be releasing the last collective's tensors; a thread that then asks for
    the GIL is unwound and the rank aborts (SIGABRT, "terminate called without an active
    exception": about one run of the parallel tests in twelve here). Once the records are
    flushed there is nothing left to finalize (the result went through a pipe already), so the
    rank leaves the way a forked child does.
    """
    logging.getLogger().handlers.clear()
    records.close()
    records.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

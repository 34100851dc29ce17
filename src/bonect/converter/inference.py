"""Multi-plane U-Net inference on the model cube, fused by voxel-wise median, with its spread."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from bonect.config import Precision
from bonect.converter.model_folder import LoadedModel
from bonect.converter.preprocess import set_resample_threads, slices, unslice, with_neighbours
from bonect.errors import DeviceError

logger = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' requested but no CUDA device is available")
    return torch.device(spec)


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for PyTorch and for resampling to and from the model cube
    (0: PyTorch's default and one resampling thread per core).

    On a host whose cores are busy with other work, fewer threads than cores can be faster:
    each parallel operation waits for its slowest thread.
    """
    set_resample_threads(threads)
    if threads > 0:
        torch.set_num_threads(threads)
        logger.info("PyTorch and resampling use %d CPU thread(s)", threads)


@functools.cache
def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX) for oneDNN to use; without
    it bfloat16 is emulated, and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def forward_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast type of the forward (None: float32 throughout); see :data:`Precision`."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_computes_bfloat16() else None


def forward_context(device: torch.device, precision: Precision) -> AbstractContextManager[object]:
    """Autocast for the forward at ``precision`` on ``device`` (the bare benchmark uses it too)."""
    dtype = forward_dtype(device, precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class CubePrediction:
    """The fused prediction (HU) on the cube and the spread between planes (HU)."""

    hu: F32
    spread: F32 | None


@torch.inference_mode()
def predict_plane(
    model: LoadedModel,
    image: F32,
    plane: str,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> F32:
    """Predict every slice of one plane of the cube; returns HU in cube order.

    A 2.5D model (:attr:`~bonect.registry.Manifest.context_slices` > 0) sees each slice with
    its neighbours in this plane as channels.
    """
    device = device or next(model.network.parameters()).device
    stack = slices(image, plane)
    context = model.manifest.context_slices
    out = np.empty(stack.shape, dtype=np.float32)
    autocast = forward_context(device, model.precision)
    starts = range(0, stack.shape[0], batch_size)
    for start in tqdm(starts, desc=f"{plane:>8}", unit="batch", disable=not progress, leave=False):
        rows = np.arange(start, min(start + batch_size, stack.shape[0]))
        batch = np.ascontiguousarray(with_neighbours(stack, context, rows))
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            y = model.network(x)
        hu = model.manifest.to_hu(y.float())[:, 0]
        out[start : start + batch_size] = hu.cpu().numpy()
    return np.ascontiguousarray(unslice(out, plane))


def predict_cube(
    model: LoadedModel,
    image: F32,
    planes: Sequence[str],
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> CubePrediction:
    """Predict in each plane and fuse: median over planes, spread = max - min."""
    if not planes:
        raise ValueError("at least one plane is needed")
    per_plane = [
        predict_plane(model, image, p, batch_size=batch_size, device=device, progress=progress)
        for p in planes
    ]
    if len(per_plane) == 1:
        return CubePrediction(hu=per_plane[0], spread=None)
    stacked = np.stack(per_plane)
    fused = np.median(stacked, axis=0).astype(np.float32)
    spread = (stacked.max(axis=0) - stacked.min(axis=0)).astype(np.float32)
    return CubePrediction(hu=fused, spread=spread)

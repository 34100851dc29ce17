"""The slice cache: pairs as memory-mapped 2D slices, read in batches and split by patient.

Each pair (MR and the CT registered onto its grid, both NIfTI) goes through the converter's own
:func:`~bonect.converter.preprocess.prepare`; the CT is sampled onto the same model cube and
scaled to the network's [0, 1] target over the manifest's HU range. Slices of all three planes
whose head-mask fraction reaches a threshold are kept, each input with its ``context``
neighbouring slices on either side as channels (the 2.5D input; context 0: one channel, 2D),
as ``.npy`` files under
``root/<size>/<pair folder>/`` next to an ``index.json``. The index records the *cache key*, a
SHA-256 over the inputs' contents and every parameter that shapes the slices; a folder is reused
only when its key matches and its files are whole, and is otherwise rebuilt. Folders are written
beside their final place and renamed into it, so an interrupted build never looks valid.
One trainer at a time writes a cache root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from bonect.converter.preprocess import (
    PLANE_AXIS,
    PREPROCESSING_VERSION,
    prepare,
    slices,
    to_cube,
    with_neighbours,
)
from bonect.converter.volume import Volume, read_nifti
from bonect.errors import SeriesError
from bonect.hounsfield import AIR_HU
from bonect.registry import Manifest, input_channels

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: inputs (n, channels, size, size), the slice and its neighbours
MAX_CONTEXT = 3  # neighbouring slices on either side at most (config: trainer.context_slices)
HU_MIN = float(Manifest.model_fields["hu_min"].default)
HU_MAX = float(Manifest.model_fields["hu_max"].default)
INDEX = "index.json"
_ARRAYS = {"inputs": np.float16, "targets": np.float16, "planes": np.int8}
F16 = npt.NDArray[np.float16]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PairSource:
    """One training pair on disk: a bone MR and the CT already registered onto its grid."""

    key: str  # unique pair id, e.g. "external-phantom/PH0019001" (may contain "/")
    patient_key: str  # hashed patient key; the validation split and CV folds go by this
    mr: Path  # bone MR NIfTI
    ct: Path  # CT registered onto the MR grid (NIfTI, HU)


@dataclass(frozen=True)
class CachedPair:
    """The cached slices of one pair, memory-mapped read-only."""

    source: PairSource
    inputs: F16  # (n, channels, size, size) model input in [0, 1], the slice in the middle
    targets: F16  # (n, size, size) CT as the model target in [0, 1]
    planes: npt.NDArray[np.int8]  # (n,) plane of each slice: 0 axial, 1 coronal, 2 sagittal
    cache_key: str  # what the slices were made from (inputs' contents and parameters)

    @property
    def n_slices(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def channels(self) -> int:
        """Input channels: 2·context + 1 (the slice and its neighbours on either side)."""
        return int(self.inputs.shape[1])

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (for another training process) as the files of its maps, not their contents."""
        files = [_whole_file(a) for a in (self.inputs, self.targets)]
        if None in files:
            return (
                CachedPair,
                (self.source, self.inputs, self.targets, self.planes, self.cache_key),
            )
        return (_reopen, (self.source, *files, np.asarray(self.planes), self.cache_key))


def _whole_file(array: Any) -> str | None:
    """The ``.npy`` file `array` maps as a whole, or None (in memory, or a part of a file)."""
    name = getattr(array, "filename", None) if isinstance(array, np.memmap) else None
    if name is None or not array.flags.c_contiguous:
        return None
    whole = np.load(name, mmap_mode="r", allow_pickle=False)
    same = whole.shape == array.shape and whole.offset == array.offset
    return str(name) if same else None


def _reopen(source: PairSource, inputs: str, targets: str, planes: Any, key: str) -> CachedPair:
    """A pickled :class:`CachedPair`, its arrays memory-mapped again."""
    return CachedPair(
        source,
        np.load(inputs, mmap_mode="r", allow_pickle=False),
        np.load(targets, mmap_mode="r", allow_pickle=False),
        planes,
        key,
    )


class _Missing(Exception):
    """No cache for this key yet (none at all, or one made from other inputs)."""


class _Unusable(Exception):
    """A cache folder that is damaged and must not be used; the message says why."""


def build_cache(
    root: Path,
    pairs: Sequence[PairSource],
    size: int,
    *,
    min_head_fraction: float = 0.04,
    context: int = 0,
    progress: bool = True,
) -> list[CachedPair]:
    """Cache every pair's slices under ``root/<size>/`` (reusing valid caches) and open them.

    Parameters
    ----------
    root
        The cache root; one sub-folder per image size.
    pairs
        The pairs, with unique keys.
    size
        The model input size (the cube is ``size``³).
    min_head_fraction
        A slice is kept when at least this fraction of it lies inside the head mask.
    context
        Neighbouring slices (of the same plane) on either side stored with each input as
        channels: inputs (n, 2·context + 1, size, size); 0 gives the 2D input of one channel.
    progress
        Show a progress bar over the pairs.

    Returns
    -------
    list of CachedPair
        In the order of `pairs`, arrays memory-mapped from disk.
    """
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("pair keys must be unique")
    if not 0 <= context <= MAX_CONTEXT:
        raise ValueError(f"context must lie between 0 and {MAX_CONTEXT}, got {context}")
    base = root / str(size)
    base.mkdir(parents=True, exist_ok=True)
    cached = []
    for source in tqdm(pairs, desc="slice cache", unit="pair", disable=not progress):
        folder = base / pair_folder(source.key)
        try:
            key = cache_key(source, size, min_head_fraction, context)
        except OSError as exc:
            raise SeriesError(f"pair {source.key}: cannot read its inputs ({exc})") from exc
        try:
            cached.append(_open(folder, source, key, size, context))
            continue
        except _Missing as exc:
            logger.info("caching %s (%s)", source.key, exc)
        except _Unusable as exc:
            logger.warning("cache of %s is unusable (%s); rebuilding it", source.key, exc)
        arrays = _slices(source, size, min_head_fraction, context)
        _write(folder, arrays, key, source, size, context)
        cached.append(_open(folder, source, key, size, context))
    return cached


def pair_folder(key: str) -> str:
    """A folder name for a pair key: readable, safe on any filesystem, and unique."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "pair"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(source: PairSource, size: int, min_head_fraction: float, context: int = 0) -> str:
    """SHA-256 over the inputs' contents and every parameter that shapes the cached slices."""
    parts = {
        "format": CACHE_FORMAT,
        "mr": file_sha256(source.mr),
        "ct": file_sha256(source.ct),
        "size": size,
        "preprocessing_version": PREPROCESSING_VERSION,
        "hu_range": [HU_MIN, HU_MAX],
        "min_head_fraction": min_head_fraction,
        "context": context,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _slices(
    source: PairSource, size: int, min_head_fraction: float, context: int = 0
) -> dict[str, Any]:
    arrays = plane_slices(
        read_nifti(source.mr), read_nifti(source.ct), size, min_head_fraction, context
    )
    if len(arrays["planes"]) == 0:
        logger.warning("%s: no slice reaches the head fraction %g", source.key, min_head_fraction)
    return arrays


def plane_slices(
    mr: Volume, ct: Volume, size: int, min_head_fraction: float, context: int = 0
) -> dict[str, Any]:
    """An MR and its CT on the MR grid as training slices of the three planes: ``inputs``
    (n, 2·context + 1, size, size) with each slice's neighbours from the whole plane,
    ``targets`` (n, size, size) in [0, 1] over the manifest's HU range (float16 both), and
    ``planes`` (n,); only slices whose head-mask fraction reaches ``min_head_fraction``."""
    prepared = prepare(mr, size)
    cube_ct = to_cube(ct, prepared.cube, cval=AIR_HU)
    target = (np.clip(cube_ct, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    inputs, targets, planes = [], [], []
    for plane, axis in PLANE_AXIS.items():
        keep = slices(prepared.cube_mask, plane).mean(axis=(1, 2)) >= min_head_fraction
        # neighbours from the whole stack: a kept slice's neighbour may itself be left out
        stack = slices(prepared.image, plane)
        inputs.append(with_neighbours(stack, context, np.flatnonzero(keep)).astype(np.float16))
        targets.append(slices(target, plane)[keep].astype(np.float16))
        planes.append(np.full(int(keep.sum()), axis, dtype=np.int8))
    return {
        "inputs": np.concatenate(inputs),
        "targets": np.concatenate(targets),
        "planes": np.concatenate(planes),
    }


def _write(
    folder: Path, arrays: dict[str, Any], key: str, source: PairSource, size: int, context: int
) -> None:
    """Write into a temporary folder beside `folder`, then swap it in by renaming."""
    for prefix in (".tmp", ".old"):  # left by a build that was killed
        for stale in folder.parent.glob(f"{prefix}-{folder.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for name, array in arrays.items():
            with (tmp / f"{name}.npy").open("wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        planes = arrays["planes"]
        index = {
            "format": CACHE_FORMAT,
            "key": key,
            "pair_key": source.key,
            "size": size,
            "context": context,
            "preprocessing_version": PREPROCESSING_VERSION,
            "hu_range": [HU_MIN, HU_MAX],
            "slices": len(planes),
            "per_plane": {p: int((planes == a).sum()) for p, a in PLANE_AXIS.items()},
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
        }
        with (tmp / INDEX).open("w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if folder.exists():
            old = folder.with_name(f".old-{folder.name}-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open(folder: Path, source: PairSource, key: str, size: int, context: int) -> CachedPair:
    """Open a cache folder made for `key`, checking that it is whole."""
    index_path = folder / INDEX
    if not index_path.exists():
        if folder.exists():
            raise _Unusable(f"no {INDEX}")
        raise _Missing("not cached yet")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        stored_key, n = index["key"], int(index["slices"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Unusable(f"{INDEX} unreadable: {exc}") from exc
    if stored_key != key:
        raise _Missing("inputs or preprocessing changed")
    arrays: dict[str, Any] = {}
    shapes = {
        "inputs": (n, input_channels(context), size, size),
        "targets": (n, size, size),
        "planes": (n,),
    }
    for name, dtype in _ARRAYS.items():
        try:
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _Unusable(f"{name}.npy unreadable: {exc}") from exc
        shape = shapes[name]
        if array.shape != shape or array.dtype != dtype:
            raise _Unusable(f"{name}.npy is {array.dtype}{array.shape}, expected {shape}")
        arrays[name] = array
    planes = np.asarray(arrays["planes"])
    if planes.size and (planes.min() < 0 or planes.max() >= len(PLANE_AXIS)):
        raise _Unusable("planes.npy holds an unknown plane")
    return CachedPair(
        source=source,
        inputs=arrays["inputs"],
        targets=arrays["targets"],
        planes=planes,
        cache_key=key,
    )


class SliceIndex:
    """All slices of several cached pairs under one global index, read in batches.

    A batch is gathered from the memory maps with its indices sorted (locality on disk) and
    copied into float32 tensors, pinned for CUDA; :meth:`batches` loads the next batch in a
    thread while the caller works on the current one, without reading everything into memory.
    """

    def __init__(self, pairs: Sequence[CachedPair]) -> None:
        self.pairs = tuple(pairs)
        counts = [p.n_slices for p in self.pairs]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sizes = {p.inputs.shape[2:] for p in self.pairs if p.n_slices}
        if len(sizes) > 1:
            raise ValueError(f"cached pairs of different image sizes: {sorted(sizes)}")
        channels = {p.channels for p in self.pairs if p.n_slices}
        if len(channels) > 1:
            raise ValueError(
                f"cached pairs of different input channels (context slices): {sorted(channels)}"
            )
        self.shape: tuple[int, ...] = next(iter(sizes)) if sizes else (0, 0)  # of one slice
        self.channels: int = next(iter(channels)) if channels else 1  # of an input

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def of_pairs(self, which: Sequence[int]) -> npt.NDArray[np.int64]:
        """The global indices of every slice of the given pairs."""
        parts = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in which]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def gather(self, indices: npt.NDArray[np.int64], out_inputs: F32, out_targets: F32) -> None:
        """Copy slices (sorted first, for locality on disk) into float32 arrays: inputs
        (n, channels, size, size), targets (n, size, size).

        The rows of the outputs follow the *sorted* indices.
        """
        order = np.sort(indices)
        if len(order) and (order[0] < 0 or order[-1] >= len(self)):
            raise IndexError(f"slice indices must lie in [0, {len(self)})")
        first = np.searchsorted(self.offsets, order, side="right") - 1
        bounds = np.flatnonzero(np.diff(first)) + 1
        for start, stop in zip([0, *bounds], [*bounds, len(order)], strict=True):
            pair = self.pairs[int(first[start])]
            local = order[start:stop] - self.offsets[first[start]]
            out_inputs[start:stop] = pair.inputs[local]
            out_targets[start:stop] = pair.targets[local]

    def load(
        self, indices: npt.NDArray[np.int64], *, pin: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (n, channels, size, size) and targets (n, 1, size, size), float32, rows in
        sorted index order."""
        x = torch.empty(
            (len(indices), self.channels, *self.shape), dtype=torch.float32, pin_memory=pin
        )
        y = torch.empty((len(indices), 1, *self.shape), dtype=torch.float32, pin_memory=pin)
        self.gather(indices, x.numpy(), y.numpy()[:, 0])
        return x, y

    def batches(
        self, batches: Sequence[npt.NDArray[np.int64]], device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each batch on `device`, channels-last, the next one loading in a thread meanwhile."""
        if not batches:
            return
        pin = device.type == "cuda"
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bonect-batches") as pool:
            pending = pool.submit(self.load, batches[0], pin=pin)
            for i in range(len(batches)):
                x, y = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(self.load, batches[i + 1], pin=pin)
                yield (
                    x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                    y.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                )


@dataclass(frozen=True)
class SliceSplit:
    """Training and validation slices (global indices) and the patients behind them."""

    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]


def split_patients(
    pairs: Sequence[CachedPair], index: SliceIndex, fraction: float, seed: int
) -> SliceSplit:
    """Hold out a seeded `fraction` of the patients (at least one, never all) for validation.

    With a single patient, a random `fraction` of its slices is held out instead (the paper's
    split), and no patient counts as a validation patient.
    """
    patients = sorted({p.source.patient_key for p in pairs})
    rng = np.random.default_rng([seed, 1])
    n_val = min(max(1, round(fraction * len(patients))), len(patients) - 1)
    val_patients = tuple(sorted(rng.permutation(patients)[:n_val].tolist()))
    val_pairs = [i for i, p in enumerate(pairs) if p.source.patient_key in val_patients]
    train_pairs = [i for i, p in enumerate(pairs) if p.source.patient_key not in val_patients]
    train, val = index.of_pairs(train_pairs), index.of_pairs(val_pairs)
    if len(val) == 0 or len(train) == 0:
        logger.warning("too few patients with slices for a patient split: splitting slices")
        everything = rng.permutation(index.of_pairs(range(len(pairs))))
        cut = max(1, round(fraction * len(everything)))
        train, val, val_patients = np.sort(everything[cut:]), np.sort(everything[:cut]), ()
    train_patients = tuple(p for p in patients if p not in val_patients)
    return SliceSplit(train, val, train_patients, val_patients)

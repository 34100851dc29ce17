"""The slice cache: three planes, the converter's preprocessing, reuse, rebuild, corruption."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bonect.converter.preprocess import PLANE_AXIS, prepare, slices
from bonect.converter.volume import read_nifti, write_nifti
from bonect.phantom.generate import Acquisition, generate_case
from bonect.trainer import cache
from bonect.trainer.cache import INDEX, PairSource, SliceIndex, build_cache, pair_folder

SIZE = 32
SEED = 11


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[PairSource]:
    """Two coarse (4 mm) phantom patients as NIfTI pairs, one of them in two sessions' keys."""
    root = tmp_path_factory.mktemp("pairs")
    out = []
    for index in (1, 2):
        case = generate_case(
            SEED, index, acquisition=Acquisition("axial", (4.0, 4.0, 4.0)), ct_acquisition=None
        )
        mr = write_nifti(case.mr, root / f"p{index}" / "mr.nii.gz")
        ct = write_nifti(case.ct_on_mr, root / f"p{index}" / "ct.nii.gz")
        out.append(PairSource(f"external-phantom/PH{index:04d}", f"patient-{index}", mr, ct))
    return out


@pytest.fixture
def copied(sources: list[PairSource], tmp_path: Path) -> PairSource:
    """The first pair copied into the test's own folder, free to change."""
    first = sources[0]
    mr, ct = tmp_path / "in" / "mr.nii.gz", tmp_path / "in" / "ct.nii.gz"
    mr.parent.mkdir()
    shutil.copy(first.mr, mr)
    shutil.copy(first.ct, ct)
    return PairSource(first.key, first.patient_key, mr, ct)


def _folder(root: Path, source: PairSource) -> Path:
    return root / str(SIZE) / pair_folder(source.key)


def test_slices_of_three_planes_by_the_converters_preprocessing(
    sources: list[PairSource], tmp_path: Path
) -> None:
    pairs = build_cache(tmp_path, sources, SIZE, progress=False)

    assert [p.source for p in pairs] == sources
    for pair in pairs:
        assert isinstance(pair.inputs, np.memmap) and isinstance(pair.targets, np.memmap)
        assert pair.inputs.shape == (pair.n_slices, 1, SIZE, SIZE) and pair.channels == 1
        assert pair.targets.shape == (pair.n_slices, SIZE, SIZE)
        assert pair.inputs.dtype == pair.targets.dtype == np.float16
        assert set(np.unique(pair.planes)) == {0, 1, 2}
        assert float(pair.inputs.min()) >= 0.0 and float(pair.inputs.max()) <= 1.0
        assert float(pair.targets.min()) >= 0.0 and float(pair.targets.max()) <= 1.0
        assert float(pair.targets.max()) > 0.4  # bone (> 700 HU) is there
    # exactly the converter's cube, axial slices first, head-mask fraction >= 0.04
    prepared = prepare(read_nifti(sources[0].mr), SIZE)
    keep = slices(prepared.cube_mask, "axial").mean(axis=(1, 2)) >= 0.04
    axial = pairs[0].inputs[pairs[0].planes == PLANE_AXIS["axial"]]
    np.testing.assert_array_equal(axial[:, 0], prepared.image[keep].astype(np.float16))
    index = json.loads((_folder(tmp_path, sources[0]) / INDEX).read_text())
    assert index["slices"] == pairs[0].n_slices == sum(index["per_plane"].values())
    assert index["key"] == pairs[0].cache_key and index["context"] == 0
    assert index["shapes"]["inputs"] == [pairs[0].n_slices, 1, SIZE, SIZE]


def test_an_unchanged_cache_is_reused(
    sources: list[PairSource], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = build_cache(tmp_path, sources, SIZE, progress=False)
    inode = (_folder(tmp_path, sources[0]) / "inputs.npy").stat().st_ino
    with caplog.at_level(logging.INFO, logger="bonect.trainer.cache"):
        again = build_cache(tmp_path, sources, SIZE, progress=False)
    assert not caplog.records
    assert (_folder(tmp_path, sources[0]) / "inputs.npy").stat().st_ino == inode
    assert [p.cache_key for p in again] == [p.cache_key for p in first]


def test_a_changed_input_or_preprocessing_version_rebuilds(
    copied: PairSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    (before,) = build_cache(root, [copied], SIZE, progress=False)
    targets = np.array(before.targets)
    ct = read_nifti(copied.ct)
    write_nifti(ct.with_array(ct.array + 100.0), copied.ct)  # the CT was registered anew

    (after,) = build_cache(root, [copied], SIZE, progress=False)
    assert after.cache_key != before.cache_key
    assert float(np.mean(after.targets.astype(np.float32) - targets)) > 0.01

    monkeypatch.setattr(cache, "PREPROCESSING_VERSION", "cube-test")
    (newer,) = build_cache(root, [copied], SIZE, progress=False)
    assert newer.cache_key != after.cache_key
    index = json.loads((_folder(root, copied) / INDEX).read_text())
    assert index["preprocessing_version"] == "cube-test"


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((3, SIZE + 1, SIZE), np.float16))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage{")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("targets.npy", _truncate),
        ("inputs.npy", _wrong_shape),
        ("planes.npy", _garbage),
        (INDEX, _garbage),
        ("inputs.npy", os.remove),
    ],
)
def test_a_corrupt_cache_file_is_reported_and_rebuilt(
    copied: PairSource,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    damage: Callable[[Path], None],
) -> None:
    root = tmp_path / "cache"
    (good,) = build_cache(root, [copied], SIZE, progress=False)
    expected = np.array(good.targets)
    del good
    damage(_folder(root, copied) / name)

    with caplog.at_level(logging.WARNING, logger="bonect.trainer.cache"):
        (rebuilt,) = build_cache(root, [copied], SIZE, progress=False)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert copied.key in warning.getMessage() and "rebuilding" in warning.getMessage()
    np.testing.assert_array_equal(rebuilt.targets, expected)
    caplog.clear()
    build_cache(root, [copied], SIZE, progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_an_interrupted_build_leaves_nothing_that_looks_valid(
    copied: PairSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    calls: list[int] = []
    real_fsync = os.fsync

    def fsync_then_interrupt(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # inputs.npy written, targets.npy being written
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, [copied], SIZE, progress=False)
    monkeypatch.undo()
    assert list((root / str(SIZE)).iterdir()) == []  # no pair folder, no temporary left

    # a build killed outright leaves its temporary folder; it is never taken for a cache
    folder = _folder(root, copied)
    stale = folder.with_name(f".tmp-{folder.name}-dead")
    stale.mkdir()
    np.save(stale / "inputs.npy", np.zeros((1, 1, SIZE, SIZE), np.float16))
    (pair,) = build_cache(root, [copied], SIZE, progress=False)
    assert pair.n_slices > 1 and (folder / INDEX).is_file()
    assert not stale.exists()


def test_pair_keys_make_distinct_safe_folders() -> None:
    names = {pair_folder(k) for k in ("a/b", "a_b", "a b", "../x", "")}
    assert len(names) == 5
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_unique_keys_are_required(sources: list[PairSource], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        build_cache(tmp_path, [sources[0], sources[0]], SIZE, progress=False)


def test_batches_gather_slices_across_pairs(sources: list[PairSource], tmp_path: Path) -> None:
    pairs = build_cache(tmp_path, sources, SIZE, progress=False)
    index = SliceIndex(pairs)
    assert len(index) == sum(p.n_slices for p in pairs)
    n0 = pairs[0].n_slices
    wanted = np.array([n0 + 3, 1, n0, 0], dtype=np.int64)  # across both pairs, unsorted
    (x, y), (x2, y2) = index.batches([wanted, wanted[:2]], torch.device("cpu"))
    assert x.shape == (4, 1, SIZE, SIZE) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = np.stack(
        [pairs[0].inputs[0], pairs[0].inputs[1], pairs[1].inputs[0], pairs[1].inputs[3]]
    ).astype(np.float32)
    np.testing.assert_array_equal(x.numpy(), expected)
    np.testing.assert_array_equal(y[2, 0].numpy(), pairs[1].targets[0].astype(np.float32))
    assert x2.shape[0] == y2.shape[0] == 2


def test_context_stores_each_slice_with_its_neighbours(
    sources: list[PairSource], tmp_path: Path
) -> None:
    """``context`` 1: inputs (n, 3, size, size), the 2D cache's slice in the middle channel and
    its neighbours of the same plane (from the whole stack, kept or not) on either side."""
    (flat,) = build_cache(tmp_path / "2d", sources[:1], SIZE, progress=False)
    (deep,) = build_cache(tmp_path / "2.5d", sources[:1], SIZE, context=1, progress=False)
    assert isinstance(deep.inputs, np.memmap) and deep.inputs.dtype == np.float16
    assert deep.inputs.shape == (flat.n_slices, 3, SIZE, SIZE) and deep.channels == 3
    np.testing.assert_array_equal(deep.targets, flat.targets)
    np.testing.assert_array_equal(deep.planes, flat.planes)
    np.testing.assert_array_equal(deep.inputs[:, 1], flat.inputs[:, 0])
    assert deep.cache_key != flat.cache_key

    prepared = prepare(read_nifti(sources[0].mr), SIZE)
    neighbours_left_out = 0
    for plane, axis in PLANE_AXIS.items():
        rows = np.flatnonzero(flat.planes == axis)  # this plane's rows of the caches
        kept = np.flatnonzero(slices(prepared.cube_mask, plane).mean(axis=(1, 2)) >= 0.04)
        stack = slices(prepared.image, plane).astype(np.float16)
        row_of = {int(k): int(r) for k, r in zip(kept, rows, strict=True)}
        for k, row in row_of.items():
            for channel, neighbour in ((0, k - 1), (2, k + 1)):
                if neighbour in row_of:  # a kept slice: the 2D cache holds it
                    expected = flat.inputs[row_of[neighbour], 0]
                else:  # left out by the head fraction, or the edge slice repeated
                    expected = stack[min(max(neighbour, 0), len(stack) - 1)]
                    neighbours_left_out += 1
                np.testing.assert_array_equal(deep.inputs[row, channel], expected)
    assert neighbours_left_out >= 6  # each plane's first and last kept slice at least

    index = json.loads((_folder(tmp_path / "2.5d", sources[0]) / INDEX).read_text())
    assert index["context"] == 1 and index["shapes"]["inputs"] == [flat.n_slices, 3, SIZE, SIZE]

    x, y = SliceIndex([deep]).load(np.array([5, 2], dtype=np.int64))
    assert x.shape == (2, 3, SIZE, SIZE) and y.shape == (2, 1, SIZE, SIZE)
    np.testing.assert_array_equal(x.numpy(), deep.inputs[[2, 5]].astype(np.float32))
    np.testing.assert_array_equal(y[:, 0].numpy(), deep.targets[[2, 5]].astype(np.float32))
    with pytest.raises(ValueError, match="different input channels"):
        SliceIndex([flat, deep])
    with pytest.raises(ValueError, match="context must lie between 0 and 3"):
        build_cache(tmp_path / "2d", sources[:1], SIZE, context=4, progress=False)


def test_a_changed_context_or_an_old_format_cache_rebuilds(
    copied: PairSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    (flat,) = build_cache(root, [copied], SIZE, progress=False)
    with caplog.at_level(logging.INFO, logger="bonect.trainer.cache"):
        (deep,) = build_cache(root, [copied], SIZE, context=1, progress=False)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "inputs or preprocessing changed" in caplog.records[0].getMessage()
    assert deep.cache_key != flat.cache_key and deep.inputs.shape[1] == 3
    assert json.loads((_folder(root, copied) / INDEX).read_text())["context"] == 1

    # a cache of the first format: 2D inputs (n, size, size), its key without a context
    folder = _folder(root, copied)
    old_parts = {
        "format": 1,
        "mr": cache.file_sha256(copied.mr),
        "ct": cache.file_sha256(copied.ct),
        "size": SIZE,
        "preprocessing_version": cache.PREPROCESSING_VERSION,
        "hu_range": [cache.HU_MIN, cache.HU_MAX],
        "min_head_fraction": 0.04,
    }
    old_key = hashlib.sha256(json.dumps(old_parts, sort_keys=True).encode()).hexdigest()
    index = json.loads((folder / INDEX).read_text())
    index.update(format=1, key=old_key)
    del index["context"]
    (folder / INDEX).write_text(json.dumps(index))
    np.save(folder / "inputs.npy", np.array(flat.inputs)[:, 0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bonect.trainer.cache"):
        (rebuilt,) = build_cache(root, [copied], SIZE, progress=False)
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # changed, not damaged
    assert rebuilt.cache_key == flat.cache_key
    np.testing.assert_array_equal(rebuilt.inputs, flat.inputs)

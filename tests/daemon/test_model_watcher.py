"""The model watcher: promoted models are smoke-tested and swapped in between jobs, or refused.

The models are tiny Light_U-Nets (4 base filters, 3 levels, 32-pixel input). Random weights
give about 970 HU inside the head, which the smoke test rightly calls nonsense; a *sane* tiny
model has its output head scaled down and its bias set so that it predicts soft tissue (about
40 HU) everywhere, which passes. Both are useful here: one to promote, one to refuse.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from bonect.converter.model_folder import WEIGHTS, LoadedModel, save_model
from bonect.converter.networks import LightUNet, build_model
from bonect.converter.pipeline import Classical
from bonect.converter.preprocess import head_mask, prepare
from bonect.daemon.model_holder import (
    SMOKE_SLICES,
    ModelHolder,
    smoke_slices,
    smoke_test,
    smoke_volume,
)
from bonect.errors import ModelError
from bonect.registry import MANIFEST, PROMOTED
from conftest import TINY_MANIFEST

CPU = torch.device("cpu")
SOFT_TISSUE_HU = 40.0


def write_tiny_model(registry: Path, name: str, *, sane: bool = True) -> Path:
    """A tiny model folder ``registry/name`` whose version is ``name``."""
    torch.manual_seed(0)
    network = build_model(TINY_MANIFEST.architecture, TINY_MANIFEST.arguments)
    manifest = TINY_MANIFEST.model_copy(update={"version": name})
    if sane:
        assert isinstance(network, LightUNet)
        target = (SOFT_TISSUE_HU - manifest.hu_min) / (manifest.hu_max - manifest.hu_min)
        with torch.no_grad():
            network.head.weight.mul_(0.01)
            network.head.bias.fill_(math.log(target / (1 - target)))
    return save_model(registry / name, manifest, network)


def promote(registry: Path, name: str) -> None:
    """Point the registry at ``name`` the way a trainer does: write aside, then rename."""
    temporary = registry / f".{PROMOTED}.tmp"
    temporary.write_text(name + "\n", encoding="utf-8")
    os.replace(temporary, registry / PROMOTED)


def bump_mtime(path: Path) -> None:
    """Make a rewrite visible even on file systems with coarse timestamps."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def holder(registry: Path) -> Iterator[ModelHolder]:
    opened = ModelHolder.open("auto", registry, CPU)
    yield opened
    opened.stop()


def version_of(holder: ModelHolder) -> str:
    method = holder.current
    return method.manifest.version if isinstance(method, LoadedModel) else "classical"


# -- the smoke test --------------------------------------------------------------------------


def test_smoke_test_passes_a_sane_model_and_the_classical_map(registry: Path) -> None:
    from bonect.converter.model_folder import load_model

    smoke_test(load_model(write_tiny_model(registry, "v1"), device=CPU), device=CPU)
    smoke_test(Classical())


def test_smoke_test_passes_the_bundled_phantom_trained_model() -> None:
    from bonect.converter.model_folder import load_model
    from bonect.demo import bundled_model

    folder = bundled_model()
    if not (folder / WEIGHTS).is_file():
        pytest.skip("the bundled model is not in this checkout")
    smoke_test(load_model(folder, device=CPU), device=CPU)


def test_the_smoke_head_is_a_head_to_the_converter() -> None:
    mr, head = smoke_volume()
    found = head_mask(mr.array, mr.spacing)
    # the converter finds that head: all of it, and at most one (6 mm) voxel around it
    assert not (head & ~found).any()
    assert not (found & ~ndimage.binary_dilation(head, np.ones((3, 3, 3), dtype=bool))).any()
    assert 0.2 < head.mean() < 0.6  # and it sits inside the volume, with air around it


def test_the_smoke_slices_are_the_converters_input() -> None:
    mr, _ = smoke_volume()
    size = TINY_MANIFEST.input_size
    image, head = smoke_slices(mr, size)
    prepared = prepare(mr, size)
    rows = [round(f * (size - 1)) for f in SMOKE_SLICES]
    np.testing.assert_array_equal(image, prepared.image[rows])
    np.testing.assert_array_equal(head, prepared.cube_mask[rows])
    assert all(h.any() for h in head)  # every smoke slice crosses the head


def test_smoke_test_refuses_nonsense(registry: Path) -> None:
    from bonect.converter.model_folder import load_model

    model = load_model(write_tiny_model(registry, "random", sane=False), device=CPU)
    with pytest.raises(ModelError, match="median inside the head"):
        smoke_test(model, device=CPU)


# -- opening ---------------------------------------------------------------------------------


def test_auto_without_a_promoted_model_is_classical(holder: ModelHolder) -> None:
    assert isinstance(holder.current, Classical)
    assert holder.refresh() is False


def test_auto_opens_the_promoted_model(registry: Path) -> None:
    write_tiny_model(registry, "v1")
    promote(registry, "v1")
    opened = ModelHolder.open("auto", registry, CPU)
    assert version_of(opened) == "v1"
    assert opened.label == "tiny v1"


def test_a_broken_promoted_model_at_start_falls_back_to_classical(
    registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_tiny_model(registry, "random", sane=False)
    promote(registry, "random")
    with caplog.at_level(logging.ERROR, logger="bonect.daemon.model_holder"):
        opened = ModelHolder.open("auto", registry, CPU)
    assert isinstance(opened.current, Classical)
    assert "promoted model refused" in caplog.text
    assert "median inside the head" in caplog.text


def test_a_model_named_in_the_config_is_never_swapped(registry: Path) -> None:
    folder = write_tiny_model(registry, "v1")
    opened = ModelHolder.open(str(folder), registry, CPU)
    write_tiny_model(registry, "v2")
    promote(registry, "v2")
    assert opened.refresh() is False
    assert version_of(opened) == "v1"


def test_a_missing_model_named_in_the_config_raises(registry: Path) -> None:
    with pytest.raises(ModelError):
        ModelHolder.open(str(registry / "nowhere"), registry, CPU)


# -- swapping between jobs -------------------------------------------------------------------


def test_a_newly_promoted_version_is_swapped_in_on_refresh(
    registry: Path, holder: ModelHolder, caplog: pytest.LogCaptureFixture
) -> None:
    write_tiny_model(registry, "v1")
    assert holder.refresh() is False  # a new folder alone is not a promotion
    promote(registry, "v1")
    with caplog.at_level(logging.INFO, logger="bonect.daemon.model_holder"):
        assert holder.refresh() is True
    assert version_of(holder) == "v1"
    assert "model swapped in: tiny v1 (was classical ZTE map)" in caplog.text
    assert holder.refresh() is False  # nothing new

    write_tiny_model(registry, "v2")
    promote(registry, "v2")
    assert holder.refresh() is True
    assert version_of(holder) == "v2"


def break_manifest(folder: Path) -> None:
    (folder / MANIFEST).write_text('{"name": "tiny", "architecture": ', encoding="utf-8")


def break_weights(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def wrong_weights(folder: Path) -> None:
    other = build_model("light_unet", {"base_filters": 8, "levels": 3})
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / WEIGHTS))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (break_manifest, "invalid manifest"),
        (break_weights, "not a safetensors file"),
        (wrong_weights, "weights do not fit the manifest"),
        (None, "median inside the head"),  # loads, but its output is nonsense
    ],
    ids=["manifest", "truncated weights", "wrong weights", "nonsense output"],
)
def test_a_broken_model_is_refused_and_the_current_one_stays(
    registry: Path, holder: ModelHolder, caplog: pytest.LogCaptureFixture, damage, reason
) -> None:  # type: ignore[no-untyped-def]
    write_tiny_model(registry, "v1")
    promote(registry, "v1")
    assert holder.refresh() is True

    bad = write_tiny_model(registry, "v2", sane=damage is not None)
    if damage is not None:
        damage(bad)
    promote(registry, "v2")
    with caplog.at_level(logging.ERROR, logger="bonect.daemon.model_holder"):
        assert holder.refresh() is False
    assert version_of(holder) == "v1"
    refusal = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusal) == 1
    assert "promoted model 'v2' refused, keeping tiny v1" in refusal[0].getMessage()
    assert reason in refusal[0].getMessage()
    assert holder.refresh() is False  # refused once, not again at every job


def test_a_pointer_to_a_missing_folder_is_refused(registry: Path, holder: ModelHolder) -> None:
    promote(registry, "never-written")
    assert holder.refresh() is False
    assert isinstance(holder.current, Classical)


def test_rewriting_the_pointer_retries_a_repaired_model(
    registry: Path, holder: ModelHolder
) -> None:
    folder = write_tiny_model(registry, "v1")
    break_manifest(folder)
    promote(registry, "v1")
    assert holder.refresh() is False
    write_tiny_model(registry, "v1")  # repaired in place
    assert holder.refresh() is False  # the pointer did not change
    (registry / PROMOTED).write_text("v1\n", encoding="utf-8")
    bump_mtime(registry / PROMOTED)
    assert holder.refresh() is True
    assert version_of(holder) == "v1"


def test_roll_back_by_rewriting_the_pointer(registry: Path, holder: ModelHolder) -> None:
    for name in ("v1", "v2"):
        write_tiny_model(registry, name)
        promote(registry, name)
        assert holder.refresh() is True
    promote(registry, "v1")
    assert holder.refresh() is True
    assert version_of(holder) == "v1"


def test_removing_the_pointer_goes_back_to_the_classical_map(
    registry: Path, holder: ModelHolder
) -> None:
    write_tiny_model(registry, "v1")
    promote(registry, "v1")
    assert holder.refresh() is True
    (registry / PROMOTED).unlink()
    assert holder.refresh() is True
    assert isinstance(holder.current, Classical)


# -- the watchdog observer -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rename", "write", "remove"])
def test_the_watcher_flags_a_change_of_the_pointer(
    registry: Path, holder: ModelHolder, how: str
) -> None:
    if how == "remove":
        promote(registry, "v1")
    holder.watch()
    assert not holder.change_seen
    (registry / "unrelated.txt").write_text("x", encoding="utf-8")
    if how == "rename":
        promote(registry, "v1")
    elif how == "write":
        (registry / PROMOTED).write_text("v1\n", encoding="utf-8")
    else:
        (registry / PROMOTED).unlink()
    assert holder.wait_for_change(timeout=10.0)
    holder.refresh()  # the worker's next step; clears the flag
    assert not holder.change_seen
    holder.stop()
    holder.stop()  # idempotent

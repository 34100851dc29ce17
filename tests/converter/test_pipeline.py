"""Tests of bonect.converter.pipeline, inference and model_folder: conversion on the phantom.

The U-Net here is the session's tiny randomly initialised model: these tests check geometry,
fusion, masking and model-folder handling, not image quality.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from bonect.converter.inference import predict_cube, predict_plane
from bonect.converter.model_folder import WEIGHTS, LoadedModel, load_model
from bonect.converter.networks import build_model
from bonect.converter.pipeline import Classical, convert, resolve_method
from bonect.converter.preprocess import head_mask, prepare, slices
from bonect.errors import ModelError
from bonect.hounsfield import HU_MAX, HU_MIN
from bonect.phantom.anatomy import Tissue
from bonect.phantom.generate import PhantomCase
from bonect.registry import MANIFEST, PROMOTED, read_manifest

CPU = torch.device("cpu")
PLANE_SETS = (("axial",), ("axial", "coronal"), ("axial", "coronal", "sagittal"))

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model, device=CPU)


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny model folder, to damage."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.mark.parametrize("planes", PLANE_SETS, ids=len)
def test_convert_returns_hu_on_the_mr_grid(
    phantom_case: PhantomCase, model: LoadedModel, planes: tuple[str, ...]
) -> None:
    mr = phantom_case.mr
    result = convert(mr, model, planes=planes, device=CPU)

    sct = result.sct
    assert sct.shape == mr.shape
    np.testing.assert_array_equal(sct.affine, mr.affine)
    hu = sct.array
    assert hu.dtype == np.float32
    assert float(hu.min()) >= HU_MIN and float(hu.max()) <= HU_MAX
    mask = head_mask(mr.array, mr.spacing)
    assert np.all(hu[~mask] == -1000.0)
    assert float(np.mean(hu[mask] != -1000.0)) > 0.9  # the model's output, not a fill value
    if len(planes) == 1:
        assert result.uncertainty is None
    else:
        assert result.uncertainty is not None
        spread = result.uncertainty.array
        assert spread.shape == mr.shape
        np.testing.assert_array_equal(result.uncertainty.affine, mr.affine)
        assert float(spread.min()) >= 0.0
        assert float(spread.max()) > 0.0  # the planes disagree somewhere
        assert np.all(spread[~mask] == 0.0)


def test_fusion_is_the_voxelwise_median_of_the_planes(
    phantom_case: PhantomCase, model: LoadedModel
) -> None:
    image = prepare(phantom_case.mr, model.manifest.input_size).image
    planes = ("axial", "coronal", "sagittal")
    per_plane = np.stack([predict_plane(model, image, p, device=CPU) for p in planes])

    fused = predict_cube(model, image, planes, device=CPU)

    assert not np.array_equal(per_plane[0], per_plane[1])  # else the median proves nothing
    np.testing.assert_array_equal(fused.hu, np.median(per_plane, axis=0))
    assert fused.spread is not None
    np.testing.assert_array_equal(fused.spread, per_plane.max(axis=0) - per_plane.min(axis=0))


def test_single_plane_prediction_is_that_plane(
    phantom_case: PhantomCase, model: LoadedModel
) -> None:
    image = prepare(phantom_case.mr, model.manifest.input_size).image
    fused = predict_cube(model, image, ["coronal"], device=CPU)
    np.testing.assert_array_equal(fused.hu, predict_plane(model, image, "coronal", device=CPU))
    assert fused.spread is None
    with pytest.raises(ValueError, match="at least one plane"):
        predict_cube(model, image, [], device=CPU)


def _with_input_channels(model: LoadedModel, listens_to: int) -> LoadedModel:
    """The model made 2.5D (three input channels) with only channel ``listens_to`` connected,
    through the one-channel model's own first-layer weights."""
    arguments = {**model.manifest.arguments, "in_channels": 3}
    network = build_model(model.manifest.architecture, arguments)
    state = {k: v.clone() for k, v in model.network.state_dict().items()}
    first = next(k for k, v in state.items() if v.ndim == 4)  # the first convolution
    weights = torch.zeros(state[first].shape[0], 3, *state[first].shape[2:])
    weights[:, listens_to] = state[first][:, 0]
    state[first] = weights
    network.load_state_dict(state)
    manifest = model.manifest.model_copy(update={"arguments": arguments})
    return LoadedModel(manifest, network.eval(), model.folder)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_a_25d_model_sees_each_slice_between_its_neighbours(
    phantom_case: PhantomCase, model: LoadedModel, plane: str
) -> None:
    image = prepare(phantom_case.mr, model.manifest.input_size).image
    flat = slices(predict_plane(model, image, plane, device=CPU), plane)
    middle, previous, following = (
        slices(predict_plane(_with_input_channels(model, c), image, plane, device=CPU), plane)
        for c in (1, 0, 2)
    )

    assert _with_input_channels(model, 1).manifest.context_slices == 1
    np.testing.assert_allclose(middle, flat, atol=1e-2)  # the slice itself: the 2D prediction
    np.testing.assert_allclose(previous[1:], flat[:-1], atol=1e-2)  # the slice before it
    np.testing.assert_allclose(previous[0], flat[0], atol=1e-2)  # the edge, repeated
    np.testing.assert_allclose(following[:-1], flat[1:], atol=1e-2)
    # neighbours differ by far more than the tolerance, else the shifts prove nothing
    assert float(np.abs(flat[1:] - flat[:-1]).max()) > 0.5


def test_classical_map_finds_cortical_bone(phantom_case: PhantomCase) -> None:
    """Measured on this adult at 4 x 3 x 3 mm: 97.4 % of cortical voxels above 300 HU."""
    hu = convert(phantom_case.mr, Classical()).sct.array
    labels = phantom_case.labels.array
    assert float(np.mean(hu[labels == Tissue.CORTICAL] > 300.0)) > 0.9
    assert float(np.median(hu[labels == Tissue.BRAIN])) == pytest.approx(42.0)
    mask = head_mask(phantom_case.mr.array, phantom_case.mr.spacing)
    assert np.all(hu[~mask] == -1000.0)
    assert float(np.mean(hu[labels == Tissue.AIR] == -1000.0)) > 0.95


def test_auto_without_a_promoted_model_is_classical(tmp_path: Path) -> None:
    assert isinstance(resolve_method("auto", registry=tmp_path, device=CPU), Classical)
    assert isinstance(resolve_method("auto", registry=None, device=CPU), Classical)
    (tmp_path / PROMOTED).write_text("\n", encoding="utf-8")
    assert isinstance(resolve_method("auto", registry=tmp_path, device=CPU), Classical)


def test_auto_takes_the_promoted_model(tiny_model: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "tiny-0")
    (tmp_path / PROMOTED).write_text("tiny-0\n", encoding="utf-8")

    method = resolve_method("auto", registry=tmp_path, device=CPU)

    assert isinstance(method, LoadedModel)
    assert method.folder == tmp_path / "tiny-0"
    assert method.label == "tiny 0"


def test_promoted_pointer_to_a_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / PROMOTED).write_text("gone-1\n", encoding="utf-8")
    with pytest.raises(ModelError, match="gone-1"):
        resolve_method("auto", registry=tmp_path, device=CPU)


def test_explicit_methods(tiny_model: Path, tmp_path: Path) -> None:
    assert isinstance(resolve_method("classical", registry=None, device=CPU), Classical)
    assert isinstance(resolve_method(str(tiny_model), registry=None, device=CPU), LoadedModel)
    with pytest.raises(ModelError, match="not 'auto', 'classical' or a model folder"):
        resolve_method(str(tmp_path / "nowhere"), registry=None, device=CPU)


def _edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_weights_that_do_not_fit_the_manifest_are_refused(model_copy: Path) -> None:
    _edit_manifest(model_copy, arguments={"base_filters": 8, "levels": 3})
    with pytest.raises(ModelError, match="weights do not fit the manifest"):
        load_model(model_copy)


def test_unknown_architecture_arguments_are_refused(model_copy: Path) -> None:
    _edit_manifest(model_copy, arguments={"base_filters": 4, "depth": 3})
    with pytest.raises(ModelError, match="cannot build light_unet"):
        load_model(model_copy)


def test_missing_manifest_is_refused(model_copy: Path) -> None:
    (model_copy / MANIFEST).unlink()
    with pytest.raises(ModelError, match=r"not a model folder \(no manifest\.json\)"):
        load_model(model_copy)


def test_bad_manifest_json_is_refused(model_copy: Path) -> None:
    (model_copy / MANIFEST).write_text('{"name": "tiny", ', encoding="utf-8")
    with pytest.raises(ModelError, match="invalid manifest"):
        load_model(model_copy)


def test_manifest_with_an_unknown_key_is_refused(model_copy: Path) -> None:
    _edit_manifest(model_copy, colour="blue")
    with pytest.raises(ModelError, match="invalid manifest"):
        read_manifest(model_copy)


def test_missing_weights_are_refused(model_copy: Path) -> None:
    (model_copy / WEIGHTS).unlink()
    with pytest.raises(ModelError, match=r"no weights\.safetensors"):
        load_model(model_copy)


def test_weights_are_safetensors_and_torch_load_is_never_called(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with safe_open(str(tiny_model / WEIGHTS), framework="pt") as weights:
        assert len(list(weights.keys())) > 0

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(load_model(tiny_model), LoadedModel)


class _Payload:
    """A pickle that leaves a file behind when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling creates the marker file


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "empty"])
def test_weights_that_are_not_safetensors_are_a_model_error(
    model_copy: Path, tmp_path: Path, kind: str
) -> None:
    """A pickled or torch.save'd file is refused as a model error and never unpickled."""
    weights = model_copy / WEIGHTS
    marker = tmp_path / "unpickled"
    if kind == "pickle":
        weights.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "torch.save":
        torch.save({"head.weight": torch.zeros(1)}, weights)
    else:
        weights.write_bytes(b"")

    with pytest.raises(ModelError, match="weights"):
        load_model(model_copy)
    assert not marker.exists()


@pytest.mark.gpu
@gpu
def test_convert_on_cuda_matches_the_cpu(phantom_case: PhantomCase, tiny_model: Path) -> None:
    on_cpu = convert(phantom_case.mr, load_model(tiny_model, device=CPU), device=CPU)
    cuda = torch.device("cuda")
    on_gpu = convert(phantom_case.mr, load_model(tiny_model, device=cuda), device=cuda)
    assert float(np.abs(on_gpu.sct.array - on_cpu.sct.array).max()) <= 5.0


@pytest.mark.gpu
@gpu
def test_a_model_on_the_cpu_converts_there_on_a_gpu_machine(
    phantom_case: PhantomCase, tiny_model: Path
) -> None:
    """No device named: the network runs where its weights are (CUDA input to CPU weights
    would fail)."""
    model = load_model(tiny_model, device=CPU)
    conversion = convert(phantom_case.mr, model)
    assert np.isfinite(conversion.sct.array).all()
    assert next(model.network.parameters()).device.type == "cpu"

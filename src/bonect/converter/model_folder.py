"""A model folder's weights: the network built from its manifest, loaded from safetensors, saved.

The manifest, the registry's ``promoted`` pointer and the listing of versions are in
:mod:`bonect.registry`, which does not need PyTorch; this module adds what does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bonect.config import Precision
from bonect.converter.networks import build_model
from bonect.converter.preprocess import PREPROCESSING_VERSION
from bonect.errors import ModelError
from bonect.registry import Manifest, read_manifest, write_manifest

logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
"""The weights of a model folder, beside its ``manifest.json``."""


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, with the manifest that describes it."""

    manifest: Manifest
    network: nn.Module
    folder: Path
    precision: Precision = "auto"

    @property
    def label(self) -> str:
        return self.manifest.label


def load_model(
    folder: Path, *, device: torch.device | str = "cpu", precision: Precision = "auto"
) -> LoadedModel:
    """Build the network its manifest describes and load its weights (safetensors only); its
    forward will run at ``precision``."""
    manifest = read_manifest(folder)
    if manifest.preprocessing_version != PREPROCESSING_VERSION:
        raise ModelError(
            f"{folder}: preprocessing {manifest.preprocessing_version!r} is not the "
            f"{PREPROCESSING_VERSION!r} this bonect implements"
        )
    try:
        network = build_model(manifest.architecture, manifest.arguments)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot build {manifest.architecture}: {exc}") from exc
    try:
        state = load_file(str(folder / WEIGHTS))
        network.load_state_dict(state, strict=True)
    except FileNotFoundError:
        raise ModelError(f"{folder}: no {WEIGHTS}") from None
    except SafetensorError as exc:
        raise ModelError(f"{folder}: {WEIGHTS} is not a safetensors file ({exc})") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{folder}: weights do not fit the manifest ({first})") from exc
    network.eval().to(device)
    return LoadedModel(manifest=manifest, network=network, folder=folder, precision=precision)


def save_model(folder: Path, manifest: Manifest, network: nn.Module) -> Path:
    """Write a model folder (weights first, manifest last, so a folder with a manifest is whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    write_manifest(folder, manifest)
    return folder

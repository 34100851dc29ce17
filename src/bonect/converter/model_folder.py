"""A model is a folder: ``manifest.json`` (what it is) and ``weights.safetensors`` (what it knows).

The registry is a folder of such model folders plus a ``promoted`` file naming the one in use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bonect.converter.models import build_model
from bonect.converter.preprocess import PREPROCESSING_VERSION
from bonect.errors import ModelError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
PROMOTED = "promoted"


class TrainingProvenance(BaseModel, frozen=True, extra="forbid"):
    """Where a model's training data came from (patients as hashed keys, never IDs)."""

    sites: tuple[str, ...] = ()
    patient_keys: tuple[str, ...] = ()
    slices: int = 0
    epochs: int = 0
    loss: str = "mae"
    command: str = ""


class Manifest(BaseModel, frozen=True, extra="forbid"):
    """What a model folder holds; enough to rebuild, run and judge the model."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    input_size: int = Field(ge=16)
    preprocessing_version: str = PREPROCESSING_VERSION
    hu_min: float = -1024.0
    hu_max: float = 3071.0
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    clinical_use: bool = False
    description: str = ""
    training: TrainingProvenance = TrainingProvenance()
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str = ""

    def to_hu(self, y: torch.Tensor) -> torch.Tensor:
        """Network output in [0, 1] to HU."""
        return y * (self.hu_max - self.hu_min) + self.hu_min

    def from_hu(self, hu: torch.Tensor) -> torch.Tensor:
        """HU to the network's [0, 1] target."""
        return (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) / (self.hu_max - self.hu_min)


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, with the manifest that describes it."""

    manifest: Manifest
    network: nn.Module
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a model folder (no {MANIFEST})") from None
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{path}: invalid manifest ({first})") from exc


def load_model(folder: Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the network its manifest describes and load its weights (safetensors only)."""
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
    return LoadedModel(manifest=manifest, network=network, folder=folder)


def save_model(folder: Path, manifest: Manifest, network: nn.Module) -> Path:
    """Write a model folder (weights first, manifest last, so a folder with a manifest is whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True)
    (folder / MANIFEST).write_text(text + "\n", encoding="utf-8")
    return folder


def promoted_model(registry: Path) -> Path | None:
    """The folder of the promoted model in a registry, or None when nothing is promoted."""
    pointer = registry / PROMOTED
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not name:
        return None
    folder = registry / name
    if not (folder / MANIFEST).is_file():
        raise ModelError(f"{pointer} names {name!r}, which is not a model folder in {registry}")
    return folder

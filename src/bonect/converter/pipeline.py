"""Conversion as thin sequencing: pick a method, prepare, predict, map back to the MR grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from bonect.config import Precision
from bonect.converter.classical import ClassicalParameters, classical_sct
from bonect.converter.inference import predict_cube
from bonect.converter.model_folder import LoadedModel, load_model
from bonect.converter.preprocess import from_cube, prepare
from bonect.converter.volume import Volume
from bonect.errors import ModelError
from bonect.hounsfield import AIR_HU, HU_RANGE
from bonect.registry import promoted_model
from bonect.uncertainty import threshold_hu

logger = logging.getLogger(__name__)

ALL_PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Classical:
    """The training-free map, as a conversion method."""

    parameters: ClassicalParameters = ClassicalParameters()
    name: str = "classical"
    version: str = "1"
    clinical_use: bool = True

    @property
    def label(self) -> str:
        return "classical ZTE map"


Method = Classical | LoadedModel


def method_identity(method: Method) -> tuple[str, str, bool]:
    """(name, version, clinical use) of a method, for labels, UIDs and the DICOM header."""
    if isinstance(method, Classical):
        return method.name, method.version, method.clinical_use
    m = method.manifest
    return m.name, m.version, m.clinical_use


def uncertainty_threshold_hu(method: Method) -> float | None:
    """The spread (HU) above which a voxel of ``method``'s sCT is unsure
    (:func:`bonect.uncertainty.threshold_hu`); None for the classical map, which has no planes.
    """
    if isinstance(method, Classical):
        return None
    return threshold_hu(method.manifest)


def resolve_method(
    spec: str, *, registry: Path | None, device: torch.device, precision: Precision = "auto"
) -> Method:
    """``classical``, a model folder, or ``auto``: the promoted model, else classical.

    ``auto`` takes only what has been promoted in the registry; a model folder elsewhere (such
    as the phantom-trained demo model) is used only when named explicitly.
    """
    if spec == "classical":
        return Classical()
    if spec == "auto":
        folder = promoted_model(registry) if registry is not None else None
        if folder is None:
            logger.info("no promoted model in the registry: using the classical map")
            return Classical()
        return load_model(folder, device=device, precision=precision)
    folder = Path(spec)
    if not folder.is_dir():
        raise ModelError(f"--model {spec}: not 'auto', 'classical' or a model folder")
    return load_model(folder, device=device, precision=precision)


@dataclass(frozen=True)
class Conversion:
    """A synthetic CT in HU on the MR grid, and the between-plane spread where there is one.

    ``head`` is the head mask on the MR grid (the voxels the spread is about); None for the
    classical map.
    """

    sct: Volume
    uncertainty: Volume | None
    head: npt.NDArray[np.bool_] | None = None


def convert(
    mr: Volume,
    method: Method,
    *,
    planes: Sequence[str] = ALL_PLANES,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
    uncertainty: bool = True,
) -> Conversion:
    """Return a synthetic CT (float32 HU, air outside the head) on the grid of `mr`.

    ``uncertainty=False`` skips mapping the between-plane spread back onto the MR grid (about
    as costly as mapping the sCT) for callers that do not keep it. The network runs on `device`,
    by default where its weights are (a model loaded on the CPU stays there on a GPU machine).
    """
    if isinstance(method, Classical):
        return Conversion(sct=classical_sct(mr, method.parameters), uncertainty=None)
    size = method.manifest.input_size
    prepared = prepare(mr, size)
    pred = predict_cube(
        method,
        prepared.image,
        planes,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    hu = from_cube(pred.hu, prepared.cube, mr, cval=AIR_HU)
    hu[~prepared.mask] = AIR_HU
    np.clip(hu, *HU_RANGE, out=hu)
    spread_volume = None
    if pred.spread is not None and uncertainty:
        spread = from_cube(pred.spread, prepared.cube, mr, cval=0.0)
        spread[~prepared.mask] = 0.0
        spread_volume = mr.with_array(spread)
    return Conversion(sct=mr.with_array(hu), uncertainty=spread_volume, head=prepared.mask)

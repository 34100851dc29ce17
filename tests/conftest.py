"""Shared fixtures: strict pydicom for every test, a tiny model folder, and one coarse phantom.

The phantom renders at about 4 µs per voxel, so the shared case is coarse (4 × 3 × 3 mm, about
0.4 M voxels per grid) and made once per session; tests that need another orientation render
their own at the same spacing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydicom import config as pydicom_config

from bonect.converter.model_folder import save_model
from bonect.converter.networks import build_model
from bonect.phantom.cohort import WrittenPatient, write_patient
from bonect.phantom.generate import Acquisition, PhantomCase, generate_case
from bonect.registry import Manifest

PHANTOM_SEED = 3
PHANTOM_INDEX = 1  # an adult: mineralised bone, thick enough to see at 4 mm (index 0 is a child)
COARSE = (4.0, 3.0, 3.0)
TINY_MANIFEST = Manifest(
    name="tiny",
    version="0",
    architecture="light_unet",
    arguments={"base_filters": 4, "levels": 3},
    input_size=32,
)


@pytest.fixture(autouse=True)
def _strict_pydicom() -> Iterator[None]:
    """Run every test with pydicom's strict validation, restoring the previous modes."""
    reading = pydicom_config.settings.reading_validation_mode
    writing = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = reading
    pydicom_config.settings.writing_validation_mode = writing


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised (seeded) small Light_U-Net model folder, for plumbing tests."""
    torch.manual_seed(0)
    network = build_model(TINY_MANIFEST.architecture, TINY_MANIFEST.arguments)
    return save_model(tmp_path_factory.mktemp("models") / "tiny", TINY_MANIFEST, network)


@pytest.fixture(scope="session")
def phantom_case() -> PhantomCase:
    """One coarse axial phantom patient (MR, CT on the MR grid, labels, and its own CT)."""
    acquisition = Acquisition("axial", COARSE)
    return generate_case(
        PHANTOM_SEED, PHANTOM_INDEX, acquisition=acquisition, ct_acquisition=acquisition
    )


@pytest.fixture(scope="session")
def phantom_written(
    phantom_case: PhantomCase, tmp_path_factory: pytest.TempPathFactory
) -> WrittenPatient:
    """:func:`phantom_case` written to disk: DICOM MR and CT series and the NIfTI files."""
    return write_patient(phantom_case, PHANTOM_SEED, tmp_path_factory.mktemp("phantom"))

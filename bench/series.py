"""Synthetic series for the benchmarks: one phantom head, resampled to each wanted matrix.

Rendering the phantom costs time in proportion to its voxels, so one head is rendered once at
1.5 x 1.0 x 1.0 mm (axial) and resampled (trilinear) to every matrix a benchmark asks for; the
DICOM files are written by the phantom's own writer (explicit VR little endian, one file per
slice) and cached under ``bench/.cache/series/<name>/`` with a ``spec.json`` that names what
they are. A cached series is reused as long as its spec is unchanged.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import date, time
from pathlib import Path
from typing import Literal

import numpy as np
from common import CACHE
from scipy import ndimage

GENERATOR_VERSION = 1
SEED = 2718


@dataclass(frozen=True)
class SeriesSpec:
    """An axial series of ``slices`` images of ``matrix`` x ``matrix`` over the phantom's FOV."""

    name: str
    modality: Literal["MR", "CT"]
    slices: int
    matrix: int

    @property
    def label(self) -> str:
        return f"{self.modality} {self.slices} x {self.matrix}²"


@functools.cache
def _base_volumes() -> dict[str, np.ndarray]:
    """The rendered head (MR, CT on the MR grid, affine), rendered once and kept as ``.npz``."""
    path = CACHE / f"phantom-{SEED}-v{GENERATOR_VERSION}.npz"
    if not path.is_file():
        from bonect.phantom.generate import Acquisition, generate_case

        case = generate_case(
            SEED, 0, acquisition=Acquisition("axial", (1.5, 1.0, 1.0)), ct_acquisition=None
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.npz")
        np.savez(tmp, MR=case.mr.array, CT=case.ct_on_mr.array, affine=case.mr.affine)
        tmp.rename(path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def phantom_volume(modality: Literal["MR", "CT"], slices: int, matrix: int):  # type: ignore[no-untyped-def]
    """The phantom's MR (or its CT on the MR grid) resampled to ``slices`` x ``matrix``²."""
    from bonect.converter.volume import Volume

    base = _base_volumes()
    source, source_affine = base[modality], base["affine"]
    shape = (slices, matrix, matrix)
    factors = [n / m for n, m in zip(shape, source.shape, strict=True)]
    array = ndimage.zoom(np.asarray(source, dtype=np.float32), factors, order=1)
    # zoom maps first and last voxel centres onto each other: scale the axes accordingly
    scale = [(m - 1) / (n - 1) for n, m in zip(shape, source.shape, strict=True)]
    affine = source_affine.copy()
    affine[:3, :3] = source_affine[:3, :3] @ np.diag(scale)
    return Volume(array.astype(np.float32), affine)


def _write(spec: SeriesSpec, folder: Path) -> None:
    from bonect.dicom.uids import deterministic_uid
    from bonect.phantom.dicom import PatientInfo, StudyInfo, write_acquired_series

    volume = phantom_volume(spec.modality, spec.slices, spec.matrix)
    key = f"{spec.name}-{spec.slices}-{spec.matrix}-{GENERATOR_VERSION}"
    write_acquired_series(
        volume,
        folder,
        modality=spec.modality,
        patient=PatientInfo(
            name="BENCH^PHANTOM",
            patient_id="BENCH0001",
            birth_date=date(1980, 1, 1),
            sex="F",
            issuer_of_patient_id="BONECT-BENCH",
        ),
        study=StudyInfo(
            study_uid=deterministic_uid("bench-study", key),
            study_date=date(2026, 1, 5),
            study_time=time(9, 0),
            accession_number="BENCH1",
            description="MR HEAD NECK BONE",
            study_id="1",
        ),
        series_number=3 if spec.modality == "MR" else 2,
        series_description="ZTE bone" if spec.modality == "MR" else "CT head neck",
        frame_of_reference_uid=deterministic_uid("bench-for", key),
        series_uid=deterministic_uid("bench-series", key),
        mr_contrast="zte" if spec.modality == "MR" else None,
    )


def series_files(spec: SeriesSpec) -> list[Path]:
    """The files of ``spec`` (slice order), written first if not cached."""
    folder = CACHE / "series" / spec.name
    marker = folder / "spec.json"
    wanted = json.dumps({**asdict(spec), "generator": GENERATOR_VERSION}, sort_keys=True)
    if not (marker.is_file() and marker.read_text() == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        _write(spec, tmp / "dicom")
        (tmp / "spec.json").write_text(wanted)
        tmp.rename(folder)
    return sorted((folder / "dicom").glob("*.dcm"))


def series_folder(spec: SeriesSpec) -> Path:
    """The folder of ``spec``'s DICOM files (written first if not cached)."""
    return series_files(spec)[0].parent

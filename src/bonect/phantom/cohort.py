"""A phantom cohort on disk: per patient a bone-MR and a CT series (DICOM) and NIfTI pairs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path

import numpy as np

from bonect.converter.volume import write_nifti
from bonect.dicom.uids import deterministic_uid
from bonect.phantom.acquisition import Acquisition
from bonect.phantom.contrast import Contrast
from bonect.phantom.dicom import PatientInfo, StudyInfo, write_acquired_series
from bonect.phantom.generate import PhantomCase, generate_case

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenPatient:
    """Where one phantom patient was written."""

    folder: Path
    mr_dicom: Path
    ct_dicom: Path | None  # None when the case was generated without a CT acquisition
    mr_nifti: Path
    ct_nifti: Path  # the CT on the MR grid (as after registration), SynthRAD-style
    mask_nifti: Path


def patient_id(seed: int, index: int) -> str:
    return f"PH{seed:04d}{index + 1:03d}"


def write_patient(case: PhantomCase, seed: int, out: Path) -> WrittenPatient:
    """Write one generated patient under ``out/<patient id>/``."""
    pid = patient_id(seed, case.index)
    folder = out / pid
    rng = np.random.default_rng([seed, case.index, 99])
    patient = PatientInfo(
        name=f"PHANTOM^{pid}",
        patient_id=pid,
        birth_date=date(2020 if case.params.paediatric else 1980, 1, 1)
        + timedelta(days=int(rng.integers(0, 3000))),
        sex="F" if rng.random() < 0.5 else "M",
        issuer_of_patient_id="BONECT-PHANTOM",
    )
    mr_day = date(2026, 1, 1) + timedelta(days=int(rng.integers(0, 300)))
    ct_day = mr_day - timedelta(days=int(rng.integers(1, 150)))  # within the paper's 6 months
    mr_study = StudyInfo(
        study_uid=deterministic_uid("phantom-study-mr", pid),
        study_date=mr_day,
        study_time=time(9, 30),
        accession_number=f"A{pid[-6:]}1",
        description="MR HEAD NECK BONE",
        study_id="1",
    )
    ct_study = StudyInfo(
        study_uid=deterministic_uid("phantom-study-ct", pid),
        study_date=ct_day,
        study_time=time(14, 0),
        accession_number=f"A{pid[-6:]}2",
        description="CT HEAD NECK",
        study_id="2",
    )
    contrast_name = {"zte": "ZTE", "ute": "UTE", "gre": "GRE black bone", "petra": "PETRA"}[
        case.contrast
    ]
    mr_dir = write_acquired_series(
        case.mr,
        folder / "dicom" / "MR",
        modality="MR",
        patient=patient,
        study=mr_study,
        series_number=3,
        series_description=f"{contrast_name} bone {case.contrast.upper()}",
        frame_of_reference_uid=deterministic_uid("phantom-for-mr", pid),
        series_uid=deterministic_uid("phantom-series-mr", pid),
        mr_contrast=case.contrast,
    )[0].parent
    ct_dir = None
    if case.ct is not None:
        ct_dir = write_acquired_series(
            case.ct,
            folder / "dicom" / "CT",
            modality="CT",
            patient=patient,
            study=ct_study,
            series_number=2,
            series_description="CT head neck bone kernel",
            frame_of_reference_uid=deterministic_uid("phantom-for-ct", pid),
            series_uid=deterministic_uid("phantom-series-ct", pid),
        )[0].parent
    mask = case.labels.with_array((case.labels.array > 0).astype(np.uint8))
    return WrittenPatient(
        folder=folder,
        mr_dicom=mr_dir,
        ct_dicom=ct_dir,
        mr_nifti=write_nifti(case.mr, folder / "mr.nii.gz"),
        ct_nifti=write_nifti(
            case.ct_on_mr.with_array(case.ct_on_mr.array.astype(np.int16)), folder / "ct.nii.gz"
        ),
        mask_nifti=write_nifti(mask, folder / "mask.nii.gz"),
    )


def write_cohort(
    out: Path,
    *,
    patients: int,
    seed: int = 0,
    contrast: Contrast = "zte",
    acquisition: Acquisition = Acquisition(),
    first_index: int = 0,
) -> list[WrittenPatient]:
    """Generate and write patients ``first_index .. first_index + patients - 1`` of a cohort."""
    written = []
    for index in range(first_index, first_index + patients):
        case = generate_case(seed, index, contrast=contrast, acquisition=acquisition)
        written.append(write_patient(case, seed, out))
        logger.info("phantom patient %d written to %s", index + 1, written[-1].folder)
    return written

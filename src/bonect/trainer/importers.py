"""Importing external training data as a site: SynthRAD folders, NIfTI pairs, DICOM, the phantom.

Every importer adds what it can and lists what it could not, with the reason, case by case
(an MR with no CT, an unreadable file, two patients in one folder): bad input costs only itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from bonect.catalog.records import patient_key as catalog_patient_key
from bonect.converter.dicom_reader import read_series_files
from bonect.converter.volume import Volume, read_nifti
from bonect.errors import BonectError
from bonect.phantom.cohort import patient_id as phantom_patient_id
from bonect.phantom.generate import ORIENTATIONS, Acquisition, generate_case, patient_seed
from bonect.phantom.variation import Family, Technique, draw_acquisition
from bonect.trainer.sites import Site, SiteError, SiteStore, check_name, hashed_key

logger = logging.getLogger(__name__)

PHANTOM_ISSUER = "BONECT-PHANTOM"
PHANTOM_MR_SPACING = (2.0, 1.6, 1.6)
PHANTOM_CT_SPACING = (2.0, 2.0, 2.0)  # the CT from another session, on its own grid
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class ImportSummary:
    """What an import added, and what it left out with the reason."""

    site: str
    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"site {self.site}: {len(self.added)} pair(s) imported"]
        out += [f"  left out {case}: {reason}" for case, reason in self.skipped]
        return out


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    """True when two volumes share shape and affine (the CT is already on the MR grid)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tol_mm))


def _nifti(folder: Path, stem: str) -> Path | None:
    for suffix in _NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _add_nifti_pair(store: SiteStore, site: Site, case: str, mr_path: Path, ct_path: Path) -> None:
    check_name(case, "case")
    mr, ct = read_nifti(mr_path), read_nifti(ct_path)  # both must be readable volumes
    store.add_pair(
        site,
        case,
        patient_key=hashed_key(site.name, case),
        mr=mr,
        ct=ct,
        ct_on_mr_grid=same_grid(mr, ct),
        provenance={"source": str(mr_path.parent)},
    )


def import_synthrad(store: SiteStore, site_name: str, path: Path) -> ImportSummary:
    """SynthRAD-style case folders: ``<case>/mr.nii.gz``, ``ct.nii.gz`` (optional mask)."""
    folders = _case_folders(path)
    site = store.create_site(site_name, "synthrad", str(path))
    summary = ImportSummary(site.name)
    for folder in tqdm(folders, desc=f"import {site.name}", unit="case"):
        mr, ct = _nifti(folder, "mr"), _nifti(folder, "ct")
        if mr is None or ct is None:
            missing = "mr.nii.gz" if mr is None else "ct.nii.gz"
            summary.skipped.append((folder.name, f"no {missing} (an MR needs its CT)"))
            continue
        _guarded(summary, folder.name, _add_nifti_pair, store, site, folder.name, mr, ct)
    return summary


def import_nifti(store: SiteStore, site_name: str, path: Path) -> ImportSummary:
    """A folder of NIfTI pairs named ``<case>_mr.nii[.gz]`` and ``<case>_ct.nii[.gz]``."""
    if not path.is_dir():
        raise SiteError(f"{path}: not a folder")
    cases: dict[str, dict[str, Path]] = defaultdict(dict)
    for file in sorted(path.iterdir()):
        for suffix in _NIFTI_SUFFIXES:
            for kind in ("mr", "ct"):
                ending = f"_{kind}{suffix}"
                if file.name.lower().endswith(ending):
                    cases[file.name[: -len(ending)]][kind] = file
    if not cases:
        raise SiteError(f"{path}: no <case>_mr.nii.gz / <case>_ct.nii.gz files")
    site = store.create_site(site_name, "nifti", str(path))
    summary = ImportSummary(site.name)
    for case, files in tqdm(sorted(cases.items()), desc=f"import {site.name}", unit="case"):
        if "mr" not in files or "ct" not in files:
            have = next(iter(files))
            summary.skipped.append(
                (case, f"only a {have.upper()} (no {'CT' if have == 'mr' else 'MR'})")
            )
            continue
        _guarded(summary, case, _add_nifti_pair, store, site, case, files["mr"], files["ct"])
    return summary


@dataclass(frozen=True)
class _SeriesFiles:
    uid: str
    modality: str
    patient: str  # the catalog's patient key (hash)
    study_date: str
    files: tuple[Path, ...]


def import_dicom(
    store: SiteStore, site_name: str, path: Path, *, window_days: float = 183.0
) -> ImportSummary:
    """DICOM files of MR and CT series (any folder structure); each MR pairs with the CT of the
    same patient (Patient ID and issuer) nearest in date within `window_days`."""
    series = _scan_dicom(path)
    site = store.create_site(site_name, "dicom", str(path))
    summary = ImportSummary(site.name)
    by_patient: dict[str, list[_SeriesFiles]] = defaultdict(list)
    for s in series:
        by_patient[s.patient].append(s)
    for group in by_patient.values():
        cts = [s for s in group if s.modality == "CT"]
        for mr in (s for s in group if s.modality == "MR"):
            label = hashed_key(mr.uid)[:16]
            ct = nearest_in_time(mr.study_date, cts, window_days)
            if ct is None:
                summary.skipped.append(
                    (
                        label,
                        f"MR series {mr.uid}: no CT of the patient within {window_days:g} days",
                    )
                )
                continue
            case = hashed_key(mr.uid, ct.uid)[:16]
            _guarded(summary, case, _add_dicom_pair, store, site, case, mr, ct)
    return summary


def nearest_in_time(
    mr_date: str, cts: Sequence[_SeriesFiles], window_days: float
) -> _SeriesFiles | None:
    """The CT nearest in study date to the MR, within the window (unknown dates: no pair)."""
    best: tuple[float, _SeriesFiles] | None = None
    for ct in cts:
        days = days_apart(mr_date, ct.study_date)
        if days is not None and days <= window_days and (best is None or days < best[0]):
            best = (days, ct)
    return None if best is None else best[1]


def days_apart(a: str, b: str) -> float | None:
    """Days between two DICOM dates (YYYYMMDD); None when either is missing or malformed."""
    try:
        da = date(int(a[:4]), int(a[4:6]), int(a[6:8]))
        db = date(int(b[:4]), int(b[4:6]), int(b[6:8]))
    except (ValueError, IndexError):
        return None
    return float(abs((da - db).days))


def _add_dicom_pair(
    store: SiteStore, site: Site, case: str, mr: _SeriesFiles, ct: _SeriesFiles
) -> None:
    provenance = {"days_apart": days_apart(mr.study_date, ct.study_date)}
    add_dicom_pair(store, site, case, mr.patient, mr.files, ct.files, provenance)


def add_dicom_pair(
    store: SiteStore,
    site: Site,
    case: str,
    patient_key: str,
    mr_files: Sequence[Path],
    ct_files: Sequence[Path],
    provenance: dict[str, Any],
) -> None:
    """Read one MR and one CT series from DICOM files and store them as a pair.

    Raises
    ------
    SeriesError
        When either series is not a usable volume; nothing is stored then.
    """
    mr = read_series_files(mr_files, modality="MR")
    ct = read_series_files(ct_files, modality="CT")
    store.add_pair(
        site,
        case,
        patient_key=patient_key,
        mr=mr.volume,
        ct=ct.volume,
        ct_on_mr_grid=False,
        provenance={"mr_series_uid": mr.series_uid, "ct_series_uid": ct.series_uid, **provenance},
    )


def _scan_dicom(path: Path) -> list[_SeriesFiles]:
    if not path.is_dir():
        raise SiteError(f"{path}: not a folder")
    groups: dict[str, list[Path]] = defaultdict(list)
    meta: dict[str, tuple[str, str, str]] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
            modality = str(ds.get("Modality", ""))
            key = catalog_patient_key(
                str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", ""))
            )
            study_date = str(ds.get("StudyDate", ""))
        except (InvalidDicomError, AttributeError, OSError, ValueError, TypeError, KeyError):
            logger.debug("not a DICOM image file: %s", file)
            continue
        groups[uid].append(file)
        meta[uid] = (modality, key, study_date)
    if not groups:
        raise SiteError(f"{path}: no DICOM files")
    return [
        _SeriesFiles(uid, meta[uid][0], meta[uid][1], meta[uid][2], tuple(files))
        for uid, files in sorted(groups.items())
        if meta[uid][0] in ("MR", "CT")
    ]


def import_phantom(
    store: SiteStore,
    site_name: str,
    *,
    patients: int,
    seed: int,
    family: Family = "classic",
    contrast: Technique | None = None,
    mr_spacing: tuple[float, float, float] | None = None,
    ct_spacing: tuple[float, float, float] = PHANTOM_CT_SPACING,
) -> ImportSummary:
    """Render `patients` phantom patients of cohort `seed` (MR, and CT from another session).

    The ``classic`` family (:mod:`bonect.phantom.variation`) is the original phantom: ZTE unless
    `contrast` says otherwise, on an MR grid of `mr_spacing` (default 2 × 1.6 × 1.6 mm) in
    turns axial, sagittal and coronal. Any other family draws each patient's technique (unless
    `contrast` fixes it) and MR acquisition (plane, voxel size, field of view; `mr_spacing`, when
    given, replaces the drawn voxel size). The CT is axial on `ct_spacing` in every family.

    Raises
    ------
    SiteError
        For PETRA in the classic family, which has no PETRA contrast.
    """
    if family == "classic" and contrast == "petra":
        raise SiteError("the classic phantom has no PETRA contrast: use --family wide or shifted")
    technique = contrast or ("zte" if family == "classic" else None)
    what = technique or "technique drawn"
    origin = f"phantom cohort {seed}, " + (what if family == "classic" else f"{family}, {what}")
    site = store.create_site(site_name, "phantom", origin)
    summary = ImportSummary(site.name)
    for index in tqdm(range(patients), desc=f"import {site.name}", unit="patient"):
        acquisition = phantom_acquisition(seed, index, family, mr_spacing)
        case = generate_case(
            seed,
            index,
            contrast=technique,
            acquisition=acquisition,
            ct_acquisition=Acquisition("axial", ct_spacing),
            family=family,
        )
        assert case.ct is not None
        pid = phantom_patient_id(seed, index)
        store.add_pair(
            site,
            pid,
            patient_key=catalog_patient_key(pid, PHANTOM_ISSUER),
            mr=case.mr,
            ct=case.ct,
            ct_on_mr_grid=False,
            provenance={
                "phantom_seed": seed,
                "index": index,
                "family": family,
                "contrast": case.contrast,
                "orientation": acquisition.orientation,
                "mr_spacing": list(acquisition.spacing),
                "paediatric": case.params.paediatric,
            },
        )
        summary.added.append(pid)
    return summary


def phantom_acquisition(
    seed: int, index: int, family: Family, spacing: tuple[float, float, float] | None
) -> Acquisition:
    """The MR acquisition of phantom patient `index`: classic, planes in turn on `spacing`;
    other families, as :func:`~bonect.phantom.generate.generate_case` draws it (`spacing`, when
    given, replacing the drawn voxel size)."""
    if family == "classic":
        orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
        return Acquisition(orientation, spacing or PHANTOM_MR_SPACING)
    drawn = draw_acquisition(patient_seed(seed, index), family)
    return drawn if spacing is None else replace(drawn, spacing=spacing)


def _case_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        raise SiteError(f"{path}: not a folder")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SiteError(f"{path}: no case folders (<case>/mr.nii.gz, <case>/ct.nii.gz)")
    return folders


def _guarded(summary: ImportSummary, case: str, action: Callable[..., None], *args: Any) -> None:
    """Run one case's import; a bad case is listed with its reason and costs nothing else."""
    try:
        action(*args)
    except BonectError as exc:
        summary.skipped.append((case, str(exc)))
        return
    summary.added.append(case)

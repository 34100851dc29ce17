"""Fixtures of the status-page tests: a catalog with a done job and a failed one, a registry.

The done job's MR is a phantom series whose PatientName and PatientID are known
(:data:`PATIENT_NAME`, :data:`PATIENT_ID`), so that a test can look for them in every page.
Its "sCT" is the phantom's own CT series written where the worker writes its output, and its
uncertainty map a NIfTI beside it, so that the job page has all three kinds of pictures. The
jobs are moved through the catalog's own methods, as the worker moves them.

The browser test reuses the end-to-end fixtures (daemon, Orthanc, phantom series); they are
imported here so that pytest finds them for ``tests/web`` too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from bonect import registry
from bonect.catalog import Catalog, Role, SendStatus
from bonect.catalog.engine import catalog_url
from bonect.config import Config, StorageConfig, WebConfig
from bonect.dicom.header import read_header
from bonect.phantom.cohort import WrittenPatient
from bonect.web.auth import hash_password
from e2e.conftest import (  # noqa: F401  (fixtures for the browser test)
    coarse_mr,
    coarse_patient,
    pacs,
    start_daemon,
)

PATIENT_NAME = "Zyxwvut^Quintessa"
PATIENT_ID = "PID-77345-SECRET"
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BUNDLED_MODEL = Path(__file__).parents[2] / "src" / "bonect" / "models" / "phantom-light-unet"
USER, PASSWORD = "physicist", "correct horse battery staple"
BCRYPT_USER, BCRYPT_PASSWORD = "admin", "another long passphrase"


@dataclass(frozen=True)
class WebSite:
    """What the page tests look at: the storage folder, the catalog, the two jobs."""

    storage: Path
    catalog: Catalog
    done_job: int
    failed_job: int
    mr_series_uid: str
    failed_reason: str
    password_file: Path

    def config(self, **web: object) -> Config:
        return Config(storage=StorageConfig(dir=self.storage), web=WebConfig(**web))  # type: ignore[arg-type]


def _copy_with_patient(files: list[Path], out: Path) -> list[Path]:
    """The series as a new one whose patient is :data:`PATIENT_NAME` / :data:`PATIENT_ID`."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    paths = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(out / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _record(catalog: Catalog, files: list[Path], at: datetime) -> str:
    """Record a series in the catalog and settle it as one to convert; its series UID."""
    header = None
    for path in files:
        header = read_header(pydicom.dcmread(path, stop_before_pixels=True))
        catalog.record_instance(header, path, received_at=at, association_id="a1")
    assert header is not None
    series = catalog.series(header.series_uid)
    assert series is not None
    catalog.association_released("a1", at + timedelta(seconds=1))
    catalog.settle_series(
        header.series_uid,
        revision=series.revision,
        role=Role.CONVERT,
        now=at + timedelta(seconds=2),
    )
    return header.series_uid


def _uncertainty(written: WrittenPatient, out: Path) -> None:
    """A plausible spread map on the MR grid: large at the bone's edges, 0 outside the head."""
    ct = nibabel.load(written.ct_nifti)
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    spread = np.abs(np.gradient(hu, axis=0)) * (hu > -400)
    nibabel.save(nibabel.Nifti1Image(spread.astype(np.float32), ct.affine), out)


def _registry(storage: Path) -> None:
    """The bundled model as a version with a report, promoted; an older version before it."""
    models = storage / "models"
    models.mkdir(parents=True)
    old = models / "old-light-unet"
    old.mkdir()
    manifest = registry.read_manifest(BUNDLED_MODEL)
    registry.write_manifest(old, manifest.model_copy(update={"name": "old", "created": "2020"}))
    new = models / "phantom-light-unet"
    new.mkdir()
    shutil.copy(BUNDLED_MODEL / "manifest.json", new / "manifest.json")
    (new / "report.json").write_text('{"title": "augment", "decision": "promoted: it is better"}')
    (new / "report.md").write_text(
        "# augment\n\n## With 95 % confidence intervals\n\n| method | MAE (HU) |\n|---|---|\n"
        "| external only | 120.0 [110.0, 130.0] |\n| external + local (CV) | 99.0 [90.0, 108.0] |\n"
    )
    registry.promote(models, "old-light-unet", reason="first", now=START)
    registry.promote(models, "phantom-light-unet", reason="promoted: it is better", now=START)


@pytest.fixture
def site(tmp_path: Path, phantom_written: WrittenPatient) -> Iterator[WebSite]:
    storage = tmp_path / "var"
    storage.mkdir()
    catalog = Catalog.open(catalog_url(storage, ""))
    mr_files = _copy_with_patient(sorted(phantom_written.mr_dicom.glob("*.dcm")), tmp_path / "mr")
    mr_uid = _record(catalog, mr_files, START)
    bad_files = _copy_with_patient(mr_files[:3], tmp_path / "bad")
    bad_uid = _record(catalog, bad_files, START + timedelta(seconds=5))

    now = START + timedelta(seconds=10)
    job = catalog.claim_next(now, worker_id="test:1")
    assert job is not None and job.series_uid == mr_uid
    out = storage / "outgoing" / mr_uid / f"job{job.id}"
    out.mkdir(parents=True)
    assert phantom_written.ct_dicom is not None
    sct = []
    for n, path in enumerate(sorted(phantom_written.ct_dicom.glob("*.dcm")), 1):
        sct.append(out / f"CT_{n:04d}.dcm")
        shutil.copy(path, sct[-1])
    _uncertainty(phantom_written, out / "uncertainty.nii.gz")
    job = catalog.mark_converted(
        job, output_dir=out, model_version="phantom-light-unet 20261129", now=now
    )
    uids = [(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), p) for p in sct]
    catalog.plan_sends(job, uids, ["pacs"], now=now)
    job = catalog.mark_sending(job, now=now)
    for uid, _ in uids:
        catalog.record_send(job, uid, "pacs", status=SendStatus.STORED, status_code=0, now=now)
    catalog.finish(job, now=now + timedelta(seconds=3), timings={"read": 0.4, "convert": 2.5})

    failed = catalog.claim_next(now, worker_id="test:1")
    assert failed is not None and failed.series_uid == bad_uid
    reason = "series refused: 3 slices, too few to convert"
    catalog.fail(failed, reason, now=now + timedelta(seconds=4))

    _registry(storage)
    passwords = tmp_path / "passwords"
    bcrypt_hash = bcrypt.hashpw(BCRYPT_PASSWORD.encode(), bcrypt.gensalt(4))
    passwords.write_text(
        f"# logins of the status page\n{USER}:{hash_password(PASSWORD, iterations=1000)}\n"
        f"{BCRYPT_USER}:{bcrypt_hash.decode()}\n"
    )
    yield WebSite(storage, catalog, job.id, failed.id, mr_uid, reason, passwords)
    catalog.close()

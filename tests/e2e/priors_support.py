"""Orthanc as a query/retrieve PACS for the priors tests, and the small series they load it with."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_peers import LOCALHOST
from e2e.conftest import Daemon, OrthancOnPort
from series_factory import make_mr_series, write_series

ISSUER = "HOSPITAL-A"


class QueryRetrievePacs(OrthancOnPort):
    """Orthanc that knows bonect as a modality: it may store, find, move and get."""

    def __init__(self, folder: Path, *, dicom_port: int, bonect_port: int) -> None:
        super().__init__(folder, dicom_port=dicom_port, allowed_aets=("BONECT",))
        self.bonect_port = bonect_port

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["DicomModalities"] = {
            "bonect": {
                "AET": "BONECT",
                "Host": LOCALHOST,
                "Port": self.bonect_port,
                "AllowEcho": True,
                "AllowStore": True,
                "AllowFind": True,
                "AllowMove": True,
                "AllowGet": True,
            }
        }
        return config

    def upload(self, paths: list[Path]) -> None:
        """Store files through the REST API (as if they had been there for years)."""
        for path in paths:
            request = urllib.request.Request(
                f"{self.url}/instances", data=path.read_bytes(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()


@dataclass
class Patient:
    mr: list[Path]
    mr_series: str
    wanted: list[str]  # CT series UIDs to be retrieved
    unwanted: list[str]  # CT series UIDs at the PACS never to be retrieved


def prior_series(
    folder: Path,
    *,
    modality: str,
    patient_id: str,
    name: str,
    study_date: str,
    description: str,
    study_uid: str,
    slices: int = 6,
    size: int = 12,
    localizer: bool = False,
) -> tuple[list[Path], str]:
    """A small series of ``slices`` slices of ``size`` x ``size`` pixels, written to ``folder``."""
    datasets = make_mr_series(
        (slices, size, size),
        (3.0, 2.0, 2.0),
        modality=modality,
        patient_id=patient_id,
        patient_name=name,
        series_description=description,
        study_uid=study_uid,
    )
    for ds in datasets:
        ds.StudyDate = study_date
        ds.SeriesDate = study_date
        ds.IssuerOfPatientID = ISSUER
        if localizer:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    paths = write_series(datasets, folder)
    return paths, str(datasets[0].SeriesInstanceUID)


def add_source(daemon: Daemon, pacs_port: int, *, retrieve: str = "move") -> None:
    """Append the ``[[sources]]`` entry of the test PACS (``orthanc``) to the daemon's config."""
    with daemon.config.open("a", encoding="utf-8") as config:
        config.write(
            f'\n[[sources]]\nname = "orthanc"\nae_title = "PACS"\nhost = "{LOCALHOST}"\n'
            f'port = {pacs_port}\nretrieve = "{retrieve}"\n'
        )

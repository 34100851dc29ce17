"""Back-fill against Orthanc: ``bonect-trainer harvest`` finds the bone MR already in the PACS
and, with the running daemon, brings in each pairable patient's MR and CT.

The PACS holds, before anything starts:

* P: a ZTE bone MR of 2026-03-01 and a CT of 2026-01-01: pairable;
* Q: a ZTE bone MR of 2026-03-10, no CT: listed, not pairable, nothing retrieved;
* R: a T1 MPRAGE of 2026-04-01: not bone MR, not listed;
* S: a ZTE bone MR of 2024-01-01: before ``--since``, not listed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from bonect.catalog import Catalog, catalog_url
from bonect.trainer.harvest import harvest_local
from bonect.trainer.sites import SiteStore
from dicom_peers import free_port
from e2e.conftest import PEERS_MISSING, Daemon, StartDaemon
from e2e.priors_support import QueryRetrievePacs, add_source, prior_series

pytestmark = pytest.mark.skipif(PEERS_MISSING, reason="needs Debian's dcmtk and orthanc")

TRAINER = Path(sys.executable).parent / "bonect-trainer"


def load_pacs(root: Path, pacs: QueryRetrievePacs) -> dict[str, str]:
    """The series above into the PACS; their series UIDs by name (``P-MR``, ``P-CT`` …)."""
    uids = {}
    wanted = [
        ("P", "MR", "20260301", "ZTE bone"),
        ("P", "CT", "20260101", "Head 1.0 H30s"),
        ("Q", "MR", "20260310", "ZTE bone"),
        ("R", "MR", "20260401", "T1 MPRAGE"),
        ("S", "MR", "20240101", "ZTE bone"),
    ]
    for patient, modality, day, description in wanted:
        paths, uid = prior_series(
            root / f"{patient}-{modality}",
            modality=modality,
            patient_id=f"HARVEST-{patient}",
            name=f"Doe^{patient}",
            study_date=day,
            description=description,
            study_uid=generate_uid(),
        )
        pacs.upload(paths)
        uids[f"{patient}-{modality}"] = uid
    return uids


def harvest(daemon: Daemon, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRAINER), "--config", str(daemon.config), "harvest", "--source", "orthanc",
         "--since", "2026-01-01", "--until", "2026-12-31", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_harvest_lists_the_pairable_patients_then_brings_them_in_once(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pacs_port = free_port()
    daemon = start_daemon(pacs_port=pacs_port, start=False)
    with QueryRetrievePacs(
        tmp_path / "orthanc", dicom_port=pacs_port, bonect_port=daemon.port
    ) as pacs:
        uids = load_pacs(tmp_path / "pacs", pacs)
        add_source(daemon, pacs_port)
        daemon.start()

        dry = harvest(daemon, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        lines = dry.stdout.splitlines()
        assert len(lines) == 3, dry.stdout  # P and Q, then the totals
        assert "MR 20260301: 1 bone-MR series  CT 20260101: 1 series" in lines[0]
        assert "MR 20260310: 1 bone-MR series  no pair: no CT study" in lines[1]
        assert lines[2].startswith("1 pairable of 2 bone-MR studies; to retrieve: 1 MR and 1 CT")
        assert "HARVEST" not in dry.stdout and "Doe" not in dry.stdout  # hashed keys only
        assert daemon.catalog.instance_count() == 0  # the dry run moved nothing

        done = harvest(daemon)
        assert done.returncode == 0, done.stderr
        assert "asked orthanc for 1 bone-MR series (0 already in the archive)" in done.stdout

        def role(uid: str) -> object:
            return daemon.catalog.scalar("SELECT role FROM series WHERE series_uid = ?", (uid,))

        daemon.wait_for(lambda: role(uids["P-MR"]) == "convert", "P's MR settled")
        daemon.wait_for(lambda: role(uids["P-CT"]) == "keep_ct", "P's CT retrieved by prefetch")
        assert daemon.catalog.jobs(uids["P-MR"]) == []  # back-filled: paired, never converted
        for other in ("Q-MR", "R-MR", "S-MR"):
            assert daemon.catalog.instance_count(uids[other]) == 0, other

        again = harvest(daemon)
        assert again.returncode == 0, again.stderr
        assert "asked orthanc for 0 bone-MR series (1 already in the archive)" in again.stdout
        assert daemon.stop() == 0

    catalog = Catalog.open(catalog_url(daemon.storage, ""))
    try:
        summary = harvest_local(
            catalog, SiteStore(tmp_path / "trainer"), window_days=183, progress=False
        )
    finally:
        catalog.close()
    assert len(summary.added) == 1 and summary.skipped == []


def test_harvest_names_an_unknown_source_in_one_line(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(pacs_port=free_port(), start=False)
    result = harvest(daemon, "--dry-run")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("no [[sources]] entry named 'orthanc' (none configured)")

"""Prefetch of priors against Orthanc as the PACS: the daemon finds each bone-MR patient's CT.

Orthanc (started here, bonect declared in its ``DicomModalities`` for C-MOVE, C-FIND / C-MOVE /
C-GET allowed) is loaded with five patients' studies; each patient's bone MR is then sent to
``bonect-daemon start`` with a ``[[sources]]`` entry for Orthanc:

* A: a CT two months before the MR: retrieved, once;
* B: a CT two years before: not retrieved, the task says it is outside the window;
* C: a CT of another patient with a similar name: never retrieved;
* D: no CT: the search ends "none found";
* E: a scout and a real CT in one study: only the real CT is retrieved.

Then the trainer's harvest of the site ``local`` pairs exactly A and E.

Small synthetic series (tests/series_factory.py) keep the whole run short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from bonect.catalog import Catalog, catalog_url
from bonect.trainer.harvest import harvest_local
from bonect.trainer.sites import SiteStore, hashed_key
from dicom_peers import free_port, storescu
from e2e.conftest import PEERS_MISSING, Daemon, StartDaemon
from e2e.priors_support import Patient, QueryRetrievePacs, add_source, prior_series

pytestmark = pytest.mark.skipif(PEERS_MISSING, reason="needs Debian's dcmtk and orthanc")

MR_DATE = "20260301"


def make_patients(root: Path, pacs: QueryRetrievePacs) -> dict[str, Patient]:
    patients: dict[str, Patient] = {}
    ct_dates = {"A": "20260101", "B": "20240301", "C": None, "D": None, "E": "20260215"}
    for key, ct_date in ct_dates.items():
        pid, name = f"PRIOR-{key}", f"Doe^Jane{key}"
        mr, mr_uid = prior_series(
            root / key / "mr",
            modality="MR",
            patient_id=pid,
            name=name,
            study_date=MR_DATE,
            description="ZTE bone ZTE",
            study_uid=generate_uid(),
        )
        wanted: list[str] = []
        unwanted: list[str] = []
        if ct_date is not None:
            ct_study = generate_uid()
            ct, ct_uid = prior_series(
                root / key / "ct",
                modality="CT",
                patient_id=pid,
                name=name,
                study_date=ct_date,
                description="Head 1.0 H30s",
                study_uid=ct_study,
            )
            pacs.upload(ct)
            (wanted if key in ("A", "E") else unwanted).append(ct_uid)
            if key == "E":
                scout, scout_uid = prior_series(
                    root / key / "scout",
                    modality="CT",
                    patient_id=pid,
                    name=name,
                    study_date=ct_date,
                    description="Scout",
                    study_uid=ct_study,
                    slices=1,
                    localizer=True,
                )
                pacs.upload(scout)
                unwanted.append(scout_uid)
        if key == "C":  # another patient, a similar name, a CT in the window
            other, other_uid = prior_series(
                root / key / "other",
                modality="CT",
                patient_id="PRIOR-C2",
                name="Doe^JaneC",
                study_date="20260201",
                description="Head 1.0 H30s",
                study_uid=generate_uid(),
            )
            pacs.upload(other)
            unwanted.append(other_uid)
        patients[key] = Patient(mr, mr_uid, wanted, unwanted)
    return patients


def tasks(daemon: Daemon) -> dict[str, dict[str, Any]]:
    rows = daemon.catalog.rows(
        "SELECT mr_series_uid, state, reason, attempts, id FROM prior_tasks ORDER BY id"
    )
    keys = ("mr_series_uid", "state", "reason", "attempts", "id")
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


def retrieved(daemon: Daemon) -> list[tuple[str, str, str]]:
    return [
        (str(r[0]), str(r[1]), str(r[2]))
        for r in daemon.catalog.rows(
            "SELECT p.series_uid, p.state, t.mr_series_uid FROM prior_retrievals p "
            "JOIN prior_tasks t ON t.id = p.task_id"
        )
    ]


@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_priors_found_and_retrieved(
    tmp_path: Path, start_daemon: StartDaemon, retrieve: str
) -> None:
    pacs_port = free_port()
    daemon = start_daemon(pacs_port=pacs_port, start=False)
    with QueryRetrievePacs(
        tmp_path / "orthanc", dicom_port=pacs_port, bonect_port=daemon.port
    ) as pacs:
        patients = make_patients(tmp_path / "patients", pacs)
        add_source(daemon, pacs_port, retrieve=retrieve)
        daemon.start()
        for patient in patients.values():
            sent = storescu(daemon.port, patient.mr)
            assert sent.returncode == 0, sent.stderr

        final = ("done", "none_found", "failed")

        def all_ended() -> bool:
            found = tasks(daemon)
            return len(found) == len(patients) and all(t["state"] in final for t in found.values())

        daemon.wait_for(all_ended, "every prior search to end", timeout=120)
        found = tasks(daemon)
        states = {key: found[p.mr_series]["state"] for key, p in patients.items()}
        assert states == {
            "A": "done",
            "B": "none_found",
            "C": "none_found",
            "D": "none_found",
            "E": "done",
        }, found
        assert "outside the pairing window" in found[patients["B"].mr_series]["reason"]
        assert "no CT study" in found[patients["D"].mr_series]["reason"]
        # exactly the wanted series were asked for, once each, for the right MR
        rows = retrieved(daemon)
        expected = {(uid, "retrieved", p.mr_series) for p in patients.values() for uid in p.wanted}
        assert sorted(rows) == sorted(expected)
        for patient in patients.values():
            for uid in patient.wanted:

                def arrived(uid: str = uid) -> bool:
                    role = daemon.catalog.scalar(
                        "SELECT role FROM series WHERE series_uid = ?", (uid,)
                    )
                    return role == "keep_ct" and daemon.catalog.instance_count(uid) == 6

                daemon.wait_for(arrived, f"CT {uid} archived as keep_ct", timeout=60)
            for uid in patient.unwanted:
                assert daemon.catalog.instance_count(uid) == 0, uid
        assert daemon.stop() == 0
    audited = [
        json.loads(line)
        for line in (daemon.storage / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    retrieved_series = {
        e["ParticipantObjectIdentification"][1]["ParticipantObjectID"]
        for e in audited
        if e["Event"] == "prior_retrieved"
    }
    assert retrieved_series == {uid for p in patients.values() for uid in p.wanted}
    # the trainer's local site (what `bonect-trainer augment --site local` harvests first)
    # pairs exactly A and E, each with the CT that was retrieved for it
    catalog = Catalog.open(catalog_url(daemon.storage, ""))
    try:
        summary = harvest_local(
            catalog, SiteStore(tmp_path / "trainer"), window_days=183, progress=False
        )
    finally:
        catalog.close()
    paired = {
        hashed_key(patients[key].mr_series, patients[key].wanted[0])[:16] for key in ("A", "E")
    }
    assert set(summary.added) == paired, summary.lines()
    unpaired = {patients[key].mr_series for key in ("B", "C", "D")}
    assert {uid for uid, _ in summary.skipped} == unpaired

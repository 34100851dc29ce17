"""Prefetch of priors under faults, against Orthanc: the daemon killed in the middle of a
C-MOVE, and a live bone-MR series sent while a large retrieval runs.

Orthanc holds one patient's bone MR study date and a CT of 400 slices two months earlier; the
bone MR is sent to ``bonect-daemon start``, whose ``[[sources]]`` names Orthanc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_peers import free_port, storescu
from e2e.conftest import PEERS_MISSING, Daemon, StartDaemon
from e2e.priors_support import QueryRetrievePacs, add_source, prior_series

pytestmark = pytest.mark.skipif(PEERS_MISSING, reason="needs Debian's dcmtk and orthanc")

CT_SLICES = 400  # enough that the retrieval is still running when the test acts


def load_patient(root: Path, pacs: QueryRetrievePacs) -> tuple[list[Path], str]:
    """The PACS gets the patient's 400-slice CT; returns the bone MR to send and the CT's UID."""
    ct, ct_uid = prior_series(
        root / "ct",
        modality="CT",
        patient_id="PRIOR-K",
        name="Doe^Kay",
        study_date="20260101",
        description="Head 1.0 H30s",
        study_uid=generate_uid(),
        slices=CT_SLICES,
        size=32,
    )
    pacs.upload(ct)
    mr, _ = prior_series(
        root / "mr",
        modality="MR",
        patient_id="PRIOR-K",
        name="Doe^Kay",
        study_date="20260301",
        description="ZTE bone",
        study_uid=generate_uid(),
    )
    return mr, ct_uid


def retrieval_started(daemon: Daemon, ct_uid: str) -> bool:
    return daemon.catalog.instance_count(ct_uid) >= 20


def retrieved_once(daemon: Daemon, ct_uid: str) -> bool:
    rows = daemon.catalog.rows(
        "SELECT p.state, t.state FROM prior_retrievals p JOIN prior_tasks t ON t.id = p.task_id "
        "WHERE p.series_uid = ?",
        (ct_uid,),
    )
    role = daemon.catalog.scalar("SELECT role FROM series WHERE series_uid = ?", (ct_uid,))
    return (
        rows == [("retrieved", "done")]
        and role == "keep_ct"
        and daemon.catalog.instance_count(ct_uid) == CT_SLICES
    )


def test_sigkill_in_the_middle_of_a_c_move_then_every_instance_arrives_once(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pacs_port = free_port()
    daemon = start_daemon(pacs_port=pacs_port, start=False)
    with QueryRetrievePacs(
        tmp_path / "orthanc", dicom_port=pacs_port, bonect_port=daemon.port
    ) as pacs:
        mr, ct_uid = load_patient(tmp_path / "patient", pacs)
        add_source(daemon, pacs_port)
        daemon.start()
        assert storescu(daemon.port, mr).returncode == 0

        daemon.wait_for(lambda: retrieval_started(daemon, ct_uid), "the C-MOVE under way")
        daemon.kill()
        at_kill = daemon.catalog.instance_count(ct_uid)
        assert at_kill < CT_SLICES, "the C-MOVE ended before the kill: nothing was tested"

        daemon.start()  # the interrupted task is taken up again and the series moved again
        daemon.wait_for(lambda: retrieved_once(daemon, ct_uid), "the CT retrieved, once")
        files = list((daemon.storage / "archive" / "incoming").rglob("*.dcm"))
        ct_files = [f for f in files if ct_uid in str(f)]
        assert len(ct_files) == CT_SLICES  # each instance once, no leftovers
        assert not list((daemon.storage / "archive").rglob(".*.part"))
        assert daemon.stop() == 0


def test_a_live_series_is_received_and_converted_while_a_large_retrieval_runs(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pacs_port = free_port()
    daemon = start_daemon(pacs_port=pacs_port, start=False)
    with QueryRetrievePacs(
        tmp_path / "orthanc", dicom_port=pacs_port, bonect_port=daemon.port
    ) as pacs:
        mr, ct_uid = load_patient(tmp_path / "patient", pacs)
        live, live_uid = prior_series(
            tmp_path / "live",
            modality="MR",
            patient_id="LIVE-1",
            name="Roe^Live",
            study_date="20261206",
            description="ZTE bone",
            study_uid=generate_uid(),
        )
        add_source(daemon, pacs_port)
        daemon.start()
        assert storescu(daemon.port, mr).returncode == 0
        daemon.wait_for(lambda: retrieval_started(daemon, ct_uid), "the C-MOVE under way")

        sent = storescu(daemon.port, live)  # a modality, while the PACS is sending to us
        assert sent.returncode == 0, sent.stderr
        assert daemon.catalog.instance_count(ct_uid) < CT_SLICES, "retrieval over: untested"
        daemon.wait_for(lambda: daemon.catalog.job_states(live_uid) == ["done"], "live sCT sent")
        daemon.wait_for(lambda: retrieved_once(daemon, ct_uid), "the CT retrieved, once")
        assert "refusing" not in daemon.log_text()
        assert daemon.stop() == 0

"""Throughput, end to end: a 300-slice bone-MR series is stored at the PACS without the quiet timer.

The quiet time is 600 s, so the series can only settle early, on its association's release with
complete geometry. The test measures, and prints, the time from the release (``storescu``
returning) to the last sCT instance stored at Orthanc, and where that time went: settle wait
(job created - association released), queue wait (claimed - created) and the worker's stages
(read, convert, write, send) from the catalog's ``jobs.timings``. It asserts completion, not
speed: the numbers belong to the machine.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from bonect.phantom.cohort import write_patient
from bonect.phantom.generate import generate_case
from dicom_peers import OrthancServer, storescu
from e2e.conftest import (
    SLICES_300,
    Series,
    StartDaemon,
    assert_pacs_holds_exactly,
    done_job,
    needs_peers,
)

pytestmark = needs_peers

QUIET_SECONDS = 600


@pytest.fixture(scope="module")
def mr_300(tmp_path_factory: pytest.TempPathFactory) -> Series:
    """A bone-MR series of at least 300 contiguous slices (coarse in-plane, 66 x 65)."""
    case = generate_case(43, 0, acquisition=SLICES_300, ct_acquisition=None)
    written = write_patient(case, 43, tmp_path_factory.mktemp("phantom_300"))
    series = Series.of(sorted(written.mr_dicom.glob("*.dcm")))
    assert len(series) >= 300
    return series


def _utc(text: str) -> datetime:
    """A catalog time (naive UTC text in SQLite) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.slow
def test_300_slices_reach_the_pacs_without_waiting_for_the_quiet_timer(
    pacs: OrthancServer,
    start_daemon: StartDaemon,
    mr_300: Series,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port, sections={"settle": {"quiet_seconds": 600}})
    started = time.monotonic()
    sent = storescu(daemon.port, mr_300.files, timeout=600)
    released = time.monotonic()
    assert sent.returncode == 0, sent.stderr

    daemon.wait_delivered(pacs, mr_300, timeout=QUIET_SECONDS - 60)
    observed = time.monotonic() - released

    n = len(mr_300)
    assert_pacs_holds_exactly(pacs, daemon.catalog, [mr_300.series_uid], [n])
    job = done_job(daemon.catalog, mr_300.series_uid)
    ((first_received, last_received, released_at, settled_at),) = daemon.catalog.rows(
        "SELECT first_received_at, last_received_at, association_released_at, settled_at "
        "FROM series WHERE series_uid = ?",
        (mr_300.series_uid,),
    )
    assert released_at is not None
    settle_wait = (_utc(job["created_at"]) - _utc(released_at)).total_seconds()
    assert settle_wait < QUIET_SECONDS / 10  # settled on release + geometry, not on the timer
    queue_wait = (_utc(job["claimed_at"]) - _utc(job["created_at"])).total_seconds()
    last_stored = max(_utc(s["updated_at"]) for s in daemon.catalog.sends(job["id"]))
    to_last_stored = (last_stored - _utc(released_at)).total_seconds()
    stages = json.loads(job["timings"])
    receive = (_utc(last_received) - _utc(first_received)).total_seconds()

    report = {
        "slices": n,
        "storescu_seconds": round(released - started, 2),
        "receive_seconds_first_to_last_instance": round(receive, 2),
        "release_to_last_stored_seconds_catalog": round(to_last_stored, 2),
        "release_to_all_at_orthanc_seconds_observed": round(observed, 2),
        "settle_wait_seconds": round(settle_wait, 3),
        "queue_wait_seconds": round(queue_wait, 3),
        "stages_seconds": stages,
        "settled_at": settled_at,
    }
    (daemon.folder / "throughput.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nthroughput of {n} slices:")
        for key, value in report.items():
            print(f"  {key}: {value}")
    assert set(stages) >= {"read", "convert", "write", "send"}

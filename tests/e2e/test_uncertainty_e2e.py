"""End to end: a destination that asks for the uncertainty object gets it in the sCT's study.

``bonect-daemon start`` converts with the bundled phantom model in three planes (the classical
map has no planes, hence no spread) and sends to three Orthanc PACS: ``pacs`` asks for a
Segmentation, ``maps`` for a Parametric Map, ``plain`` for nothing (the default).
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from bonect.demo import bundled_model
from bonect.registry import read_manifest
from bonect.uncertainty import summary as uncertainty_summary
from bonect.uncertainty import threshold_hu
from dicom_peers import LOCALHOST, OrthancServer, have, storescu
from dicom_validation import dciodvfy_errors
from e2e.conftest import (
    PEERS_MISSING,
    DisposablePacs,
    Series,
    StartDaemon,
    done_job,
    synthetic_series,
    write_config,
)

pytestmark = pytest.mark.skipif(
    PEERS_MISSING or not have("dciodvfy") or not bundled_model().is_dir(),
    reason="needs Debian's dcmtk, orthanc, dicom3tools and the bundled model",
)

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture
def more_pacs(tmp_path: Path) -> Iterator[tuple[OrthancServer, OrthancServer]]:
    """Two more Orthanc PACS: ``maps`` and ``plain``."""
    with (
        DisposablePacs(tmp_path / "orthanc-maps") as maps,
        DisposablePacs(tmp_path / "orthanc-plain") as plain,
    ):
        yield maps, plain


def _objects(pacs: OrthancServer, sop_class: str, folder: Path) -> list[Path]:
    """The files of every instance of ``sop_class`` at ``pacs``, saved into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance in pacs.get("/instances?expand"):
        data = pacs.instance_file(instance["ID"])
        path = folder / f"{instance['ID']}.dcm"
        path.write_bytes(data)
        if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == sop_class:
            paths.append(path)
    return paths


def test_each_destination_gets_the_uncertainty_object_it_asked_for(
    pacs: OrthancServer,
    more_pacs: tuple[OrthancServer, OrthancServer],
    start_daemon: StartDaemon,
    coarse_mr: Series,
) -> None:
    maps, plain = more_pacs
    daemon = start_daemon(pacs_port=pacs.dicom_port, start=False)
    write_config(
        daemon.folder,
        port=daemon.port,
        pacs_port=pacs.dicom_port,
        sections={"converter": {"model": str(bundled_model()), "device": "cpu"}},
        pacs={"uncertainty": "segmentation"},
        destinations=[
            {
                "name": "maps",
                "ae_title": "PACS",
                "host": LOCALHOST,
                "port": maps.dicom_port,
                "uncertainty": "parametric_map",
            },
            {"name": "plain", "ae_title": "PACS", "host": LOCALHOST, "port": plain.dicom_port},
        ],
    )
    daemon.start()
    sent = storescu(daemon.port, coarse_mr.files)
    assert sent.returncode == 0, sent.stderr
    daemon.wait_for(
        lambda: (
            bool(daemon.catalog.job_states(coarse_mr.series_uid))
            and daemon.catalog.job_states(coarse_mr.series_uid)[-1] == "done"
        ),
        "the job to be done (every send stored)",
        timeout=300,
    )
    mr = pydicom.dcmread(coarse_mr.files[0], stop_before_pixels=True)
    job = done_job(daemon.catalog, coarse_mr.series_uid)

    # the job record: the share of the head above the bundled model's threshold
    share, threshold = job["uncertain_share"], job["uncertainty_threshold_hu"]
    expected = threshold_hu(read_manifest(bundled_model()))
    assert threshold == expected and 0.0 < share < 1.0, job
    summary = uncertainty_summary(share, expected)

    # every PACS holds the sCT, whose Image Comments say the share
    sct_uids = set()
    for server in (pacs, maps, plain):
        (series_id,) = synthetic_series(server)
        tags = server.series_tags(series_id)
        assert len(tags["Instances"]) == len(coarse_mr)
        header = pydicom.dcmread(
            BytesIO(server.instance_file(tags["Instances"][0])),
            stop_before_pixels=True,
        )
        assert header.ImageComments.endswith(f"Uncertainty: {summary}.")
        sct_uids.add(str(tags["SeriesInstanceUID"]))
    (sct_series_uid,) = sct_uids
    assert sct_series_uid == job["output_series_uid"]

    # pacs: one Segmentation, maps: one Parametric Map, plain: nothing more than the sCT
    (seg_path,) = _objects(pacs, SEGMENTATION, daemon.folder / "at-pacs")
    (pm_path,) = _objects(maps, PARAMETRIC_MAP, daemon.folder / "at-maps")
    assert len(pacs.series()) == len(maps.series()) == 2
    assert len(plain.series()) == 1 and len(plain.instances()) == len(coarse_mr)
    for path in (seg_path, pm_path):
        assert dciodvfy_errors(path) == [], path
        obj = pydicom.dcmread(path, stop_before_pixels=True)
        assert obj.StudyInstanceUID == mr.StudyInstanceUID  # the sCT's study
        assert obj.FrameOfReferenceUID == mr.FrameOfReferenceUID
        assert obj.SeriesInstanceUID != sct_series_uid
        (referenced,) = obj.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == sct_series_uid
        assert len(referenced.ReferencedInstanceSequence) == len(coarse_mr)

    # status and jobs say it too
    status = daemon.command("status")
    assert status.returncode == 0, status.stderr
    assert f"uncertainty: {summary}" in status.stdout, status.stdout
    jobs = daemon.command("jobs")
    assert jobs.returncode == 0, jobs.stderr
    assert f"unsure {100 * share:.1f} % > {expected:g} HU" in jobs.stdout, jobs.stdout

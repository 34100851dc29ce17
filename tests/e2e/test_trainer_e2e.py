"""The trainer end to end: a running daemon receives local MR + CT, `augment` learns from them.

External site: phantom patients of one contrast (ZTE), imported with ``bonect-trainer import``.
Local site: phantom patients of another technique (black-bone GRE), sent as DICOM MR and CT by
DCMTK ``storescu`` to ``bonect-daemon start``, harvested by ``augment`` from the daemon's catalog.
Then the promoted model is the one the running daemon uses for the next series.
Small sizes (32² model input, a few batches per epoch): this checks the plumbing and the
decisions, not the accuracy; the full-size run is reported in the README.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from bonect.phantom.cohort import WrittenPatient, write_patient
from bonect.phantom.generate import Acquisition, generate_case
from dicom_peers import OrthancServer, storescu
from e2e.conftest import Daemon, StartDaemon, needs_peers

TRAINER = Path(sys.executable).parent / "bonect-trainer"
COARSE = Acquisition("axial", (4.0, 4.0, 4.0))
LOCAL_SEED = 83

pytestmark = needs_peers


def trainer(daemon: Daemon, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRAINER), "--config", str(daemon.config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def series_rows(daemon: Daemon) -> list[tuple[str, str | None, str]]:
    path = daemon.storage / "catalog.sqlite3"
    if not path.exists():
        return []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(connection.execute("SELECT series_uid, role, settle_state FROM series"))
    finally:
        connection.close()


@pytest.fixture(scope="module")
def local_patients(tmp_path_factory: pytest.TempPathFactory) -> list[WrittenPatient]:
    out = tmp_path_factory.mktemp("local")
    return [
        write_patient(
            generate_case(LOCAL_SEED, i, contrast="gre", acquisition=COARSE, ct_acquisition=COARSE),
            LOCAL_SEED,
            out,
        )
        for i in range(4)
    ]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_augment_learns_from_what_the_daemon_received_and_the_daemon_uses_it(
    pacs: OrthancServer, start_daemon: StartDaemon, local_patients: list[WrittenPatient]
) -> None:
    daemon = start_daemon(
        pacs_port=pacs.dicom_port,
        sections={
            "trainer": {
                "batch_size": 16,
                "steps_per_epoch": 12,
                "folds": 2,
                "patience": 2,
                "device": "cpu",
                "threads": 1,
            }
        },
    )
    received, later = local_patients[:3], local_patients[3]
    for patient in received:
        assert patient.ct_dicom is not None
        for folder in (patient.mr_dicom, patient.ct_dicom):
            sent = storescu(daemon.port, _files(folder))
            assert sent.returncode == 0, sent.stderr
    daemon.wait_for(
        lambda: (
            sorted((str(role), state) for _, role, state in series_rows(daemon))
            == [("convert", "settled")] * 3 + [("keep_ct", "settled")] * 3
        ),
        "3 bone MR and 3 CT settled in the catalog",
    )

    imported = trainer(
        daemon,
        "import",
        "--site",
        "external-phantom",
        "--format",
        "phantom",
        "--patients",
        "3",
        "--seed",
        "7",
        "--contrast",
        "zte",
        "--mr-spacing",
        "4,4,4",
        "--ct-spacing",
        "4,4,4",
    )
    assert imported.returncode == 0, imported.stderr
    assert "site external-phantom: 3 pair(s) imported" in imported.stdout

    run = trainer(
        daemon,
        "augment",
        "--site",
        "local",
        "--external",
        "external-phantom",
        "--epochs",
        "3",
        "--image-size",
        "32",
    )
    (daemon.folder / "augment.log").write_text(run.stdout + run.stderr, encoding="utf-8")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "site local: 3 pair(s) imported" in run.stdout
    assert "3 new local pair(s); 3 local and 3 external pairs usable" in run.stdout
    report_path = Path(run.stdout.strip().splitlines()[-1].removeprefix("report: "))
    report = json.loads(report_path.with_suffix(".json").read_text(encoding="utf-8"))
    labels = [row["label"] for row in report["rows"]]
    assert labels == [
        "current: classical 1",
        "external only",
        "local only (CV)",
        "external + local (CV)",
    ]
    local_keys = set(report["new_pairs"])
    assert len(local_keys) == 3 and all(k.startswith("local/") for k in local_keys)
    for row in report["rows"]:  # every row is tested on every local patient, once
        assert sorted(r["pair_key"] for r in row["results"]) == sorted(local_keys)
    trainings = {row["label"]: row["trainings"] for row in report["rows"]}
    assert trainings == {
        "current: classical 1": 0,
        "external only": 1,
        "local only (CV)": 2,
        "external + local (CV)": 2,
    }
    means = report["means"]
    promoted = means["external + local (CV)"]["mae"] < means["current: classical 1"]["mae"]
    assert report["decision"].endswith("promoted" if promoted else "not promoted: it is not better")
    version = report["version"]
    registry = daemon.storage / "models"
    assert (registry / version / "report.md").is_file()
    assert (registry / version / "figure1_best.png").is_file()
    manifest = json.loads((registry / version / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["sites"] == ["external-phantom", "local"]
    assert len(manifest["training"]["patient_keys"]) == 6

    pairs = trainer(daemon, "pairs", "--site", "local", "--no-harvest")
    assert pairs.returncode == 0, pairs.stderr
    assert pairs.stdout.count("| usable |") == 3

    again = trainer(daemon, "augment", "--site", "local", "--external", "external-phantom")
    assert again.returncode == 0, again.stderr
    assert "no new local pairs" in again.stdout

    if not promoted:  # the physicist's way: promote by hand
        by_hand = trainer(daemon, "promote", version, "--reason", "test")
        assert by_hand.returncode == 0, by_hand.stderr
    assert (registry / "promoted").read_text(encoding="utf-8").strip() == version

    files = _files(later.mr_dicom)
    sent = storescu(daemon.port, files)
    assert sent.returncode == 0, sent.stderr
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    daemon.wait_for(
        lambda: any(j["state"] == "done" for j in daemon.catalog.jobs(uid)),
        "the next series converted",
    )
    (job,) = daemon.catalog.jobs(uid)
    assert str(job["model_version"]).startswith(version)

    # that MR came without a CT: it is listed, not paired, and costs nothing else
    listed = trainer(daemon, "pairs", "--site", "local")
    assert listed.returncode == 0, listed.stderr
    assert f"left out {uid}: no CT of the same patient within 183 days" in listed.stdout
    assert listed.stdout.count("| usable |") == 3

"""Every file of pydicom's own test corpus, sent by DCMTK ``storescu`` to a running daemon.

pydicom ships odd DICOM on purpose: big endian, deflated, RLE, JPEG baseline / lossless,
JPEG-LS, JPEG 2000, truncated pixel data, bad file meta, overlays, private tags, wrong VRs,
odd character sets, Enhanced MR. Each file that ``storescu`` agrees to send must get a DICOM
status from the node; the daemon must keep running; and a good bone-MR series sent after them
must still come back as sCT. With ``BONECT_CORPUS_TABLE=path`` the file -> status -> outcome
table is written there as Markdown (docs/reliability.md holds the last one).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_peers import LOCALHOST, OrthancServer, peer_env, peer_program, storescu
from e2e.conftest import PEERS_MISSING, Series, StartDaemon

pytestmark = pytest.mark.skipif(PEERS_MISSING, reason="needs Debian's dcmtk and orthanc")

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


@dataclass(frozen=True)
class Outcome:
    file: str
    sent: bool  # storescu agreed to send it
    status: str  # the node's answer, or why storescu did not send
    archived: bool


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in (".py", ".md"))


def sop_instance_uid(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return str(ds.SOPInstanceUID)
    except Exception:  # the corpus is broken on purpose
        return None


#: storescu proposes uncompressed syntaxes unless told; then it would decompress, or fail
PROPOSE = {
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEGLosslessSV1: "-xs",
    JPEGLossless: "-xs",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    RLELossless: "-xr",
    DeflatedExplicitVRLittleEndian: "-xd",
}


def propose_flags(path: Path) -> list[str]:
    """The storescu flag that proposes the file's own (compressed) transfer syntax."""
    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        flag = PROPOSE.get(str(meta.TransferSyntaxUID))
    except Exception:  # the corpus is broken on purpose
        flag = None
    return [flag] if flag else []


def send_one(port: int, path: Path) -> tuple[bool, str]:
    """storescu one file; (sent, the node's status or storescu's reason for not sending)."""
    done = subprocess.run(
        [str(peer_program("storescu")), "-v", "-R", *propose_flags(path), "-aet", "CORPUS",
         "-aec", "BONECT", LOCALHOST, str(port), str(path)],
        env=peer_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    answers = RESPONSE.findall(output)
    if answers:
        return True, answers[-1]
    errors = [
        line[3:]
        for line in output.splitlines()
        if line.startswith(("E: ", "F: ")) and "Store Failed, file" not in line
    ]
    return False, ("; ".join(errors) if errors else f"storescu exit {done.returncode}")[:120]


def table(outcomes: list[Outcome]) -> str:
    lines = ["| file | sent by storescu | status from bonect (or storescu's reason) | archived |"]
    lines.append("|---|---|---|---|")
    for o in outcomes:
        status = o.status.replace(f"{CORPUS}/", "").replace("|", "/")
        lines.append(f"| `{o.file}` | {'yes' if o.sent else 'no'} | {status} | {o.archived} |")
    return "\n".join(lines) + "\n"


def test_every_corpus_file_is_answered_and_the_node_goes_on(
    pacs: OrthancServer, start_daemon: StartDaemon, coarse_mr: Series
) -> None:
    daemon = start_daemon(pacs_port=pacs.dicom_port)
    outcomes = []
    for path in corpus_files():
        sent, status = send_one(daemon.port, path)
        uid = sop_instance_uid(path)
        query = "SELECT count(*) FROM instances WHERE sop_instance_uid = ?"
        archived = uid is not None and bool(daemon.catalog.scalar(query, (uid,)))
        outcomes.append(Outcome(str(path.relative_to(CORPUS)), sent, status, archived))
        assert daemon.process is not None and daemon.process.poll() is None, path

    if target := os.environ.get("BONECT_CORPUS_TABLE"):
        Path(target).write_text(table(outcomes), encoding="utf-8")
    sent = [o for o in outcomes if o.sent]
    assert len(sent) >= 100, f"only {len(sent)} of {len(outcomes)} files were sent"
    unanswered = [o for o in outcomes if o.sent and not o.status]
    assert unanswered == []
    # success means archived; a refusal means nothing kept
    assert all(o.archived for o in sent if o.status == "Success"), table(outcomes)

    assert storescu(daemon.port, coarse_mr.files).returncode == 0  # a good series after them
    daemon.wait_delivered(pacs, coarse_mr)
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.stop() == 0

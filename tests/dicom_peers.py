"""Real DICOM peers for tests: DCMTK ``storescu`` / ``echoscu`` and an Orthanc PACS.

Every process started here gets ``TCP_NODELAY=1`` in its environment: DCMTK and Orthanc leave
Nagle's algorithm on otherwise, which costs 10-80x on loopback (see FIELD-NOTES.md).

* :func:`storescu` (or ``dcmsend``) and :func:`echoscu` run the DCMTK tools against a port and
  return the completed process (exit code, output); they never raise on a DICOM failure. They
  are looked up on the PATH skipping Python scripts (:func:`peer_program`): pynetdicom installs
  Python apps of the same names into every virtual environment, and an activated one (this
  checkout's or another's) would otherwise put them first.
* :class:`OrthancServer` starts Debian's ``Orthanc`` on free DICOM and HTTP ports with its own
  storage and configuration in a temporary folder, and reads what it stored over its REST API.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

LOCALHOST = "127.0.0.1"


def peer_program(program: str) -> str | None:
    """The path of the real peer ``program`` on the PATH, skipping Python scripts (pynetdicom's
    same-named ``storescu``/``echoscu`` apps, in any virtual environment's ``bin``); or None."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(program, path=folder) if folder else None
        if found is not None and not _python_script(Path(found)):
            return found
    return None


def _python_script(path: Path) -> bool:
    with path.open("rb") as file:
        first = file.readline(256)
    return first.startswith(b"#!") and b"python" in first


def have(program: str) -> bool:
    """Whether ``program`` is on the PATH (tests skip when a peer is not installed)."""
    return peer_program(program) is not None


def _program(program: str) -> str:
    found = peer_program(program)
    if found is None:
        raise FileNotFoundError(f"{program} is not installed (scripts/install-system-deps)")
    return found


def peer_env() -> dict[str, str]:
    """The environment for a peer process: ours plus ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port that was free a moment ago (for processes that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def storescu(
    port: int,
    paths: Iterable[Path],
    *,
    called_ae: str = "BONECT",
    calling_ae: str = "STORESCU",
    host: str = LOCALHOST,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    program: str = "storescu",
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK ``storescu`` (one association); exit code 0 when all stored.

    ``program="dcmsend"`` sends them with DCMTK's ``dcmsend`` instead (the same leading
    arguments), which, unlike ``storescu``, keeps its association after a response timeout and
    sends the next file on it (with ``--no-halt``)."""
    args = [_program(program), "-aet", calling_ae, "-aec", called_ae, *extra_args, host]
    args.append(str(port))
    return subprocess.run(
        [*args, *(str(p) for p in paths)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def echoscu(
    port: int,
    *,
    called_ae: str = "BONECT",
    calling_ae: str = "ECHOSCU",
    host: str = LOCALHOST,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK ``echoscu``; exit code 0 when the peer answered."""
    return subprocess.run(
        [_program("echoscu"), "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class OrthancServer:
    """Orthanc as a test PACS: AET ``PACS``, accepting stores only from ``allowed_aets``.

    Use it as a context manager::

        with OrthancServer(tmp_path / "orthanc", allowed_aets=("BONECT",)) as pacs:
            send_files(paths, DestinationNode("PACS", "127.0.0.1", pacs.dicom_port), ...)
            assert len(pacs.instances()) == len(paths)
    """

    def __init__(
        self,
        folder: Path,
        *,
        aet: str = "PACS",
        allowed_aets: Sequence[str] = ("BONECT",),
        startup_timeout: float = 30.0,
    ) -> None:
        self.folder = folder
        self.aet = aet
        self.allowed_aets = tuple(allowed_aets)
        self.startup_timeout = startup_timeout
        self.dicom_port = 0
        self.http_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://{LOCALHOST}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The configuration the server runs with (written as JSON at start)."""
        return {
            "Name": "bonect-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                title.lower(): {
                    "AET": title,
                    "Host": LOCALHOST,
                    "Port": 104,
                    "AllowEcho": True,
                    "AllowStore": True,
                }
                for title in self.allowed_aets
            },
            "Plugins": [],
            "LuaScripts": [],
            "StorageCompression": False,
            "HttpDescribeErrors": True,
        }

    def start(self) -> OrthancServer:
        """Start Orthanc and wait until its REST API and DICOM port answer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        log = (self.folder / "orthanc.log").open("wb")
        self._process = subprocess.Popen(
            [_program("Orthanc"), str(config_path)],
            env=peer_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # A bounded poll of an external process's start-up, not a sleep in a test.
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            try:
                self.get("/system")
                with socket.create_connection((LOCALHOST, self.dicom_port), timeout=1.0):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        log = (self.folder / "orthanc.log").read_text(errors="replace")[-4000:]
        self.stop()
        raise RuntimeError(f"Orthanc did not start; its log ends with:\n{log}")

    def stop(self) -> None:
        """Stop Orthanc (terminate, then kill if it does not exit)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def get(self, path: str) -> Any:
        """GET ``path`` of the REST API and decode its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def instances(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return list(self.get("/instances"))

    def series(self) -> list[str]:
        """Orthanc's ids of every stored series."""
        return list(self.get("/series"))

    def studies(self) -> list[str]:
        """Orthanc's ids of every stored study."""
        return list(self.get("/studies"))

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UID of every stored instance (duplicates would show twice)."""
        expanded = self.get("/instances?expand")
        return [str(item["MainDicomTags"]["SOPInstanceUID"]) for item in expanded]

    def series_tags(self, series_id: str) -> dict[str, Any]:
        """The main DICOM tags of one series (and its instance ids under ``"Instances"``)."""
        info = self.get(f"/series/{series_id}")
        return {**info["MainDicomTags"], "Instances": info["Instances"]}

    def instance_file(self, instance_id: str) -> bytes:
        """The DICOM file Orthanc stored for an instance."""
        with urllib.request.urlopen(f"{self.url}/instances/{instance_id}/file", timeout=10) as r:
            return bytes(r.read())

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

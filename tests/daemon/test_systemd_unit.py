"""deploy/systemd/bonect-daemon.service: it parses without a warning and keeps its promises."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bonect.cli_boundary import EXIT_CONFIG
from bonect.daemon.cli import build_parser
from systemd_units import settings, verify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "bonect-daemon.service"
INSTALLED = "/opt/bonect/.venv/bin/bonect-daemon"


def test_the_unit_keeps_its_promises() -> None:
    service = settings(UNIT.read_text(encoding="utf-8"))["Service"]
    expected = {
        "Type": "simple",
        "User": "bonect",
        "Group": "bonect",
        "ExecStart": f"{INSTALLED} --config /etc/bonect/config.toml start",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/bonect",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "RestartPreventExitStatus": str(EXIT_CONFIG),
        "Environment": "PYTHONUNBUFFERED=1",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert 30 <= int(service["TimeoutStopSec"][0]) <= 600


def test_the_command_line_is_one_the_cli_accepts() -> None:
    service = settings(UNIT.read_text(encoding="utf-8"))["Service"]
    program, *args = shlex.split(service["ExecStart"][0])
    assert Path(program).name == "bonect-daemon"
    parsed = build_parser().parse_args(args)
    assert parsed.command == "start"
    assert parsed.config == Path("/etc/bonect/config.toml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    # verify checks that ExecStart exists and the user resolves: point them at this machine
    here = Path(sys.executable).parent / "bonect-daemon"
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED) == 1
    text = text.replace(INSTALLED, str(here))
    text = text.replace("\nUser=bonect\n", "\nUser=root\n").replace(
        "\nGroup=bonect\n", "\nGroup=root\n"
    )
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")
    code, stderr, complaints = verify([unit])
    assert code == 0, stderr
    assert complaints == []  # an unknown or misspelt key is only a warning: refuse it too


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_units_exposure_is_at_most_3() -> None:
    # what a hospital's security officer runs on the unit; 3.3 before the system-call filter
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout[-500:] + result.stderr[-500:]
    assert float(found.group(1)) <= 3.0
    service = settings(UNIT.read_text(encoding="utf-8"))["Service"]
    assert service["UMask"] == ["0077"]  # archive and catalog readable by the service user only

"""deploy/systemd/bonect-trainer.{service,timer}: they parse without a warning and keep promises."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from bonect.trainer.cli import build_parser
from systemd_units import settings, verify

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "deploy" / "systemd" / "bonect-trainer.service"
TIMER = REPO / "deploy" / "systemd" / "bonect-trainer.timer"
INSTALLED = "/opt/bonect/.venv/bin/bonect-trainer"


def test_the_service_is_a_sandboxed_oneshot_running_augment() -> None:
    service = settings(SERVICE.read_text(encoding="utf-8"))["Service"]
    expected = {
        "Type": "oneshot",
        "User": "bonect",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/bonect",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    program, *args = shlex.split(service["ExecStart"][0])
    assert program == INSTALLED
    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.site, parsed.config) == (
        "augment",
        "local",
        Path("/etc/bonect/config.toml"),
    )


def test_the_timer_runs_the_service_nightly() -> None:
    timer = settings(TIMER.read_text(encoding="utf-8"))
    assert timer["Timer"]["Unit"] == [SERVICE.name]
    assert timer["Timer"]["OnCalendar"] == ["*-*-* 02:30:00"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    here = Path(sys.executable).parent / "bonect-trainer"
    text = SERVICE.read_text(encoding="utf-8")
    assert text.count(INSTALLED) == 1
    text = text.replace(INSTALLED, str(here)).replace("\nUser=bonect\n", "\nUser=root\n")
    text = text.replace("\nGroup=bonect\n", "\nGroup=root\n")
    (tmp_path / SERVICE.name).write_text(text, encoding="utf-8")
    shutil.copy(TIMER, tmp_path / TIMER.name)
    code, stderr, complaints = verify([tmp_path / SERVICE.name, tmp_path / TIMER.name])
    assert code == 0, stderr
    assert complaints == []

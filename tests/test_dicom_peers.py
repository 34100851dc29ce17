"""The tests' own lookup of the real DICOM peers (DCMTK), past pynetdicom's same-named apps."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_peers import have, peer_program


@pytest.mark.skipif(not have("storescu"), reason="DCMTK is not installed")
def test_a_python_storescu_first_on_the_path_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom installs ``storescu`` into any virtual environment; an activated one from
    another checkout put it first and ten tests ran it instead of DCMTK's."""
    real = peer_program("storescu")
    assert real is not None
    venv = tmp_path / "other-venv" / "bin"
    venv.mkdir(parents=True)
    app = venv / "storescu"
    app.write_text("#!/opt/venv/bin/python\nfrom pynetdicom.apps.storescu import main\n")
    app.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv}:{Path(real).parent}")
    assert peer_program("storescu") == real
    monkeypatch.setenv("PATH", str(venv))
    assert peer_program("storescu") is None and not have("storescu")

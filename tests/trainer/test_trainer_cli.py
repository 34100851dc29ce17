"""`bonect-trainer`: bad input is one line on stderr and an exit code, and costs nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonect.trainer.cli import main


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[storage]\ndir = "var"\n', encoding="utf-8")
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_unknown_site_is_named_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["--config", str(config), "evaluate", "--site", "nowhere"]) == 1
    assert _error_line(capsys) == (
        "bonect-trainer: error: unknown site 'nowhere' (known: none yet); "
        "see `bonect-trainer sites`"
    )


def test_import_of_a_missing_folder_and_of_local_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    missing = tmp_path / "missing"
    args = ["--config", str(config), "import", "--site", "b", "--format", "nifti", str(missing)]
    assert main(args) == 1
    assert _error_line(capsys) == f"bonect-trainer: error: {missing}: not a folder"
    args = ["--config", str(config), "import", "--site", "local", "--format", "synthrad", "x"]
    assert main(args) == 1
    assert "harvested from the catalog" in _error_line(capsys)
    assert main(["--config", str(config), "sites"]) == 0
    assert "no sites yet" in capsys.readouterr().out


def test_promote_and_rollback_without_versions_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    (tmp_path / "var" / "models").mkdir(parents=True)
    assert main(["--config", str(config), "promote", "v1"]) == 1
    assert "no model version 'v1'" in _error_line(capsys)
    assert main(["--config", str(config), "rollback"]) == 1
    assert "nothing to roll back to" in _error_line(capsys)
    assert main(["--config", str(config), "models"]) == 0
    assert "the daemon uses the classical map" in capsys.readouterr().out


def test_a_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[trainer]\nimage_size = 30\nfolds = 1\n", encoding="utf-8")
    assert main(["--config", str(config), "sites"]) == 78
    err = capsys.readouterr().err
    assert "trainer.image_size: must be a multiple of 16" in err
    assert "trainer.folds: Input should be greater than or equal to 2" in err


def test_image_size_must_suit_the_u_net(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["augment", "--image-size", "40"])
    assert exit_info.value.code == 2
    assert "must be a multiple of 16, got 40" in capsys.readouterr().err

"""``evaluate --test-site``: train on one phantom family, test on another, against the classical
map; from the command line, on tiny sites."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bonect.trainer.cli import main

CONFIG = """\
[storage]
dir = "var"

[trainer]
registration_threshold = 0.0
image_size = 32
batch_size = 8
steps_per_epoch = 2
device = "cpu"
threads = 1
"""


def _run(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_train_on_one_family_and_test_on_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    phantom = ["import", "--format", "phantom", "--mr-spacing", "4,4,4", "--ct-spacing", "4,4,4"]
    assert _run(config, *phantom, "--site", "a", "--patients", "3", "--seed", "41") == 0
    assert _run(config, *phantom, "--site", "b", "--patients", "2", "--seed", "42",
                "--family", "wide") == 0  # fmt: skip
    capsys.readouterr()

    assert _run(config, "evaluate", "--site", "a", "--test-site", "b", "--epochs", "1") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| test pair |"))
    assert "U-Net (a): MAE (HU)" in header and "classical map: bone Dice" in header
    assert "ME (HU)" in header
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert {"b/PH0042001", "b/PH0042002", "**mean**"} <= set(rows)
    assert not any(key.startswith("a/") for key in rows)  # only test patients are scored
    ratio = re.search(r"U-Net MAE / classical MAE on 2 pair\(s\) of b: (\d+\.\d\d) ", out)
    assert ratio is not None and float(ratio.group(1)) > 0

    report = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    data = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["test_site"] == "b" and data["mae_ratio"] == pytest.approx(
        float(ratio.group(1)), abs=0.01
    )
    assert "b/PH0042002" in report.read_text(encoding="utf-8")


def test_the_test_site_is_never_a_training_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    assert _run(config, "evaluate", "--site", "a", "--test-site", "a") == 1
    err = capsys.readouterr().err.strip()
    assert err == "bonect-trainer: error: the test site 'a' must not be a training site"
    assert _run(config, "evaluate", "--site", "a", "--test-site", "b", "--folds", "3") == 1
    assert "--folds and --repeats are for cross-validation" in capsys.readouterr().err
    args = ["import", "--site", "p", "--format", "phantom", "--contrast", "petra"]
    assert _run(config, *args) == 1
    assert "classic phantom has no PETRA contrast" in capsys.readouterr().err

"""Tests of bonect.config: every section, relative paths, every error at once, where it is found."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bonect.config import Config, Destination, find_config, load_config
from bonect.errors import ConfigError

EVERY_SECTION = """
[node]
ae_title = "SCT_NODE"
host = "0.0.0.0"
port = 0

[security]
allowed_networks = ["10.0.0.0/8", "192.168.1.7"]

[storage]
dir = "data"

[catalog]
url = "postgresql://bonect@db/bonect"

[settle]
quiet_seconds = 2.5

[converter]
model = "classical"
planes = ["sagittal", "axial"]
device = "cpu"
batch_size = 4

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104

[[destinations]]
name = "lab"
ae_title = "PRINT3D"
host = "lab.example"
port = 11113
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_every_section_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "etc" / "config.toml", EVERY_SECTION))

    assert (config.node.ae_title, config.node.host, config.node.port) == ("SCT_NODE", "0.0.0.0", 0)
    assert config.catalog.url == "postgresql://bonect@db/bonect"
    assert config.settle.quiet_seconds == 2.5
    assert config.converter.model == "classical"
    assert config.converter.planes == ("sagittal", "axial")
    assert (config.converter.device, config.converter.batch_size) == ("cpu", 4)
    assert config.destinations == (
        Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104),
        Destination(name="lab", ae_title="PRINT3D", host="lab.example", port=11113),
    )


def test_relative_storage_dir_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "etc" / "config.toml", EVERY_SECTION)
    monkeypatch.chdir(write(tmp_path / "elsewhere" / "x", "").parent)

    config = load_config(Path("..") / "etc" / "config.toml")

    assert config.storage.dir == (tmp_path / "etc" / "data").resolve()
    assert config.model_registry == (tmp_path / "etc" / "data" / "models").resolve()
    assert load_config(path).storage.dir == config.storage.dir


def test_absolute_storage_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "var" / "bonect"
    config = load_config(write(tmp_path / "c.toml", f'[storage]\ndir = "{target.as_posix()}"\n'))
    assert config.storage.dir == target
    assert config.model_registry == target / "models"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.toml", ""))
    assert config.node.ae_title == "BONECT"
    assert config.converter.model == "auto"
    assert config.destinations == ()
    assert config.storage.dir == tmp_path.resolve() / "var"


def test_the_annotated_default_file_loads() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "config.toml")
    assert config.node.port == 11112
    assert [d.name for d in config.destinations] == ["pacs"]


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        """
[node]
port = -1

[converter]
planes = ["axial", "oblique"]

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 70000
colour = "red"

[extras]
x = 1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)

    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}:"
    problems = [line.strip() for line in lines[1:]]
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == [
        "converter.planes.1",
        "destinations.0.colour",
        "destinations.0.port",
        "extras",
        "node.port",
    ]
    assert "destinations.0.port: Input should be less than or equal to 65535" in problems
    assert "destinations.0.colour: Extra inputs are not permitted" in problems


def test_syntax_errors_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.toml", "[node\nport = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        Config().node.port = 1  # type: ignore[misc]


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path / "explicit.toml", "")
    from_env = write(tmp_path / "env.toml", "")
    work = tmp_path / "work"
    write(work / "config.toml", "")
    monkeypatch.chdir(work)
    monkeypatch.setenv("BONECT_CONFIG", str(from_env))

    assert find_config(explicit) == explicit
    assert find_config() == from_env
    monkeypatch.delenv("BONECT_CONFIG")
    assert find_config() == Path("config.toml")
    monkeypatch.chdir(tmp_path)
    system = Path("/etc/bonect/config.toml")
    assert find_config() == (system if system.is_file() else None)
    monkeypatch.setenv("BONECT_CONFIG", "")
    assert find_config() == (system if system.is_file() else None)

"""Tests of bonect.config: every section, relative paths, every error at once, where it is found."""

from __future__ import annotations

import subprocess
import sys
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
allowed_ae_titles = ["MRI1"]
tls_certificate = "tls/node.pem"
tls_key = "tls/node.key"
tls_ca = "/etc/ssl/hospital-ca.pem"

[storage]
dir = "data"
reserve_mb = 512
retention_days = 0

[catalog]
url = "postgresql://bonect@db/bonect"

[settle]
quiet_seconds = 2.5

[converter]
model = "classical"
planes = ["sagittal", "axial"]
device = "cpu"
batch_size = 4

[[rules.convert]]
series_description = "ZTE"

[rules.keep_ct]
enabled = false

[sender]
max_attempts = 3

[metrics]
port = 0
enabled = false

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
    assert config.security.allowed_networks == ("10.0.0.0/8", "192.168.1.7")
    assert config.security.allowed_ae_titles == ("MRI1",)
    assert (config.storage.reserve_mb, config.storage.retention_days) == (512, 0.0)
    assert [rule.series_description for rule in config.rules.convert] == ["ZTE"]
    assert config.rules.keep_ct.enabled is False
    assert config.sender.max_attempts == 3
    assert (config.metrics.port, config.metrics.enabled) == (0, False)
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

    etc = (tmp_path / "etc").resolve()
    assert config.storage.dir == etc / "data"
    assert config.model_registry == etc / "data" / "models"
    assert config.security.tls_certificate == etc / "tls" / "node.pem"
    assert config.security.tls_key == etc / "tls" / "node.key"
    assert config.security.tls_ca == Path("/etc/ssl/hospital-ca.pem")
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


def test_the_dataset_size_limit_is_read_and_checked(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "empty.toml", "")).storage.max_dataset_mb == 2048
    set_ = write(tmp_path / "set.toml", "[storage]\nmax_dataset_mb = 300\n")
    assert load_config(set_).storage.max_dataset_mb == 300
    for bad, message in [("0", "greater than or equal to 1"), ('"big"', "valid integer")]:
        path = write(tmp_path / "bad.toml", f"[storage]\nmax_dataset_mb = {bad}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        (problem,) = [line.strip() for line in str(info.value).splitlines()[1:]]
        assert problem.startswith("storage.max_dataset_mb: ") and message in problem, problem


def test_listening_beyond_loopback_needs_an_allow_list(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", '[node]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"security\.allowed_networks"):
        load_config(path)
    open_to_all = write(
        tmp_path / "open.toml", '[node]\nhost = "0.0.0.0"\n[security]\nallow_any_peer = true\n'
    )
    assert load_config(open_to_all).node.host == "0.0.0.0"


def test_security_problems_are_all_reported_with_their_keys(tmp_path: Path) -> None:
    """Two independent mistakes in [security]: both reported, each with its key."""
    path = write(
        tmp_path / "config.toml",
        '[security]\ntls_certificate = "node.pem"\nallowed_networks = ["10.0.0.0/33"]\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert any(p.startswith("security.tls_") and "go together" in p for p in problems), problems
    assert any(
        p.startswith("security.allowed_networks") and "10.0.0.0/33" in p for p in problems
    ), problems


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


def test_loading_the_config_imports_no_part_of_bonect() -> None:
    code = (
        "import sys, bonect.config; "
        "print([m for m in sys.modules if m.startswith(('sqlalchemy', 'torch', 'pynetdicom', "
        "'bonect.daemon', 'bonect.catalog', 'bonect.converter', 'bonect.trainer'))])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

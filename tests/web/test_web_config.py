"""The [web] section's rules, the password hashes, and the page served over a real socket."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import httpx2
import pytest

from bonect.cli_boundary import EXIT_CONFIG
from bonect.config import load_config
from bonect.daemon.cli import config_problems, main
from bonect.errors import ConfigError
from bonect.web.auth import hash_password, host_name, parse_basic, verify_password
from bonect.web.server import WebServer
from web.conftest import PASSWORD, USER, WebSite


def write(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndir = "var"\n\n[web]\n{web}\n', encoding="utf-8")
    return path


def test_the_web_defaults_are_off_and_on_loopback(tmp_path: Path) -> None:
    web = load_config(write(tmp_path, "")).web
    assert (web.enabled, web.host, web.port) == (False, "127.0.0.1", 8080)
    assert (web.actions, web.show_phi, web.password_file) == (False, False, None)


def test_beyond_loopback_needs_an_allow_list_and_a_password_file(tmp_path: Path) -> None:
    for web in (
        'host = "0.0.0.0"',
        'host = "0.0.0.0"\nallowed_hosts = ["10.0.0.0/8"]',
        'host = "0.0.0.0"\npassword_file = "pw"',
    ):
        with pytest.raises(ConfigError, match=r"web: host '0\.0\.0\.0' listens beyond"):
            load_config(write(tmp_path, web))
    config = load_config(
        write(tmp_path, 'host = "0.0.0.0"\nallowed_hosts = ["10.0.0.0/8"]\npassword_file = "pw"')
    )
    assert config.web.password_file == (tmp_path / "pw").resolve()  # relative to the file


def test_actions_need_a_password_file_and_bad_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web: actions = true needs password_file"):
        load_config(write(tmp_path, "actions = true"))
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, 'allowed_hosts = ["10.0.0.300/8"]\ntls_key = "k"\ncolour = 1'))
    message = str(error.value)
    assert "web.allowed_hosts" in message and "web.tls_key" in message
    assert "web.colour" in message


def test_check_config_refuses_an_unreadable_password_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'enabled = true\npassword_file = "missing"')
    problems = config_problems(load_config(path))
    assert [p for p in problems if p.startswith("web.password_file: ")], problems
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    exposed = write(tmp_path, 'enabled = true\nhost = "0.0.0.0"')
    assert main(["--config", str(exposed), "check-config"]) == EXIT_CONFIG


def test_password_hashes_bcrypt_and_pbkdf2() -> None:
    stored = hash_password("s3cret", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    crypt = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    assert verify_password("s3cret", crypt) and not verify_password("other", crypt)
    assert not verify_password("s3cret", "plain-text-is-never-accepted")
    assert not verify_password("s3cret", "pbkdf2_sha256$x$y$z")


def test_basic_credentials_and_host_headers_are_parsed() -> None:
    assert parse_basic("Basic dXNlcjpwYTpzcw==") == ("user", "pa:ss")
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Basic !!!") is None
    assert parse_basic(None) is None
    assert host_name("localhost:8080") == "localhost"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"


def test_the_server_serves_over_a_real_socket_and_stops(site: WebSite) -> None:
    config = site.config(port=0, password_file=site.password_file)
    server = WebServer.start(config, site.catalog, model_label=lambda: "test-model 1")
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        with httpx2.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/").status_code == 401
            page = client.get("/models", auth=(USER, PASSWORD))
            assert page.status_code == 200
            assert 'id="model-in-use">test-model 1<' in page.text
            assert client.get("/", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 401
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(server.url, timeout=5)

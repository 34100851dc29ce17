"""A throwaway PostgreSQL server for the catalog tests: one cluster per session, a schema per test.

The cluster is made with the server binaries (Debian's ``postgresql``, which
``scripts/install-system-deps`` installs) in a fresh temporary folder, listens on 127.0.0.1 on
a free port with its socket in that folder, runs with ``fsync`` off, and is deleted at the end.
``initdb`` refuses to run as root, so as root the server runs as the unprivileged user
``postgres`` (which the Debian package creates), else ``nobody``. Each test gets a schema of
its own (``search_path`` in the URL), which costs milliseconds where a database costs 0.3 s.

``BONECT_TEST_POSTGRES_URL`` (a SQLAlchemy URL of a database one may create schemas in) points
the tests at an existing server instead.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

URL_VARIABLE = "BONECT_TEST_POSTGRES_URL"
_OPTIONS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
_OPTIONS += " -c synchronous_commit=off -c max_connections=200"


def _bindir() -> Path | None:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _unprivileged() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def unavailable() -> str | None:
    """Why no PostgreSQL server can be had here, or None when one can."""
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL driver psycopg is not installed (pip install -e '.[test]')"
    if os.environ.get(URL_VARIABLE):
        return None
    if _bindir() is None:
        return "the PostgreSQL server is not installed (scripts/install-system-deps)"
    if os.geteuid() == 0 and _unprivileged() is None:
        return "running as root and no unprivileged user (postgres, nobody) to run the server"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running server (ours or the one of ``$BONECT_TEST_POSTGRES_URL``) and its admin URL."""

    url: str
    folder: Path | None = None  # None: not ours, never stopped
    bindir: Path | None = None
    user: pwd.struct_passwd | None = None  # who runs it (as root), else this process's user
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def start(cls) -> PostgresServer:
        """The server of ``$BONECT_TEST_POSTGRES_URL``, or a new cluster in a temporary folder."""
        if external := os.environ.get(URL_VARIABLE):
            return cls(external)
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries")
        folder = Path(tempfile.mkdtemp(prefix="bonect-pg-"))
        user = _unprivileged() if os.geteuid() == 0 else None
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
        server = cls("", folder, bindir, user)
        try:
            data = folder / "data"
            server._run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
            for _ in range(3):  # a free port may be taken before the server binds it
                port = _free_port()
                options = f"-p {port} -k {folder} {_OPTIONS}"
                started = server._run(
                    "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start",
                    check=False,
                )  # fmt: skip
                if started.returncode == 0:
                    server.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
                    return server
            log = (folder / "log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"PostgreSQL did not start:\n{log}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _run(
        self, program: str, *args: object, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a server program (initdb, pg_ctl) as the server's user."""
        if self.bindir is None:
            raise RuntimeError("not our server: nothing to run")
        user = self.user
        done = subprocess.run(
            [str(self.bindir / program), *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.folder,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done

    def schema_url(self) -> str:
        """A new, empty schema, as the URL of a database whose ``search_path`` is it."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {name}"))
        finally:
            engine.dispose()
        url = make_url(self.url).update_query_dict({"options": f"-csearch_path={name}"})
        return url.render_as_string(hide_password=False)

    def stop(self) -> None:
        """Stop and delete our cluster (a server of ``$BONECT_TEST_POSTGRES_URL`` is left)."""
        if self.folder is None:
            return
        try:
            if self.url:
                self._run("pg_ctl", "-D", self.folder / "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

"""What every benchmark shares: timing and medians, Markdown tables, the machine, the peers.

Benchmarks run from the repository root with the venv active (``python bench/<name>.py``).
They print Markdown and also write it to ``bench/out/<name>.md`` (ignored by git; or
``$BONECT_BENCH_OUT``); generated series and scratch space live in ``bench/.cache`` (or
``$BONECT_BENCH_CACHE``). The latest full-size tables are kept by hand in ``bench/README.md``.

Peers: DCMTK tools are found by asking each candidate on the PATH for ``--version``, because
pynetdicom installs console scripts of the same names (``storescu``, ``storescp``) into the
venv, which shadow DCMTK's once the venv is active. Every DCMTK and Orthanc process gets
``TCP_NODELAY=1`` (FIELD-NOTES.md: Nagle costs 10-80x on loopback).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CACHE = Path(os.environ.get("BONECT_BENCH_CACHE", BENCH / ".cache"))
OUT = Path(os.environ.get("BONECT_BENCH_OUT", BENCH / "out"))
LOCALHOST = "127.0.0.1"

sys.path.insert(0, str(REPO / "tests"))  # the tests' Orthanc harness (tests/dicom_peers.py)
from dicom_peers import OrthancServer, free_port  # noqa: E402

__all__ = ["free_port"]  # re-exported for the benchmarks


def scratch(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder under the bench cache (same disk as the cached series)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=CACHE)


def peer_env() -> dict[str, str]:
    """The environment of a DCMTK or Orthanc process: ours plus ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


# -- measuring ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Samples:
    """Repeated measurements of one quantity (seconds, or anything else)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return median(self.values) if self.values else float("nan")

    def spread(self) -> str:
        """``min-max`` of the runs, for the table's last column."""
        if not self.values:
            return "-"
        return f"{min(self.values):.3g}-{max(self.values):.3g}"


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...``; ``elapsed()`` is the seconds, frozen at exit."""
    started = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - started
    end.append(time.perf_counter())


def wait_until(predicate: Callable[[], bool], what: str, *, timeout: float = 60.0) -> float:
    """Poll an external process's state until ``predicate``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- reporting ---------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats get 3 significant digits unless already formatted."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, *, at_least: bool = True) -> str:
    met = value >= target if at_least else value <= target
    return f"{'met' if met else 'MISSED'} ({'≥' if at_least else '≤'} {target:g})"


def _first_line(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


@functools.cache
def dcmtk(tool: str) -> str:
    """The path of DCMTK's ``tool`` (not pynetdicom's script of the same name)."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = Path(folder) / tool
        usable = candidate.is_file() and os.access(candidate, os.X_OK)
        if usable and "$dcmtk" in _first_line([str(candidate), "--version"]):
            return str(candidate)
    raise FileNotFoundError(f"DCMTK's {tool} is not installed (scripts/install-system-deps)")


def machine() -> dict[str, str]:
    """Date, machine and versions, for the header of every report."""
    import pydicom
    import pynetdicom
    import torch

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        ram = f"{kb / 2**20:.1f} GiB"
    dcmtk_version = "not installed"
    with contextlib.suppress(FileNotFoundError):
        line = _first_line([dcmtk("storescu"), "--version"])
        dcmtk_version = line.split("storescu ")[-1].rstrip(" $")
    orthanc = "-"
    if shutil.which("Orthanc"):
        orthanc = _first_line(["Orthanc", "--version"]).removeprefix("Orthanc ")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {ram} RAM",
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": dcmtk_version,
        "orthanc": orthanc,
    }


def header(title: str, command: str) -> str:
    info = machine()
    lines = [
        f"### {title}",
        "",
        f"`{command}` — {info.pop('date')}, load average at start {info.pop('load')}",
        "",
    ]
    lines.append("; ".join(f"{k} {v}" for k, v in info.items()))
    return "\n".join(lines)


def publish(name: str, text: str) -> None:
    """Print the report and keep it as ``bench/out/<name>.md``."""
    print(text, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(text + "\n", encoding="utf-8")


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


# -- peers -------------------------------------------------------------------------------------


class Orthanc(OrthancServer):
    """Orthanc with temporary storage, killed at the end (a graceful stop takes seconds)."""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        super().stop()

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str,
    timeout: float = 900.0,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK ``storescu [options]`` of ``files`` on one association, ``TCP_NODELAY=1``."""
    return subprocess.run(
        [dcmtk("storescu"), *options, "-aet", "BONECT", "-aec", called_ae, LOCALHOST, str(port)]
        + [str(f) for f in files],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Process:
    """A long-running peer started as a subprocess, ended with SIGTERM then SIGKILL."""

    def __init__(self, args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None):
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ)
            )

    def wait_port(self, port: int, what: str, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{what} exited with {self.popen.returncode}:\n{tail}")
            return port_open(port)

        wait_until(ready, what, timeout=timeout)

    def stop(self, *, grace: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# -- the daemon --------------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def daemon_config(
    folder: Path,
    *,
    port: int,
    pacs_port: int,
    sections: Mapping[str, Mapping[str, object]] | None = None,
    rules: str = "",
) -> Path:
    """``folder/config.toml`` in the contract's shape (as tests/e2e/conftest.py writes it)."""
    config: dict[str, dict[str, object]] = {
        "node": {"ae_title": "BONECT", "host": LOCALHOST, "port": port},
        "storage": {"dir": "var", "reserve_mb": 1},
        "catalog": {"url": ""},
        "settle": {"quiet_seconds": 600},
        "converter": {"model": "classical", "device": "cpu"},
        "metrics": {"enabled": False},
    }
    for name, keys in (sections or {}).items():
        config.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in config.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
        lines.append("")
    lines.append(rules)
    lines += [
        "[[destinations]]",
        'name = "pacs"',
        'ae_title = "PACS"',
        f'host = "{LOCALHOST}"',
        f"port = {pacs_port}",
        "",
    ]
    path = folder / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_daemon(config: Path, port: int) -> Process:
    """``bonect-daemon --config <config> start``, waited for until it listens."""
    exe = Path(sys.executable).parent / "bonect-daemon"
    daemon = Process([str(exe), "--config", str(config), "start"], config.parent / "daemon.log")
    daemon.wait_port(port, "bonect-daemon", timeout=120)
    return daemon


def folder_bytes(files: Sequence[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def load_json(text: str) -> dict[str, Any]:
    """The last line of a child's stdout that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON result in:\n{text[-2000:]}")

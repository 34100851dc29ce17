"""``bonect-daemon`` as an operator runs it (check-config, status, jobs, retry, echo); config.toml.

The commands run as subprocesses of the installed console script, against a catalog filled
through the :class:`Catalog` API and an in-process pynetdicom Verification SCP on port 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bonect.catalog import Catalog, JobTimeline, catalog_url
from bonect.catalog.jobs import JobState
from bonect.catalog.peer_checks import record_check
from bonect.catalog.tables import Role, SendStatus
from bonect.cli_boundary import EXIT_CONFIG
from bonect.config import Config, ConverterConfig, StorageConfig, load_config
from bonect.daemon.cli import model_summary
from catalog.catalog_support import START, FakeClock, receive, record_priors, series_headers
from daemon.scp_support import Pki
from dicom_peers import free_port

DAEMON = Path(sys.executable).parent / "bonect-daemon"
REPO = Path(__file__).resolve().parents[2]
DONE, FAILED, WAITING = (f"1.2.826.0.1.3680043.8.498.{n}" for n in (100, 200, 300))


def run(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    options = [] if config is None else ["--config", str(config)]
    return subprocess.run(
        [str(DAEMON), *options, *args], capture_output=True, text=True, timeout=120, check=False
    )


def write_config(folder: Path, *, pacs_port: int = 4242, extra: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""
[node]
port = 11112

[storage]
dir = "var"

[metrics]
enabled = false

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
{extra}
""",
        encoding="utf-8",
    )
    return path


# -- config.toml, the annotated defaults -----------------------------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a [section] or of the items of an [[array of tables]], else None."""
    if get_origin(annotation) is tuple:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def undocumented(
    model: type[BaseModel], data: dict[str, Any], text: str, prefix: str = ""
) -> list[str]:
    """Keys of ``model`` neither set in ``data`` nor shown as a commented ``# key = ...``."""
    missing = []
    for name, info in model.model_fields.items():
        sub = _section_model(info.annotation)
        if name not in data and sub is not None and name in commented_sections(text):
            # an empty-by-default array of tables, shown as a commented example: each key too
            missing += undocumented(sub, {}, text, f"{prefix}{name}.")
            continue
        if name not in data:
            if not re.search(rf"^#\s*{name}\s*=", text, re.MULTILINE):
                missing.append(prefix + name)
            continue
        if sub is not None:
            value = data[name]
            for item in value if isinstance(value, list) else [value]:
                missing += undocumented(sub, item, text, f"{prefix}{name}.")
    return missing


def commented_sections(text: str) -> set[str]:
    """Arrays of tables shown only as a commented example (``# [[sources]]``)."""
    return set(re.findall(r"^#\s*\[\[(\w+)\]\]", text, re.MULTILINE))


def test_config_toml_shows_every_section_and_key() -> None:
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    shown = set(data) | commented_sections(text)
    assert shown == set(Config.model_fields)  # every section, nothing else
    assert undocumented(Config, data, text) == []


def test_config_toml_holds_the_defaults_and_loads() -> None:
    config = load_config(REPO / "config.toml")
    defaults = Config()
    for section in Config.model_fields:
        if section not in ("storage", "destinations"):
            assert getattr(config, section) == getattr(defaults, section), section
    assert config.storage.dir == REPO / "var"  # relative to the file
    assert [d.name for d in config.destinations] == ["pacs"]


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the config as ``section.key`` (items of arrays of tables without index)."""
    keys = []
    for name, info in model.model_fields.items():
        sub = _section_model(info.annotation)
        keys += [prefix + name] if sub is None else leaf_keys(sub, f"{prefix}{name}.")
    return keys


def readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end > 0 else len(readme)]


def test_the_readme_explains_every_key() -> None:
    """Each key in a table row of the README section of the part that reads it: the
    ``[trainer]`` keys under "The trainer", every other one under "The DICOM node"."""
    keys = leaf_keys(Config)
    assert len(keys) > 30
    node, trainer = readme_section("The DICOM node"), readme_section("The trainer")
    missing = [
        key
        for key in keys
        if f"| `{key}` |" not in (trainer if key.startswith("trainer.") else node)
    ]
    assert missing == []


def test_check_config_accepts_the_shipped_file() -> None:
    result = run(REPO / "config.toml", "check-config")
    assert result.returncode == 0, result.stderr
    assert "config.toml: OK" in result.stdout
    assert "BONECT on 127.0.0.1:11112" in result.stdout


# -- check-config and start on a bad config --------------------------------------------------


def test_check_config_lists_every_problem_and_exits_78(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, pacs_port=70000, extra='[settle]\nquiet_seconds = -1\ncolour = "red"\n'
    )
    result = run(config, "check-config")
    assert result.returncode == EXIT_CONFIG
    assert "destinations.0.port: Input should be less than or equal to 65535" in result.stderr
    assert "settle.quiet_seconds: Input should be greater than 0" in result.stderr
    assert "settle.colour: Extra inputs are not permitted" in result.stderr


def test_check_config_wants_dcmsend_on_the_path_for_the_dcmsend_transport(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[sender]\ntransport = "dcmsend"\n')
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [str(DAEMON), "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": str(empty)},
    )
    assert result.returncode == EXIT_CONFIG
    assert 'sender.transport: "dcmsend", but DCMTK\'s dcmsend is not on PATH' in result.stderr


def test_check_config_finds_missing_files(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        extra='[security]\ntls_certificate = "tls/node.pem"\ntls_key = "tls/node.key"\n'
        '[converter]\nmodel = "models/mine"\n',
    )
    result = run(config, "check-config")
    assert result.returncode == EXIT_CONFIG
    assert f"security.tls_certificate: {tmp_path}/tls/node.pem does not exist" in result.stderr
    assert f"security.tls_key: {tmp_path}/tls/node.key does not exist" in result.stderr
    assert f"converter.model: {tmp_path}/models/mine: not a model folder" in result.stderr


def test_check_config_loads_the_tls_files_and_says_what_the_node_accepts(
    tmp_path: Path, pki: Pki
) -> None:
    tls = (
        f'[security]\ntls_certificate = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
        f'tls_ca = "{pki.ca}"\nallowed_networks = ["10.1.2.0/24"]\n'
    )
    result = run(write_config(tmp_path, extra=tls), "check-config")
    assert result.returncode == 0, result.stderr
    assert f"DICOM TLS only (TLS 1.2+), client certificates signed by {pki.ca}" in result.stdout
    assert "peers: 10.1.2.0/24; calling AE titles: any" in result.stdout
    assert "limits: 10 associations, 64 connections waiting" in result.stdout

    mismatched = tls.replace(str(pki.server_key), str(pki.client_key))  # another key
    result = run(write_config(tmp_path, extra=mismatched), "check-config")
    assert result.returncode == EXIT_CONFIG
    assert "security.tls_certificate: cannot load it with its key and CA" in result.stderr

    plain = run(write_config(tmp_path), "check-config")
    assert "plain DICOM (no TLS)" in plain.stdout and "peers: loopback only" in plain.stdout


def test_check_config_needs_a_driver_for_the_catalog_url(tmp_path: Path) -> None:
    no_driver = write_config(tmp_path, extra='[catalog]\nurl = "postgresql+pg8000://db/x"\n')
    result = run(no_driver, "check-config")
    assert result.returncode == EXIT_CONFIG
    assert "catalog.url: no database driver (pg8000)" in result.stderr
    assert "pip install 'bonect[postgres]'" in result.stderr
    psycopg = write_config(tmp_path, extra='[catalog]\nurl = "postgresql://bonect@db/x"\n')
    assert run(psycopg, "check-config").returncode == 0  # no driver named: psycopg


def test_return_to_sender_and_destination_options_are_shown(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        extra='[sender]\nreturn_to_sender = true\n\n[[destinations]]\nname = "console"\n'
        'ae_title = "MRC40"\nhost = "10.0.0.9"\nport = 104\nreceives = "returns"\n'
        "rejection_notes = false\n",
    )
    result = run(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert "console MRC40@10.0.0.9:104 (returns only) (no rejection notes)" in result.stdout
    assert "the sCT also returns to the destination whose AE title sent the MR" in result.stdout
    bad = write_config(tmp_path, extra='[[destinations]]\nname = "x"\nae_title = "X"\n'
                       'host = "h"\nport = 1\nreceives = "some"\n')  # fmt: skip
    refused = run(bad, "check-config")
    assert refused.returncode == EXIT_CONFIG
    assert "destinations.1.receives: Input should be 'all' or 'returns'" in refused.stderr


def test_start_on_a_bad_config_exits_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[node]\nae_title = "A_TITLE_FAR_TOO_LONG"\n')
    result = run(config, "start")
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "config error" in result.stderr


def test_start_accepts_config_after_the_command(tmp_path: Path) -> None:
    bad = write_config(tmp_path, pacs_port=0)
    result = run(None, "start", "--config", str(bad))
    assert result.returncode == EXIT_CONFIG
    assert "destinations.0.port" in result.stderr


def test_no_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = run(tmp_path / "missing.toml", "check-config")
    assert result.returncode == EXIT_CONFIG
    assert "missing.toml" in result.stderr


# -- status, jobs, retry ---------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A config whose catalog holds a done, a failed and a waiting job."""
    config = write_config(tmp_path)
    catalog = Catalog.open(catalog_url(tmp_path / "var", ""))
    clock = FakeClock()
    ids = {}
    try:
        for uid in (DONE, FAILED, WAITING):
            receive(catalog, series_headers(3, uid), clock.now(), association_id=uid)
            clock.advance(1)
            catalog.association_released(uid, clock.now())  # released 1 s after the last one
            clock.advance(1)
            settled = catalog.settle_series(uid, revision=3, role=Role.CONVERT, now=clock.now())
            assert settled is not None and settled.job_id is not None
            ids[uid] = settled.job_id
        clock.advance(3)  # the first job, queued at 2 s, waited 7 s
        done = catalog.claim_next(clock.now(), worker_id="host:1:0")
        assert done is not None
        clock.advance(20)
        timings = {"read": 0.5, "convert": 12.0, "write": 1.5, "send": 6.0}
        catalog.finish(done, now=clock.now(), timings=timings)
        failed = catalog.claim_next(clock.now(), worker_id="host:1:0")
        assert failed is not None
        catalog.fail(failed, "missing slices: about 2 slices seem missing", now=clock.now())
        waiting = catalog.claim_next(clock.now(), worker_id="host:1:0")
        assert waiting is not None
        converted = catalog.mark_converted(
            waiting, output_dir=tmp_path / "out", model_version="classical 1", now=clock.now()
        )
        uid = f"{WAITING}.9"
        catalog.plan_sends(converted, [(uid, tmp_path / "out" / "x.dcm")], ["pacs"], now=START)
        catalog.record_send(
            converted,
            uid,
            "pacs",
            status=SendStatus.PENDING,
            now=clock.now(),
            error="association rejected",
        )
        catalog.retry_later(
            converted,
            at=clock.now() + timedelta(seconds=40),
            reason="1 instance(s) not yet stored",
            now=clock.now(),
        )
    finally:
        catalog.close()
    return config, {"done": ids[DONE], "failed": ids[FAILED], "waiting": ids[WAITING]}


def test_status_shows_queue_model_timings_and_errors(filled: tuple[Path, dict[str, int]]) -> None:
    config, ids = filled
    result = run(config, "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "jobs: queued 0, running 0, converted 0, sending 0, retry_wait 1, done 1, failed 1" in out
    )
    assert "model: auto: classical (no model promoted)" in out
    assert f"last done: job {ids['done']} (series {DONE})" in out
    assert (
        "receive 0.0 s, settle wait 1.0 s, queue wait 7.0 s, read 0.5 s, convert 12.0 s, "
        "write 1.5 s, send 6.0 s, release to done 28.0 s" in out
    )
    assert f"job {ids['failed']} failed" in out
    assert "missing slices: about 2 slices seem missing" in out
    assert f"job {ids['waiting']} retries at" in out
    assert "1 instance(s) not yet stored (pacs: association rejected)" in out
    assert "C-ECHO" not in out  # no peer was echoed yet


def test_status_names_a_peer_whose_last_c_echo_failed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    catalog = Catalog.open(catalog_url(tmp_path / "var", ""))
    try:
        record_check(catalog, "destination", "pacs", ok=False, message="no answer", now=START)
        record_check(catalog, "source", "old", ok=True, message="success", now=START)
    finally:
        catalog.close()
    out = run(config, "status").stdout
    assert "  destination pacs: C-ECHO " in out and out.rstrip().endswith("no answer")
    assert "source old" not in out  # answered: nothing to say


def test_status_and_priors_show_the_prior_searches(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "priors").returncode != 0  # no catalog yet: one clear line
    catalog = Catalog.open(catalog_url(tmp_path / "var", ""))
    try:
        assert run(config, "priors").stdout.strip().startswith("no prior searches")
        assert "prior searches" not in run(config, "status").stdout  # no [[sources]]: quiet
        ids = record_priors(catalog, FakeClock().now())
    finally:
        catalog.close()
    status = run(config, "status")
    assert status.returncode == 0, status.stderr
    assert "prior searches: done 1, failed 1, none_found 1" in status.stdout
    assert "prior retrievals: retrieved 1 (6 instances)" in status.stdout
    assert f"prior search {ids['failed']} (pacs) failed: refused" in status.stdout

    listed = run(config, "priors")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    firsts = [line.split()[0] for line in lines if not line.lstrip().startswith("CT ")]
    assert firsts == [str(ids[s]) for s in ("failed", "none_found", "done")]
    assert "CT 1.2.3.4 (20260101, Head 1.0): retrieved, 6/6 instances" in listed.stdout
    (line,) = run(config, "priors", "--state", "none_found").stdout.splitlines()
    assert line.split()[:3] == [str(ids["none_found"]), "none_found", "pacs"]
    assert line.endswith("no CT study")


def test_jobs_lists_newest_first_and_filters_by_state(filled: tuple[Path, dict[str, int]]) -> None:
    config, ids = filled
    every = run(config, "jobs")
    assert every.returncode == 0, every.stderr
    listed = [int(line.split()[0]) for line in every.stdout.splitlines()]
    assert listed == sorted(ids.values(), reverse=True)
    failed = run(config, "jobs", "--state", "failed")
    (line,) = failed.stdout.splitlines()
    assert line.split()[:2] == [str(ids["failed"]), "failed"]
    assert line.endswith("missing slices: about 2 slices seem missing")
    assert run(config, "jobs", "--state", "queued").stdout.strip() == "no jobs"


def test_retry_one_job_then_every_failed_job(filled: tuple[Path, dict[str, int]]) -> None:
    config, ids = filled
    not_failed = run(config, "retry", str(ids["done"]))
    assert not_failed.returncode == 1
    assert f"job {ids['done']} is done: only a failed job can be retried" in not_failed.stderr

    again = run(config, "retry", str(ids["failed"]))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"job {ids['failed']} queued again"
    catalog = Catalog.open(catalog_url(config.parent / "var", ""))
    try:
        job = catalog.job(ids["failed"])
        assert job is not None and job.state == JobState.QUEUED and job.attempts == 0
        catalog.fail(job.id, "again", now=job.not_before)
    finally:
        catalog.close()
    every = run(config, "retry", "--failed")
    assert every.stdout.strip() == f"queued again: {ids['failed']}"
    assert run(config, "retry", "--failed").stdout.strip() == "no failed jobs"


def test_status_and_jobs_show_the_generations_of_a_reopened_series(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    catalog = Catalog.open(catalog_url(tmp_path / "var", ""))
    clock = FakeClock()
    ids = []
    try:
        for generation in (1, 2):
            if generation == 2:  # one more slice re-opens the settled series
                receive(catalog, series_headers(4, DONE)[3:], clock.now(), association_id="b")
            else:
                receive(catalog, series_headers(3, DONE), clock.now(), association_id="a")
            (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
            settled = catalog.settle_series(
                DONE, revision=read.revision, role=Role.CONVERT, now=clock.now()
            )
            assert settled is not None and settled.job_id is not None
            job = catalog.claim_next(clock.now(), worker_id="host:1:0")
            assert job is not None and job.generation == generation
            catalog.finish(job, now=clock.advance(5))
            ids.append(job.id)
        # a retry of a superseded (or done) generation is refused
        receive(catalog, series_headers(5, DONE)[4:], clock.advance(1), association_id="c")
        (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
        catalog.settle_series(DONE, revision=read.revision, role=Role.CONVERT, now=clock.now())
        third = catalog.claim_next(clock.now(), worker_id="host:1:0")
        assert third is not None
        catalog.fail(third, "converter crashed", now=clock.now())
        receive(catalog, series_headers(6, DONE)[5:], clock.advance(1), association_id="d")
        (read,) = catalog.series_to_settle(clock.advance(61), quiet_seconds=60)
        catalog.settle_series(DONE, revision=read.revision, role=Role.CONVERT, now=clock.now())
    finally:
        catalog.close()

    jobs = run(config, "jobs")
    assert jobs.returncode == 0, jobs.stderr
    lines = {int(line.split()[0]): line for line in jobs.stdout.splitlines()}
    assert "  gen 2  " in lines[ids[1]] and "replaced" not in lines[ids[1]]
    assert "  gen 1  " in lines[ids[0]] and lines[ids[0]].endswith("replaced by generation 2")
    assert "  superseded  " in lines[third.id] and "  gen 3  " in lines[third.id]
    assert lines[third.id].endswith("superseded by job 4 (generation 4)")
    status = run(config, "status")
    assert f"last done: job {ids[1]} (series {DONE}), generation 2" in status.stdout
    assert "superseded 1" in status.stdout
    refused = run(config, "retry", str(third.id))
    assert refused.returncode == 1
    assert f"job {third.id} is superseded: only a failed job can be retried" in refused.stderr


def test_status_before_the_daemon_ever_ran(tmp_path: Path) -> None:
    result = run(write_config(tmp_path), "status")
    assert result.returncode == 1
    assert "the daemon has not run yet" in result.stderr
    assert not (tmp_path / "var").exists()  # an operator's command creates nothing


def test_timeline_without_a_release_counts_from_the_last_instance() -> None:
    start = START
    timeline = JobTimeline(
        job_id=1,
        series_uid=DONE,
        attempts=1,
        model_version=None,
        first_received_at=start,
        last_received_at=start + timedelta(seconds=2),
        released_at=None,
        created_at=start + timedelta(seconds=62),
        claimed_at=start + timedelta(seconds=63),
        finished_at=start + timedelta(seconds=70),
        timings={"convert": 5.0},
    )
    assert timeline.stages() == [
        ("receive", 2.0),
        ("settle wait", 60.0),
        ("queue wait", 1.0),
        ("convert", 5.0),
        ("last instance to done", 68.0),
    ]


def test_the_model_line_names_what_the_registry_promotes(tmp_path: Path, tiny_model: Path) -> None:
    config = Config(storage=StorageConfig(dir=tmp_path))
    assert model_summary(config) == "auto: classical (no model promoted)"
    registry = config.model_registry
    registry.mkdir()
    shutil.copytree(tiny_model, registry / "tiny-0")
    (registry / "promoted").write_text("tiny-0\n", encoding="utf-8")
    assert model_summary(config) == "auto: tiny 0 (folder tiny-0, NOT FOR CLINICAL USE)"
    (registry / "promoted").write_text("gone\n", encoding="utf-8")
    assert model_summary(config).startswith("auto: promoted 'gone' is not a model folder")
    named = Config(
        storage=StorageConfig(dir=tmp_path), converter=ConverterConfig(model="classical")
    )
    assert model_summary(named) == "classical"


# -- echo ------------------------------------------------------------------------------------


@pytest.fixture
def verification_scp() -> Iterator[int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    yield int(server.server_address[1])
    ae.shutdown()


def test_echo_a_destination(tmp_path: Path, verification_scp: int) -> None:
    config = write_config(
        tmp_path,
        pacs_port=verification_scp,
        extra=f'[[destinations]]\nname = "down"\nae_title = "DOWN"\nhost = "127.0.0.1"\n'
        f"port = {free_port()}\n",
    )
    ok = run(config, "echo", "pacs")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"C-ECHO pacs (PACS@127.0.0.1:{verification_scp}): success"
    every = run(config, "echo")  # every destination; one is down
    assert every.returncode == 1
    lines = every.stdout.splitlines()
    assert lines[0].endswith("success")
    assert lines[1].startswith("C-ECHO down (DOWN@127.0.0.1:") and lines[1].endswith("FAILED")
    unknown = run(config, "echo", "nowhere")
    assert unknown.returncode == 1
    assert "no destination 'nowhere' (known: pacs, down)" in unknown.stderr

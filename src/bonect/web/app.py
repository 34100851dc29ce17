"""The status page's Starlette application: its routes, the context they share, the templates.

:func:`build_app` makes the app from the config, the daemon's catalog and, when the daemon runs
it, a callable naming the model in use. Pages are rendered on the server from Jinja2 templates
(package data in ``templates/``); there is no JavaScript. Everything is read-only except the two
model actions, which need ``[web] actions = true``, a login and the form's CSRF token.

Pages: ``/`` the queue and the last jobs (reloads itself), ``/jobs/{id}`` one job with its
pictures, ``/models`` the model in use and every version, ``/destinations`` sends, disk and
catalog. No patient name or ID appears unless ``[web] show_phi = true``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, cast

import jinja2
import pydicom
from pydicom.errors import InvalidDicomError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from bonect import __version__, registry
from bonect.audit import AuditTrail, audit_trail
from bonect.catalog import peer_checks, web_queries
from bonect.catalog import priors as prior_store
from bonect.catalog.jobs import JobState
from bonect.catalog.queue import Catalog
from bonect.catalog.tables import SendStatus
from bonect.config import Config
from bonect.errors import BonectError
from bonect.uncertainty import DEFAULT_THRESHOLD_HU
from bonect.web.auth import USER_KEY, AccessMiddleware, Gate
from bonect.web.formatting import FILTERS
from bonect.web.models_view import figure_path, models_view
from bonect.web.thumbnails import (
    PLANES,
    UNCERTAINTY_FILE,
    Pictures,
    ThumbnailCache,
    render_job,
)

logger = logging.getLogger(__name__)

PICTURED: Final = frozenset({JobState.CONVERTED, JobState.SENDING, JobState.DONE})
PRIOR_TASKS_SHOWN: Final = 20  # the latest prior searches on the destinations page


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WebContext:
    """What every page handler needs; one per app, kept in ``app.state.web``."""

    config: Config
    catalog: Catalog
    gate: Gate
    templates: Jinja2Templates
    thumbnails: ThumbnailCache
    model_label: Callable[[], str] | None
    clock: Callable[[], datetime]
    audit: AuditTrail | None = None  # promotions and roll backs made here


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bonect.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return Jinja2Templates(env=env)


def _web(request: Request) -> WebContext:
    return cast(WebContext, request.app.state.web)


def _page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    web = _web(request)
    user = request.scope.get(USER_KEY)
    settings = web.config.web
    common = {
        "node": web.config.node.ae_title,
        "version": __version__,
        "now": web.clock(),
        "user": user,
        "show_phi": settings.show_phi,
        "actions": settings.actions and user is not None,
        "csrf": web.gate.csrf_token(user) if user is not None else "",
        "refresh": 0,
    }
    return web.templates.TemplateResponse(request, name, {**common, **context}, status)


def queue_page(request: Request) -> Response:
    web = _web(request)
    settings = web.config.web
    # the rows first, the counts after: a job that ends between the two reads is then counted
    # in its final state, never shown final in its row and still running in the counts
    jobs = web_queries.recent_jobs(web.catalog, settings.jobs_shown)
    states = web_queries.state_ages(web.catalog)
    return _page(
        request,
        "queue.html",
        states=states,
        jobs=jobs,
        oldest_waiting=web.catalog.oldest_waiting_since(),
        refresh=settings.refresh_seconds,
        title="Queue",
    )


def _pictures(web: WebContext, row: web_queries.JobRow) -> Pictures | None:
    if row.state not in PICTURED or row.output_dir is None:
        return None
    output = row.output_dir

    def render() -> Pictures:
        mr = [i.path for i in web.catalog.instances(row.series_uid)]
        sct = sorted(output.glob("CT_*.dcm")) if output.is_dir() else []
        unsure = row.uncertainty
        threshold = DEFAULT_THRESHOLD_HU if unsure is None else unsure.threshold_hu
        return render_job(mr, sct, output / UNCERTAINTY_FILE, threshold_hu=threshold)

    return web.thumbnails.get((row.id, row.updated_at.isoformat()), render)


def _patient_name(row: web_queries.JobRow, web: WebContext) -> str:
    """The PatientName of the series' first file (only called with show_phi)."""
    instances = web.catalog.instances(row.series_uid)
    if not instances:
        return ""
    try:
        header = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
    except (OSError, ValueError, InvalidDicomError):
        return ""
    return str(header.get("PatientName", ""))


def job_page(request: Request) -> Response:
    web = _web(request)
    row = web_queries.job_row(web.catalog, int(request.path_params["job_id"]))
    if row is None:
        return _page(request, "missing.html", 404, title="No such job", what="job")
    sends = web.catalog.sends(row.id)
    destinations = sorted({s.destination for s in sends})
    instances: dict[str, dict[str, Any]] = {}
    for send in sends:
        instances.setdefault(send.sop_instance_uid, {})[send.destination] = send
    return _page(
        request,
        "job.html",
        title=f"Job {row.id}",
        job=row,
        destinations=destinations,
        instances=instances,
        pictures=_pictures(web, row),
        planes=PLANES,
        uncertain_hu=DEFAULT_THRESHOLD_HU,
        patient_name=_patient_name(row, web) if web.config.web.show_phi else "",
    )


def thumbnail(request: Request) -> Response:
    web = _web(request)
    row = web_queries.job_row(web.catalog, int(request.path_params["job_id"]))
    kind, plane = request.path_params["kind"], request.path_params["plane"]
    pictures = None if row is None else _pictures(web, row)
    png = None if pictures is None else pictures.png.get(kind, {}).get(plane)
    if png is None:
        return PlainTextResponse("no such picture", 404)
    return Response(png, media_type="image/png")


def models_page(request: Request) -> Response:
    web = _web(request)
    label = web.model_label() if web.model_label is not None else None
    return _page(request, "models.html", title="Models", view=models_view(web.config, label))


def model_figure(request: Request) -> Response:
    web = _web(request)
    path = figure_path(
        web.config.model_registry, request.path_params["version"], request.path_params["figure"]
    )
    if path is None:
        return PlainTextResponse("no such figure", 404)
    return Response(path.read_bytes(), media_type="image/png")


async def model_action(request: Request) -> Response:
    """``POST /models/promote`` (form: version) and ``/models/rollback``: login, CSRF, flag."""
    web = _web(request)
    user = request.scope.get(USER_KEY)
    if not web.config.web.actions or user is None:
        return PlainTextResponse("actions are off: [web] actions = false (or no login)", 403)
    form = await request.form()
    if not web.gate.csrf_ok(user, str(form.get("csrf", ""))):
        return PlainTextResponse("stale or missing form token: reload the page", 403)
    folder = web.config.model_registry
    action = request.path_params["action"]
    if action not in ("promote", "rollback"):
        return PlainTextResponse(f"no action {action!r}", 404)
    try:
        if action == "promote":
            version = str(form.get("version", ""))
            if version not in {v.name for v in registry.versions(folder)}:
                return PlainTextResponse(f"no model version {version!r}", 404)
            registry.promote(
                folder,
                version,
                reason=f"promoted on the status page by {user}",
                audit=web.audit,
            )
        else:
            version = registry.rollback(folder, audit=web.audit)
    except BonectError as exc:
        return PlainTextResponse(str(exc), 409)
    logger.info("web: %s %s by %s", action, version, user)
    return RedirectResponse("/models", status_code=303)


def destinations_page(request: Request) -> Response:
    web = _web(request)
    config = web.config
    backlog = {b.destination: b for b in web_queries.send_backlog(web.catalog)}
    configured = {d.name for d in config.destinations}
    storage = config.storage.dir
    usage = shutil.disk_usage(storage if storage.exists() else Path("/"))
    return _page(
        request,
        "destinations.html",
        title="Destinations",
        destinations=config.destinations,
        backlog=backlog,
        unknown=[b for name, b in backlog.items() if name not in configured],
        disk=usage,
        reserve=config.storage.reserve_mb * 1024 * 1024,
        storage=storage,
        health=web_queries.catalog_health(web.catalog),
        oldest_waiting=web.catalog.oldest_waiting_since(),
        statuses=list(SendStatus),
        sources=config.sources,
        echoes=peer_checks.last_checks(web.catalog),
        prior_counts=prior_store.counts(web.catalog),
        prior_tasks=[
            (task, prior_store.retrievals(web.catalog, task.id))
            for task in prior_store.recent_tasks(web.catalog, limit=PRIOR_TASKS_SHOWN)
        ],
    )


def stylesheet(request: Request) -> Response:
    del request
    css = resources.files("bonect.web").joinpath("templates/style.css").read_text("utf-8")
    return Response(css, media_type="text/css")


def build_app(
    config: Config,
    catalog: Catalog,
    *,
    model_label: Callable[[], str] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Starlette:
    """The status page over ``catalog`` and ``config``'s model registry."""
    settings = config.web
    gate = Gate.build(settings.allowed_hosts, settings.password_file)
    routes = [
        Route("/", queue_page),
        Route("/jobs/{job_id:int}", job_page),
        Route("/jobs/{job_id:int}/{kind}/{plane}.png", thumbnail),
        Route("/models", models_page),
        Route("/models/{action:str}", model_action, methods=["POST"]),
        Route("/models/{version}/{figure}", model_figure),
        Route("/destinations", destinations_page),
        Route("/style.css", stylesheet),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(AccessMiddleware, gate=gate)])
    app.state.web = WebContext(
        config=config,
        catalog=catalog,
        gate=gate,
        templates=_templates(),
        thumbnails=ThumbnailCache(),
        model_label=model_label,
        clock=clock,
        audit=audit_trail(config, process="web"),
    )
    return app

"""The catalog: SQL rows for studies, series, instances, jobs, sends and model versions.

It is the only hand-off between the daemon's stages (DESIGN.md). Open it with
:meth:`Catalog.open`; the job state machine is in :mod:`bonect.catalog.jobs`.
"""

from bonect.catalog.engine import catalog_url, open_engine
from bonect.catalog.ingest import Settled
from bonect.catalog.jobs import LEGAL_TRANSITIONS, IllegalTransition, JobState, transition
from bonect.catalog.queue import Catalog, CatalogUnavailable, ClaimLost, UnknownJob
from bonect.catalog.records import (
    InstanceHeader,
    InstanceRecord,
    JobRecord,
    JobTimeline,
    SendRecord,
    SeriesFiles,
    SeriesGeometry,
    SeriesRecord,
    patient_key,
)
from bonect.catalog.tables import Role, SendStatus, SettleState

__all__ = [
    "LEGAL_TRANSITIONS",
    "Catalog",
    "CatalogUnavailable",
    "ClaimLost",
    "IllegalTransition",
    "InstanceHeader",
    "InstanceRecord",
    "JobRecord",
    "JobState",
    "JobTimeline",
    "Role",
    "SendRecord",
    "SendStatus",
    "SeriesFiles",
    "SeriesGeometry",
    "SeriesRecord",
    "SettleState",
    "Settled",
    "UnknownJob",
    "catalog_url",
    "open_engine",
    "patient_key",
    "transition",
]

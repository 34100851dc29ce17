"""The catalog: SQL rows for studies, series, instances, jobs, sends and model versions.

It is the only hand-off between the daemon's stages (DESIGN.md). Open it with
:meth:`Catalog.open`; the job state machine is in :mod:`bonect.catalog.jobs`.
"""

from bonect.catalog.engine import catalog_url, open_engine
from bonect.catalog.header import HeaderError, header_from_dataset
from bonect.catalog.ingest import Settled
from bonect.catalog.jobs import LEGAL_TRANSITIONS, IllegalTransition, JobState, transition
from bonect.catalog.models import Role, SendStatus, SettleState
from bonect.catalog.queue import Catalog, ClaimLost, UnknownJob
from bonect.catalog.records import (
    InstanceHeader,
    InstanceRecord,
    JobRecord,
    ModelVersionRecord,
    SendRecord,
    SeriesGeometry,
    SeriesRecord,
    patient_key,
)

__all__ = [
    "LEGAL_TRANSITIONS",
    "Catalog",
    "ClaimLost",
    "HeaderError",
    "IllegalTransition",
    "InstanceHeader",
    "InstanceRecord",
    "JobRecord",
    "JobState",
    "ModelVersionRecord",
    "Role",
    "SendRecord",
    "SendStatus",
    "SeriesGeometry",
    "SeriesRecord",
    "SettleState",
    "Settled",
    "UnknownJob",
    "catalog_url",
    "header_from_dataset",
    "open_engine",
    "patient_key",
    "transition",
]

"""Test helpers for the catalog: a fake clock and builders of instance headers and series.

Imported as ``catalog.catalog_support`` (``tests`` is on the path) by the catalog and daemon
tests alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bonect.catalog import Catalog, InstanceHeader

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    current: datetime = field(default=START)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


def header(
    series_uid: str = "1.2.826.0.1.3680043.8.498.100",
    index: int = 0,
    *,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "MR",
    description: str = "ZTE bone ZTE",
    spacing: float = 1.5,
    orientation: Sequence[float] = AXIAL,
    expected: int | None = None,
    patient_id: str = "PAT-0001",
) -> InstanceHeader:
    """Slice ``index`` of a single-frame series whose slices step ``spacing`` along the normal."""
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    origin = (-10.0, -20.0, 30.0)
    position = tuple(o + index * spacing * n for o, n in zip(origin, normal, strict=True))
    return InstanceHeader(
        sop_instance_uid=f"{series_uid}.{index + 1}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4"
        if modality == "MR"
        else "1.2.840.10008.5.1.4.1.1.2",
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        patient_id=patient_id,
        series_description=description,
        protocol_name=description,
        sequence_name=description[:16],
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        manufacturer="Digital Phantom",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.9",
        instance_number=index + 1,
        image_position=(position[0], position[1], position[2]),
        image_orientation=(
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ),
        images_in_acquisition=expected,
    )


def receive(
    catalog: Catalog,
    headers: Sequence[InstanceHeader],
    at: datetime,
    *,
    association_id: str = "assoc-1",
    folder: Path = Path("/archive"),
) -> None:
    """Record ``headers`` as received at ``at`` over one association."""
    for h in headers:
        catalog.record_instance(
            h, folder / h.sop_instance_uid, received_at=at, association_id=association_id
        )


def series_headers(
    n: int, series_uid: str = "1.2.826.0.1.3680043.8.498.100", **kwargs: Any
) -> list[InstanceHeader]:
    """All ``n`` slices of a series (keyword arguments as for :func:`header`)."""
    return [header(series_uid, k, **kwargs) for k in range(n)]


def record_priors(catalog: Catalog, now: datetime) -> dict[str, int]:
    """Three prior searches as the daemon leaves them: one done (a CT of 6 instances
    retrieved), one none found, one failed; their ids by state."""
    from bonect.catalog import priors
    from bonect.catalog.priors import PriorState, RetrievalState, WantedSeries

    ids = {}
    for k, state in enumerate((PriorState.DONE, PriorState.NONE_FOUND, PriorState.FAILED)):
        task_id = priors.create_task(catalog, f"1.2.826.0.1.3680043.8.498.{900 + k}", "pacs", now)
        task = priors.task(catalog, task_id)
        assert task is not None
        if state is PriorState.DONE:
            wanted = WantedSeries("1.2.3", "1.2.3.4", "20260101", "Head 1.0", 6)
            (row,) = priors.want_series(catalog, task, [wanted], now)
            priors.record_retrieval(catalog, row.id, RetrievalState.RETRIEVED, now, completed=6)
        reason = {PriorState.NONE_FOUND: "no CT study", PriorState.FAILED: "refused"}.get(state)
        priors.finish(catalog, task_id, state, now, reason)
        ids[state.value] = task_id
    return ids

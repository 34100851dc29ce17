"""Recording received instances and settling series: the catalog side of receive and settle.

Functions here take an open :class:`~sqlalchemy.orm.Session` inside a write transaction and
never commit; :class:`bonect.catalog.queue.Catalog` owns the transactions. Counters are bumped
with SQL expressions (``n = n + 1``), so concurrent writers on PostgreSQL never lose a count,
and settling is optimistic: a series is only settled if no instance arrived since it was read
(its ``revision`` is unchanged). A series settled for conversion is queued by
:func:`bonect.catalog.lifecycle.enqueue`, where the life of a job is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, joinedload

from bonect.catalog.backfill import is_training_only
from bonect.catalog.lifecycle import enqueue
from bonect.catalog.records import (
    InstanceHeader,
    InstanceRecord,
    SeriesGeometry,
    SeriesRecord,
    Vector3,
    join_floats,
    split_floats,
)
from bonect.catalog.tables import Instance, Role, Series, SettleState, Study, UTCDateTime
from bonect.errors import RetryableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """A series settled by :func:`settle_series`, with the job queued for it if any."""

    series_uid: str
    role: Role
    job_id: int | None


class StaleSeriesId(RetryableError):
    """A cached series id no longer names the series (its row was deleted or replaced).

    Raised inside the write transaction, which then rolls back; the caller forgets the id
    and records the instance again.
    """

    def __init__(self, series_uid: str) -> None:
        super().__init__(f"cached id of series {series_uid} is stale")
        self.series_uid = series_uid


def _study_id(conn: Connection, header: InstanceHeader, now: datetime) -> int:
    study_id = conn.scalar(select(Study.id).where(Study.study_uid == header.study_uid))
    if study_id is None:
        study_id = conn.scalars(
            insert(Study)
            .returning(Study.id)
            .values(
                study_uid=header.study_uid,
                patient_key=header.patient_key,
                patient_id=header.patient_id[:64],
                issuer_of_patient_id=header.issuer_of_patient_id[:64],
                study_date=header.study_date[:8],
                created_at=now,
            )
        ).one()
    return int(study_id)


def series_id(conn: Connection, header: InstanceHeader, at: datetime) -> int:
    """The id of the instance's series, creating the series (and its study) if it is new."""
    found = conn.scalar(select(Series.id).where(Series.series_uid == header.series_uid))
    if found is not None:
        return int(found)
    created = conn.scalars(
        insert(Series)
        .returning(Series.id)
        .values(
            series_uid=header.series_uid,
            study_id=_study_id(conn, header, at),
            modality=header.modality[:16],
            series_description=header.series_description[:64],
            protocol_name=header.protocol_name[:64],
            sequence_name=header.sequence_name[:64],
            image_type="\\".join(header.image_type)[:256],
            manufacturer=header.manufacturer[:64],
            patient_key=header.patient_key,
            frame_of_reference_uid=header.frame_of_reference_uid[:64],
            instance_count=0,
            expected_count=header.expected_count,
            first_received_at=at,
            last_received_at=at,
            revision=0,
            settle_state=SettleState.OPEN,
        )
    ).one()
    return int(created)


_instances = cast(Table, Instance.__table__)
_series = cast(Table, Series.__table__)
_AT = bindparam("b_at", type_=UTCDateTime())
_THIS_SERIES = and_(
    _series.c.id == bindparam("b_series_id", type_=Integer),
    _series.c.series_uid == bindparam("b_series_uid", type_=String),
)
_EXPECTED = func.coalesce(_series.c.expected_count, bindparam("b_expected", type_=Integer))
_TOUCH: dict[str, Any] = {  # activity on a series: it is open and its quiet timer restarts
    "last_received_at": case(
        (_series.c.last_received_at > _AT, _series.c.last_received_at), else_=_AT
    ),
    "last_association_id": bindparam("b_association_id", type_=String),
    "calling_ae": bindparam("b_calling_ae", type_=String),
    "association_released_at": None,
    "association_aborted_at": None,
    "revision": _series.c.revision + 1,
}
# Built once (their SQL is compiled once per dialect and cached); run with parameters.
_INSERT_NEW = {  # ON CONFLICT DO NOTHING: a concurrent insert of the same instance waits, then
    "sqlite": sqlite_insert(_instances)  # does nothing; no row returned: it was there already
    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(_instances.c.id),
    "postgresql": postgresql_insert(_instances)
    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(_instances.c.id),
}
_INSERT_PLAIN = insert(_instances).returning(_instances.c.id)
_SERIES_OF_INSTANCE = select(_instances.c.series_id).where(
    _instances.c.sop_instance_uid == bindparam("b_sop", type_=String)
)
_REPLACE_INSTANCE = update(_instances).where(
    _instances.c.sop_instance_uid == bindparam("b_sop", type_=String)
)
_UNCOUNT = (
    update(_series)
    .where(_series.c.id == bindparam("b_old_series_id", type_=Integer))
    .values(instance_count=_series.c.instance_count - 1)
)
_REOPEN = (
    update(_series)
    .where(_THIS_SERIES, _series.c.settle_state == SettleState.SETTLED)
    .values(settle_state=SettleState.OPEN, settled_at=None)
)
_COUNT_NEW = (
    update(_series)
    .where(_THIS_SERIES)
    .values(instance_count=_series.c.instance_count + 1, expected_count=_EXPECTED, **_TOUCH)
)
_EXPECT = update(_series).where(_THIS_SERIES).values(expected_count=_EXPECTED)
_TOUCH_OPEN = (
    update(_series).where(_THIS_SERIES, _series.c.settle_state == SettleState.OPEN).values(_TOUCH)
)


def _insert_new_instance(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert an instance row unless its SOP Instance UID is known; True when inserted."""
    statement = _INSERT_NEW.get(conn.dialect.name)
    if statement is None:  # a plain insert: a concurrent duplicate raises IntegrityError
        known = conn.scalar(_SERIES_OF_INSTANCE, {"b_sop": values["sop_instance_uid"]})
        if known is not None:
            return False
        statement = _INSERT_PLAIN
    return conn.execute(statement, values).first() is not None


def record_instance(
    conn: Connection,
    header: InstanceHeader,
    path: Path,
    *,
    received_at: datetime,
    association_id: str | None,
    calling_ae: str | None = None,
    known_series_id: int | None = None,
) -> tuple[InstanceRecord, int]:
    """Add one instance, or replace the path of an instance received before (same SOP UID).

    ``calling_ae`` is the Calling AE Title of the association that delivered it (None from the
    drop folder); the series keeps that of its latest instance, to send its sCT back to it.
    ``known_series_id`` is the series' id as cached by the caller; it is checked (the row must
    still hold ``header.series_uid``), and :class:`StaleSeriesId` raised if it does not.

    Core statements built once, no ORM: for a new instance of a known series, an ``INSERT …
    ON CONFLICT DO NOTHING``, an ``UPDATE`` that re-opens the series if it was settled, and
    one ``UPDATE`` of its counters and settle fields.

    Returns
    -------
    tuple[InstanceRecord, int]
        The record, and the series id (to cache once the transaction has committed).
    """
    association_id = association_id[:128] if association_id else None
    calling_ae = (calling_ae.strip()[:16] or None) if calling_ae else None
    sid = known_series_id
    if sid is None:
        sid = series_id(conn, header, received_at)
    values: dict[str, Any] = {
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "series_id": sid,
        "path": str(path),
        "instance_number": header.instance_number,
        "image_position": join_floats(header.image_position),
        "image_orientation": join_floats(header.image_orientation),
        "number_of_frames": header.number_of_frames,
        "association_id": association_id,
        "received_at": received_at,
    }
    series = {"b_series_id": sid, "b_series_uid": header.series_uid}
    touch = {
        **series,
        "b_at": received_at,
        "b_association_id": association_id,
        "b_calling_ae": calling_ae,
        "b_expected": header.expected_count,
    }
    created = _insert_new_instance(conn, values)
    if not created:  # sent again: replace its row, and move it if it claims another series
        sop = {"b_sop": header.sop_instance_uid}
        old_series = conn.scalar(_SERIES_OF_INSTANCE, sop)
        conn.execute(_REPLACE_INSTANCE, {**values, **sop})
        if old_series is not None and old_series != sid:
            conn.execute(_UNCOUNT, {"b_old_series_id": old_series})
            created = True
    reopened = False
    if created:
        reopened = conn.execute(_REOPEN, series).rowcount == 1
        if conn.execute(_COUNT_NEW, touch).rowcount != 1:
            raise StaleSeriesId(header.series_uid)
    else:  # the series is touched only while it is open
        if conn.execute(_EXPECT, touch).rowcount != 1:
            raise StaleSeriesId(header.series_uid)
        conn.execute(_TOUCH_OPEN, touch)
    if reopened:
        logger.info(
            "series %s re-opened by instance %s", header.series_uid, header.sop_instance_uid
        )
    record = InstanceRecord(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        series_uid=header.series_uid,
        path=path,
        instance_number=header.instance_number,
        received_at=received_at,
        created=created,
        reopened=reopened,
    )
    return record, sid


def association_ended(
    session: Session, association_id: str, at: datetime, *, aborted: bool = False
) -> int:
    """Mark the open series last fed by ``association_id`` as released (or, ``aborted``, as
    maybe cut short); returns how many."""
    column = "association_aborted_at" if aborted else "association_released_at"
    result = session.execute(
        update(Series)
        .where(
            Series.last_association_id == association_id[:128],
            Series.settle_state == SettleState.OPEN,
        )
        .values({column: at})
    )
    return int(getattr(result, "rowcount", 0) or 0)


def associations_cut_by_a_stop(session: Session, at: datetime) -> int:
    """At start: the open series whose last association neither released nor aborted were being
    received when the process stopped; mark them aborted. Returns how many."""
    result = session.execute(
        update(Series)
        .where(
            Series.settle_state == SettleState.OPEN,
            Series.last_association_id.is_not(None),
            Series.association_released_at.is_(None),
            Series.association_aborted_at.is_(None),
        )
        .values(association_aborted_at=at)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def series_to_settle(session: Session, now: datetime, quiet_seconds: float) -> list[SeriesRecord]:
    """Open series that are quiet, or whose last association has been released or aborted.

    An aborted one is listed whatever its age: :func:`bonect.daemon.settle.settle_once` decides
    by its own, longer timer or by its expected count."""
    cutoff = now - timedelta(seconds=quiet_seconds)
    rows = session.scalars(
        select(Series)
        .options(joinedload(Series.study))
        .where(
            Series.settle_state == SettleState.OPEN,
            or_(
                Series.last_received_at <= cutoff,
                Series.association_released_at.is_not(None),
                Series.association_aborted_at.is_not(None),
            ),
        )
        .order_by(Series.id)
    )
    return [SeriesRecord.from_row(row) for row in rows]


def series_geometry(session: Session, series_uid: str) -> SeriesGeometry | None:
    """Positions, orientations and frame counts of a series' instances (arrival order)."""
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        return None
    rows = session.execute(
        select(Instance.image_position, Instance.image_orientation, Instance.number_of_frames)
        .where(Instance.series_id == series.id)
        .order_by(Instance.id)
    ).all()
    positions: list[Vector3 | None] = []
    orientations = []
    for position_text, orientation_text, _ in rows:
        p = split_floats(position_text)
        o = split_floats(orientation_text)
        positions.append((p[0], p[1], p[2]) if p is not None and len(p) == 3 else None)
        orientations.append((o[0], o[1], o[2], o[3], o[4], o[5]) if o and len(o) == 6 else None)
    return SeriesGeometry(
        series_uid=series_uid,
        positions=tuple(positions),
        orientations=tuple(orientations),
        frames=tuple(max(1, frames or 1) for _, _, frames in rows),
        expected_count=series.expected_count,
    )


def settle_series(
    session: Session, series_uid: str, *, revision: int, role: Role, now: datetime
) -> Settled | None:
    """Settle a series read at ``revision`` with ``role``; None if it changed meanwhile."""
    result = session.execute(
        update(Series)
        .where(
            Series.series_uid == series_uid,
            Series.revision == revision,
            Series.settle_state == SettleState.OPEN,
        )
        .values(settle_state=SettleState.SETTLED, settled_at=now, role=role)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        return None
    series = session.scalars(select(Series).where(Series.series_uid == series_uid)).one()
    queue = role == Role.CONVERT and not is_training_only(session, series_uid)  # back-filled
    job_id = enqueue(session, series, now) if queue else None
    return Settled(series_uid=series_uid, role=role, job_id=job_id)

"""Series the trainer's back-fill asked a source for: training data, never converted.

``bonect-trainer harvest --source NAME`` (:mod:`bonect.trainer.backfill`) records each bone-MR
series it is about to retrieve (:func:`request_series`) before it asks for it. When such a
series settles it takes its role as any other (``convert``: the prefetch of priors then looks
for its CT, and the trainer pairs it) but no job is queued: an old study's synthetic CT is not
sent to the PACS. :func:`requested_series` lets a second run skip what the first asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from bonect.catalog.tables import UID, Base, UTCDateTime

if TYPE_CHECKING:
    from bonect.catalog.queue import Catalog


class BackfillRequest(Base):
    """One series a back-fill asked a source for."""

    __tablename__ = "backfill_requests"

    series_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)


def request_series(catalog: Catalog, series_uids: Iterable[str], source: str, now: datetime) -> int:
    """Record the series (idempotent); how many were new."""
    uids = sorted(set(series_uids))
    if not uids:
        return 0
    with catalog.writing() as session:
        known = set(
            session.scalars(
                select(BackfillRequest.series_uid).where(BackfillRequest.series_uid.in_(uids))
            )
        )
        new = [uid for uid in uids if uid not in known]
        session.add_all(
            BackfillRequest(series_uid=uid, source=source, requested_at=now) for uid in new
        )
        return len(new)


def requested_series(catalog: Catalog) -> set[str]:
    """Every series a back-fill asked for."""
    with catalog.reading() as session:
        return set(session.scalars(select(BackfillRequest.series_uid)))


def is_training_only(session: Session, series_uid: str) -> bool:
    """Whether a back-fill asked for this series (inside the settle transaction)."""
    return session.get(BackfillRequest, series_uid) is not None

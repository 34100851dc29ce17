"""The last C-ECHO of each configured peer (``[[destinations]]``, ``[[sources]]``): when, and
whether it answered. Written by the daemon's echo thread (:mod:`bonect.daemon.echo_watch`),
shown on the status page and by ``bonect-daemon status``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from bonect.catalog.tables import Base, UTCDateTime

if TYPE_CHECKING:
    from bonect.catalog.queue import Catalog


class PeerCheck(Base):
    """One peer's latest C-ECHO (one row per kind and name, replaced each time)."""

    __tablename__ = "peer_checks"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # destination | source
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class PeerCheckRecord:
    kind: str
    name: str
    checked_at: datetime
    ok: bool
    message: str


def record_check(
    catalog: Catalog, kind: str, name: str, *, ok: bool, message: str, now: datetime
) -> None:
    """Replace the peer's last check with this one."""
    with catalog.writing() as session:
        row = session.get(PeerCheck, (kind, name))
        if row is None:
            session.add(PeerCheck(kind=kind, name=name, checked_at=now, ok=ok, message=message))
        else:
            row.checked_at, row.ok, row.message = now, ok, message


def last_checks(catalog: Catalog) -> dict[tuple[str, str], PeerCheckRecord]:
    """Every peer's last check, by (kind, name)."""
    with catalog.reading() as session:
        return {
            (r.kind, r.name): PeerCheckRecord(r.kind, r.name, r.checked_at, r.ok, r.message)
            for r in session.scalars(select(PeerCheck))
        }

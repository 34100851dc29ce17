"""The site ``local``, harvested from the daemon's catalog: each bone MR with a real CT.

A bone-MR series (role ``convert``) pairs with the real CT (role ``keep_ct``) of the same patient
(the catalog's patient key: Patient ID and issuer) whose study date is nearest to the MR's,
within the window (default 183 days, the paper's 6 months). bonect's own synthetic CT (role
``output``, or a series with bonect as manufacturer) is never a partner. A pair is written once;
it is written again only when one of its series received more instances since.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload
from tqdm import tqdm

from bonect.catalog.models import Role, Series, SettleState, Study
from bonect.catalog.queue import Catalog
from bonect.errors import BonectError
from bonect.trainer.importers import ImportSummary, add_dicom_pair, days_apart
from bonect.trainer.sites import LOCAL_SITE, SiteStore, hashed_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _CatalogSeries:
    uid: str
    patient_key: str
    study_date: str
    revision: int
    files: tuple[Path, ...]


def _is_ours(row: Series, manufacturer: str) -> bool:
    return row.role is Role.OUTPUT or (
        bool(manufacturer) and row.manufacturer.strip().lower() == manufacturer.lower()
    )


def _settled(catalog: Catalog, role: Role, manufacturer: str) -> list[_CatalogSeries]:
    with catalog.reading() as session:
        rows = session.scalars(
            select(Series)
            .join(Study)
            .where(Series.role == role, Series.settle_state == SettleState.SETTLED)
            .options(selectinload(Series.instances), selectinload(Series.study))
            .order_by(Series.id)
        ).all()
        return [
            _CatalogSeries(
                uid=row.series_uid,
                patient_key=row.patient_key,
                study_date=row.study.study_date,
                revision=row.revision,
                files=tuple(Path(i.path) for i in row.instances),
            )
            for row in rows
            if not _is_ours(row, manufacturer)
        ]


def harvest_local(
    catalog: Catalog,
    store: SiteStore,
    *,
    window_days: float,
    output_manufacturer: str = "bonect",
    progress: bool = True,
) -> ImportSummary:
    """Write every new or changed local pair into the site ``local``; list the MR left unpaired."""
    site = store.create_site(LOCAL_SITE, "catalog", "the daemon's catalog")
    summary = ImportSummary(site.name)
    mrs = _settled(catalog, Role.CONVERT, output_manufacturer)
    cts = _settled(catalog, Role.KEEP_CT, output_manufacturer)
    existing = {pair.case: pair for pair in store.pairs(site)}
    for mr in tqdm(mrs, desc="harvest local pairs", unit="series", disable=not progress):
        candidates = [
            (days, ct)
            for ct in cts
            if ct.patient_key == mr.patient_key
            and (days := days_apart(mr.study_date, ct.study_date)) is not None
            and days <= window_days
        ]
        if not candidates:
            summary.skipped.append(
                (mr.uid, f"no CT of the same patient within {window_days:g} days")
            )
            continue
        days, ct = min(candidates, key=lambda c: c[0])
        case = hashed_key(mr.uid, ct.uid)[:16]
        known = existing.get(case)
        revisions = {"mr_revision": mr.revision, "ct_revision": ct.revision}
        if known is not None and all(known.provenance.get(k) == v for k, v in revisions.items()):
            continue
        provenance = {"days_apart": days, **revisions}
        try:
            add_dicom_pair(store, site, case, mr.patient_key, mr.files, ct.files, provenance)
        except BonectError as exc:
            logger.warning("local pair %s left out: %s", case, exc)
            summary.skipped.append((case, str(exc)))
            continue
        summary.added.append(case)
    return summary

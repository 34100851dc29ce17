"""The site ``local``, harvested from the daemon's catalog: each bone MR with a real CT.

A bone-MR series (role ``convert``) pairs with the real CT (role ``keep_ct``) of the same patient
(the catalog's patient key: Patient ID and issuer) whose study date is nearest to the MR's,
within the window (default 183 days, the paper's 6 months). bonect's own synthetic CT (role
``output``, or :func:`bonect.dicom.provenance.is_own_sct`) is never a partner. A pair is
written once; it is written again only when one of its series received more instances since.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from bonect.catalog import Catalog, Role, SeriesFiles
from bonect.dicom.provenance import is_own_sct
from bonect.errors import BonectError
from bonect.trainer.importers import ImportSummary, add_dicom_pair, days_apart
from bonect.trainer.sites import LOCAL_SITE, SiteStore, hashed_key

logger = logging.getLogger(__name__)


def _is_ours(series: SeriesFiles, manufacturer: str) -> bool:
    return series.role is Role.OUTPUT or is_own_sct(
        series.manufacturer, series.image_type, our_manufacturer=manufacturer
    )


def _settled(catalog: Catalog, role: Role, manufacturer: str) -> list[SeriesFiles]:
    return [s for s in catalog.settled_series_files(role) if not _is_ours(s, manufacturer)]


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
                (mr.series_uid, f"no CT of the same patient within {window_days:g} days")
            )
            continue
        days, ct = min(candidates, key=lambda c: c[0])
        case = hashed_key(mr.series_uid, ct.series_uid)[:16]
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

"""Back-fill: the bone-MR series already in a PACS, paired with their patients' CTs there.

``bonect-trainer harvest --source NAME --since DATE [--until DATE] [--dry-run]``:

1. :func:`find_cases` asks the source for the studies of ``since``..``until`` with MR in them
   (study-level C-FIND), keeps the series the ``[rules]`` call bone MR to convert (series-level
   C-FIND: SeriesDescription, ProtocolName, Modality, as the daemon's routing does), and for
   each such study looks for the patient's CT exactly as the daemon's prefetch does
   (:func:`bonect.prior_search.search_prior_cts`). A case is pairable when it found a CT.
2. The dry run prints the cases (:func:`case_lines`: hashed patient key, dates, series counts,
   estimated size) and moves nothing.
3. Otherwise :func:`retrieve_cases` records each pairable case's bone-MR series in the catalog
   as back-filled (:mod:`bonect.catalog.backfill`: settled, they are paired but never
   converted and sent), then C-MOVEs them to the running daemon. When they settle, the daemon's
   prefetch retrieves their CTs with its own budget, hours and backoff. A series the archive
   holds whole is not asked again, so a second run retrieves nothing new, and an interrupted
   run is resumed by running it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from tqdm import tqdm

from bonect.catalog import Catalog
from bonect.catalog import backfill as requests
from bonect.catalog.tables import Role
from bonect.config import Config, SourceConfig
from bonect.dicom.header import patient_key
from bonect.dicom.query_retrieve import QueryRetrieveClient, SeriesMatch, StudyMatch
from bonect.errors import BonectError
from bonect.prior_search import search_prior_cts, study_day
from bonect.rules import classify

logger = logging.getLogger(__name__)

#: Bytes per instance for the dry run's estimate when the source does not say more: a
#: 512 x 512 16-bit CT slice; bone-MR slices are smaller, so the estimate errs high.
BYTES_PER_INSTANCE = 512 * 512 * 2


@dataclass(frozen=True)
class BackfillCase:
    """One MR study at the source with bone-MR series, and its patient's CT there (if any)."""

    patient_key: str  # pseudonymous (SHA-256 of issuer and PatientID)
    mr_study: StudyMatch
    mr_series: tuple[SeriesMatch, ...]
    cts: tuple[tuple[StudyMatch, SeriesMatch], ...]
    reason: str  # why no CT, when none

    @property
    def pairable(self) -> bool:
        return bool(self.cts)

    @property
    def instances(self) -> int:
        """Instances to retrieve, as far as the source counted them."""
        every = [s for s in self.mr_series] + [s for _, s in self.cts]
        return sum(s.instances or 0 for s in every)


def find_cases(
    client: QueryRetrieveClient,
    config: Config,
    *,
    since: date,
    until: date,
    progress: bool = True,
) -> list[BackfillCase]:
    """Every MR study of ``since``..``until`` at the source with bone-MR series, oldest first."""
    studies = sorted(
        client.find_studies_between(since, until, modality="MR"), key=lambda s: s.study_date
    )
    cases = []
    for study in tqdm(studies, desc="search the source", unit="study", disable=not progress):
        bone = tuple(
            s
            for s in client.find_series(study.study_uid)
            if s.modality.upper() == "MR" and classify(config.rules, s) is Role.CONVERT
        )
        if not bone:
            continue
        found = search_prior_cts(
            client,
            config.rules,
            patient_id=study.patient_id,
            issuer_of_patient_id=study.issuer_of_patient_id,
            mr_day=study_day(study.study_date, since),
            window_days=config.trainer.pair_window_days,
        )
        key = patient_key(study.patient_id, study.issuer_of_patient_id)
        cases.append(BackfillCase(key, study, bone, tuple(found.candidates), found.reason))
    return cases


def case_lines(cases: list[BackfillCase]) -> list[str]:
    """The dry run's report: one line per case, then the totals. No names, no IDs."""
    lines = []
    for case in cases:
        if case.pairable:
            ct_dates = ", ".join(sorted({study.study_date for study, _ in case.cts}))
            what = f"CT {ct_dates}: {len(case.cts)} series"
        else:
            what = f"no pair: {case.reason}"
        lines.append(
            f"patient {case.patient_key[:12]}  MR {case.mr_study.study_date}: "
            f"{len(case.mr_series)} bone-MR series  {what}  "
            f"~{_size(case.instances * BYTES_PER_INSTANCE)}"
        )
    pairable = [c for c in cases if c.pairable]
    total = sum(c.instances for c in pairable) * BYTES_PER_INSTANCE
    lines.append(
        f"{len(pairable)} pairable of {len(cases)} bone-MR studies; to retrieve: "
        f"{sum(len(c.mr_series) for c in pairable)} MR and {sum(len(c.cts) for c in pairable)} "
        f"CT series, {sum(c.instances for c in pairable)} instances, ~{_size(total)}"
    )
    return lines


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n = int(n / 1000)
    return f"{n:.0f} TB"


def _archived_whole(catalog: Catalog, series: SeriesMatch) -> bool:
    """Whether the archive holds the series, all of it as far as the source counted."""
    held = catalog.series(series.series_uid)
    if held is None or held.instance_count == 0:
        return False
    return series.instances is None or held.instance_count >= series.instances


def retrieve_cases(
    catalog: Catalog,
    client: QueryRetrieveClient,
    source: SourceConfig,
    cases: list[BackfillCase],
    *,
    move_ae: str,
    now: Callable[[], datetime],
    progress: bool = True,
) -> tuple[int, int]:
    """C-MOVE the pairable cases' bone-MR series not yet archived or asked for to ``move_ae``
    (the daemon); returns (series asked for, series skipped as already there)."""
    if source.retrieve != "move":
        raise BonectError(
            f"source {source.name}: harvest retrieves by C-MOVE to the running daemon; "
            'set retrieve = "move" (C-GET would store into this process, not the daemon)'
        )
    wanted = [(c.mr_study, s) for c in cases if c.pairable for s in c.mr_series]
    todo = [(study, s) for study, s in wanted if not _archived_whole(catalog, s)]
    for study, series in tqdm(todo, desc="retrieve bone MR", unit="series", disable=not progress):
        requests.request_series(catalog, [series.series_uid], source.name, now())
        result = client.move_series(study.study_uid, series.series_uid, move_ae=move_ae)
        if not result.ok:
            logger.warning(
                "back-fill: series %s: C-MOVE ended 0x%04X (%d failed); run harvest again",
                series.series_uid,
                result.status,
                result.failed,
            )
        logger.info(
            "back-fill: series %s moved (%d completed, %d failed)",
            series.series_uid,
            result.completed,
            result.failed,
        )
    return len(todo), len(wanted) - len(todo)

"""The search for a bone-MR patient's CT at a source PACS, shared by the daemon's prefetch
(:mod:`bonect.daemon.priors`) and the trainer's back-fill (:mod:`bonect.trainer.backfill`).

:func:`search_prior_cts` asks a source (study-level C-FIND by PatientID and
IssuerOfPatientID, StudyDate within the pairing window of the MR's, ModalitiesInStudy CT; then
series-level C-FIND of each study) and keeps the CT series the ``[rules.keep_ct]`` rule accepts
that are not bonect's own sCT. When it keeps none it says why, in words an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from bonect.config_rules import RulesConfig
from bonect.dicom.query_retrieve import SeriesMatch, StudyMatch
from bonect.rules import keep_ct_matches


class SearchClient(Protocol):
    """The C-FIND half of :class:`bonect.dicom.query_retrieve.QueryRetrieveClient`."""

    def find_studies(
        self,
        patient_id: str,
        *,
        issuer_of_patient_id: str = "",
        date_from: date | None = None,
        date_to: date | None = None,
        modality: str = "CT",
    ) -> list[StudyMatch]: ...

    def find_series(self, study_uid: str) -> list[SeriesMatch]: ...


@dataclass(frozen=True)
class PriorSearch:
    """What a search found: the CT series to retrieve (study, series), and why none if so."""

    candidates: list[tuple[StudyMatch, SeriesMatch]]
    reason: str  # "" when there are candidates


def study_day(study_date: str, default: date) -> date:
    """A StudyDate as a date; ``default`` when it is missing or malformed."""
    try:
        return datetime.strptime(study_date[:8], "%Y%m%d").date()
    except ValueError:
        return default


def in_window(study_date: str, low: date, high: date) -> bool:
    """Whether a StudyDate lies in ``low``..``high``; an undated study never does."""
    try:
        day = datetime.strptime(study_date[:8], "%Y%m%d").date()
    except ValueError:
        return False
    return low <= day <= high


def search_prior_cts(
    client: SearchClient,
    rules: RulesConfig,
    *,
    patient_id: str,
    issuer_of_patient_id: str,
    mr_day: date,
    window_days: float,
) -> PriorSearch:
    """The patient's CT series at the source that pair with an MR of ``mr_day``.

    Raises :class:`bonect.dicom.query_retrieve.QueryRetrieveError` when the source fails."""
    low, high = mr_day - timedelta(days=window_days), mr_day + timedelta(days=window_days)
    found = client.find_studies(
        patient_id, issuer_of_patient_id=issuer_of_patient_id, date_from=low, date_to=high
    )
    candidates: list[tuple[StudyMatch, SeriesMatch]] = []
    refused = 0
    for study in (s for s in found if in_window(s.study_date, low, high)):
        for series in client.find_series(study.study_uid):
            if series.modality.upper() != "CT":
                continue
            if series.manufacturer.strip().lower() == rules.output_manufacturer.lower():
                # our own sCT, sent back to this PACS: never a prior. A series-level C-FIND
                # answer carries no ImageType, so the Manufacturer alone decides here (what
                # bonect.dicom.provenance.is_own_sct checks in a header)
                continue
            if not keep_ct_matches(rules.keep_ct, series):
                refused += 1
                continue
            candidates.append((study, series))
    if candidates:
        return PriorSearch(candidates, "")
    if refused:
        return PriorSearch(
            [], f"{refused} CT series found, none the keep_ct rules accept (scouts, dose reports)"
        )
    every = client.find_studies(patient_id, issuer_of_patient_id=issuer_of_patient_id)
    outside = [s for s in every if not in_window(s.study_date, low, high)]
    if not outside:
        return PriorSearch([], "no CT study of this patient at the source")
    nearest = min(abs((study_day(s.study_date, mr_day) - mr_day).days) for s in outside)
    return PriorSearch(
        [],
        f"{len(outside)} CT study(ies) outside the pairing window of {window_days:g} days "
        f"(nearest {nearest} days from the MR)",
    )

"""Registering each pair's CT onto its MR, scoring it, and deciding which pairs may be used.

Beside each pair's files (see :mod:`bonect.trainer.sites`)::

    ct_on_mr.nii.gz     the CT on the MR grid (registered, or as given when already there)
    overlay.png         MR with the CT's bone over it, for a person to check
    registration.json   status (usable | set aside | failed), score, reason, input hashes

A pair is registered again only when one of its input files changed. Pairs scoring under the
threshold are *set aside*: listed by ``bonect-trainer pairs`` with their score, never used.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bonect.converter.volume import read_nifti, write_nifti
from bonect.errors import BonectError
from bonect.trainer.cache import PairSource, file_sha256
from bonect.trainer.overlay import overlay_png
from bonect.trainer.registration import register_ct_to_mr, registration_quality
from bonect.trainer.sites import Pair, SiteError, read_json, write_json

logger = logging.getLogger(__name__)

REGISTERED_CT = "ct_on_mr.nii.gz"
OVERLAY = "overlay.png"
RECORD = "registration.json"


class PairStatus(StrEnum):
    USABLE = "usable"
    SET_ASIDE = "set aside"  # registration quality under the threshold
    FAILED = "failed"  # registration or reading failed
    PENDING = "not registered yet"


@dataclass(frozen=True)
class PairState:
    """A pair and what registration made of it."""

    pair: Pair
    status: PairStatus
    score: float | None
    reason: str
    seconds: float = 0.0

    @property
    def ct_on_mr(self) -> Path:
        return self.pair.folder / REGISTERED_CT

    @property
    def overlay(self) -> Path:
        return self.pair.folder / OVERLAY

    def source(self) -> PairSource:
        """The pair as the slice cache takes it."""
        return PairSource(
            key=self.pair.key, patient_key=self.pair.patient_key, mr=self.pair.mr, ct=self.ct_on_mr
        )


def _inputs_hash(pair: Pair) -> str:
    return hashlib.sha256(f"{file_sha256(pair.mr)}:{file_sha256(pair.ct)}".encode()).hexdigest()


def pair_state(pair: Pair, threshold: float) -> PairState:
    """What is known of a pair without registering it (the threshold may have changed)."""
    try:
        record = read_json(pair.folder / RECORD)
    except SiteError:
        return PairState(pair, PairStatus.PENDING, None, "")
    score = record.get("score")
    if record.get("status") == PairStatus.FAILED:
        return PairState(pair, PairStatus.FAILED, None, str(record.get("reason", "")))
    if not isinstance(score, (int, float)) or not (pair.folder / REGISTERED_CT).is_file():
        return PairState(pair, PairStatus.PENDING, None, "")
    seconds = float(record.get("seconds", 0.0))
    if score < threshold:
        reason = f"registration quality {score:.3f} is under the threshold {threshold:.3f}"
        return PairState(pair, PairStatus.SET_ASIDE, float(score), reason, seconds)
    return PairState(pair, PairStatus.USABLE, float(score), "", seconds)


def register_pair(pair: Pair, threshold: float, *, force: bool = False) -> PairState:
    """Register one pair unless done for the same inputs; never raises for a bad pair."""
    inputs = _inputs_hash(pair)
    if not force:
        try:
            done = read_json(pair.folder / RECORD).get("inputs") == inputs
        except SiteError:
            done = False
        if done:
            return pair_state(pair, threshold)
    try:
        mr, ct = read_nifti(pair.mr), read_nifti(pair.ct)
        if pair.ct_on_mr_grid:
            ct_on_mr, score, seconds, method = ct, registration_quality(mr, ct), 0.0, "as given"
        else:
            result = register_ct_to_mr(mr, ct)
            ct_on_mr, score, seconds = result.ct_on_mr, result.score, result.seconds
            method = " then ".join(result.stages)
        write_nifti(ct_on_mr, pair.folder / REGISTERED_CT)
        overlay_png(mr, ct_on_mr, pair.folder / OVERLAY, title=pair.key, score=score)
    except BonectError as exc:
        logger.warning("pair %s: registration failed: %s", pair.key, exc)
        failed = {"status": str(PairStatus.FAILED), "reason": str(exc), "inputs": inputs}
        write_json(pair.folder / RECORD, failed)
        return PairState(pair, PairStatus.FAILED, None, str(exc))
    record: dict[str, Any] = {
        "status": "registered",
        "score": round(float(score), 4),
        "method": method,
        "seconds": round(seconds, 2),
        "inputs": inputs,
    }
    write_json(pair.folder / RECORD, record)
    state = pair_state(pair, threshold)
    if state.status is PairStatus.SET_ASIDE:
        logger.warning("pair %s set aside: %s (check %s)", pair.key, state.reason, state.overlay)
    return state


def register_pairs(
    pairs: Sequence[Pair], threshold: float, *, progress: bool = True
) -> list[PairState]:
    """Register every pair that needs it; returns the state of each."""
    states = []
    for pair in tqdm(pairs, desc="registration", unit="pair", disable=not progress):
        states.append(register_pair(pair, threshold))
    return states


def usable(states: Sequence[PairState]) -> list[PairState]:
    return [s for s in states if s.status is PairStatus.USABLE]


def format_pairs(states: Sequence[PairState]) -> str:
    """A Markdown table of pairs with their score and status (and why, when not usable)."""
    lines = ["| pair | patient | score | status | note |", "|---|---|---|---|---|"]
    for s in states:
        score = "" if s.score is None else f"{s.score:.3f}"
        note = s.reason or (str(s.overlay) if s.overlay.is_file() else "")
        lines.append(
            f"| {s.pair.key} | {s.pair.patient_key[:12]} | {score} | {s.status} | {note} |"
        )
    return "\n".join(lines)

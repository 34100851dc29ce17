"""The daemon's loops: an error boundary that backs off, and a loop that steps until stopped.

A node runs its duties in one or two loops (:meth:`bonect.daemon.node.Node.run`): on a host
that both receives and converts, settling runs in its own thread, so that a series sent while a
conversion runs is settled and queued at once instead of after it. Each loop has its own
:class:`StepGuard`: a catalog that does not answer backs each loop off on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bonect.daemon.sender import RetryPolicy
from bonect.errors import BonectError, RetryableError

logger = logging.getLogger(__name__)

Duty = Callable[[], bool]
"""One part of a step; True when it did work (a job processed, a series queued)."""

IDLE_FIRST_SECONDS = 0.05
IDLE_CAP_SECONDS = 1.0  # a loop that only polls: a worker host's, or settling and work in one
WOKEN_IDLE_CAP_SECONDS = 5.0  # a loop woken by an event for its work: it polls for the rest


@dataclass
class StepGuard:
    """A loop's error boundary.

    :meth:`attempt` runs a step's duties in order and never raises: a duty that fails (the
    catalog or the disk did not answer) is logged, the rest of that step is skipped, and no
    step runs before ``resume_at``, which backs off exponentially while failures go on (as
    huey's consumer does) and clears on success.
    """

    backoff: RetryPolicy
    name: str = "step"
    failed_steps: int = 0  # steps in a row that failed
    resume_at: datetime | None = None  # no step before this, after a failed one
    clock: Callable[[], datetime] | None = None  # when a failure ends (else the step's start)

    def attempt(self, now: datetime, *duties: Duty) -> bool:
        """Run ``duties`` unless backing off; True when one of them did work."""
        if self.resume_at is not None and now < self.resume_at:
            return False
        worked = False
        try:
            for duty in duties:
                worked = duty() or worked
        except Exception as exc:  # the boundary: log, back off, go on
            self._back_off(now, exc)
            return worked
        if self.failed_steps:
            logger.info("%ss succeed again after %d failure(s)", self.name, self.failed_steps)
        self.failed_steps = 0
        self.resume_at = None
        return worked

    def _back_off(self, now: datetime, exc: Exception) -> None:
        self.failed_steps += 1
        # from when the step failed, not when it began: a step blocked 30 s by a locked
        # catalog would otherwise name a next try already past, and not back off at all
        failed_at = self.clock() if self.clock is not None else now
        self.resume_at = max(now, failed_at) + self.backoff.delay(self.failed_steps)
        # a BonectError's message is for operators; another's may quote SQL parameters
        why = str(exc) if isinstance(exc, BonectError) else type(exc).__name__
        log = logger.warning if isinstance(exc, RetryableError) else logger.error
        log(
            "%s failed (%d in a row), next try at %s: %s",
            self.name,
            self.failed_steps,
            self.resume_at.isoformat(timespec="seconds"),
            why,
        )
        logger.debug("the %s's failure", self.name, exc_info=exc)


def run_loop(
    stop: threading.Event,
    step: Callable[[datetime], bool],
    guard: StepGuard,
    wake: threading.Event,
    clock: Callable[[], datetime],
    *,
    idle_cap: float = IDLE_CAP_SECONDS,
) -> None:
    """Call ``step(clock())`` until ``stop``: at once again after work, else wait on ``wake``
    for up to 50 ms doubling to ``idle_cap`` while idle; while ``guard`` backs off, only
    ``stop`` cuts the wait short."""
    idle = IDLE_FIRST_SECONDS
    while not stop.is_set():
        if step(clock()):
            idle = IDLE_FIRST_SECONDS
            continue
        if guard.resume_at is not None:
            stop.wait(timeout=max(0.0, (guard.resume_at - clock()).total_seconds()))
            continue
        wake.wait(timeout=idle)
        wake.clear()
        idle = min(idle * 2, idle_cap)

"""A dispatch job that failed before its pushes left (the engine or Redis down): retried every second
while its leases stand, then left to the retry loop.

A countdown that doubled at each failure (1, 2, 4, 8 s, up to 30 s) outlasted the outage it waited for:
chaos seed 5402 (0.8.6) had 37 tasks wait 8 s of countdown after a 7.6 s engine outage, and run only
when their leases ran out. A retry that finds the engine or Redis still down costs one failed request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import redis

from elastask.core.messages import DispatchJob
from elastask.errors import LedgerError
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: How far apart a failed job's retries are. Once its leases ran out it is tried once more (its tasks
#: then given back by itself, if the engine is back), then left to the retry loop.
EVERY_S = 1


def leases_ran_out(rt: Runtime, job: DispatchJob, error: Exception) -> bool:
    """True (and said) when the failed job is not retried again: its leases ran out (or it has none)."""
    end = _leases_end(job)
    if end is not None and _lease_clock(rt) <= end + timedelta(seconds=EVERY_S):
        return False
    log.warning(
        "dispatch job for %s failed before pushing and its leases have run out: the retry loop takes its "
        "%d task(s) back: %s",
        job.owner_id,
        len(job.tasks),
        error,
    )
    return True


def say_retrying(job: DispatchJob, retries: int, error: Exception) -> None:
    """The warning for a job retried after a failure: at its 1st, 2nd, 3rd, 5th, 9th... (an outage says so
    once, not every second)."""
    if retries & (retries - 1) == 0:
        end = _leases_end(job)
        log.warning(
            "dispatch job for %s failed before pushing, retrying every %ds until its leases run out (%s): %s",
            job.owner_id,
            EVERY_S,
            end.strftime("%H:%M:%S") if end is not None else "-",
            error,
        )


def _leases_end(job: DispatchJob) -> datetime | None:
    try:
        return job.leases_end()
    except ValueError:  # a retryAt this version did not write: its tasks are the retry loop's
        return None


def _lease_clock(rt: Runtime) -> datetime:
    """Redis's clock, the leases' own; this machine's when Redis is what failed (it only bounds retries)."""
    try:
        return rt.now()
    except (LedgerError, redis.RedisError):
        return datetime.now(UTC)

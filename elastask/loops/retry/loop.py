"""The retry loop: tasks whose lease (``retryAt``) ran out without an outcome from Kibana.

Run by beat every ``retry_interval`` under a Redis lock. Each expired task is, with a conditional
write on the version read: retried (back to ``idle``, one-shot tasks after a backoff), failed for
good (one-shot tasks that used every attempt; kept with status ``failed``, the reason logged and
kept in Redis for ``elastask``'s operators), or moved to its next interval (recurring tasks are
never failed). A 409 means Kibana wrote its outcome in the same instant: Kibana wins.

The loop also reports task documents no loop would ever pick up (unknown status, idle without
``runAt``), once per quarantine period each.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from elastask import keys
from elastask.core import policy, queries
from elastask.core.documents import STATUSES, TaskDocument, parse_hit
from elastask.errors import DocumentError
from elastask.loops.dispatch.push_markers import GIVEN_BACK
from elastask.loops.retry.orphans import take_back_orphans
from elastask.parts.cadence import Cadence
from elastask.parts.failures import record_failure
from elastask.parts.locks import exclusive
from elastask.parts.quarantine import quarantined, report_malformed
from elastask.parts.redis_errors import redis_errors
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

AUDIT_SIZE = 100
AUDIT_EVERY_S = 60


@dataclass
class RetrySummary:
    """The counts of one retry cycle."""

    ran: bool = True
    expired: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    skipped: int = 0
    unclaimable: int = 0
    #: Claims of dead workers given back, never pushed (loops/retry/orphans.py).
    orphans: int = 0
    #: Pushes of dead workers in flight at their death, unanswered: left to their leases.
    orphans_in_flight: int = 0
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_expired_leases(rt: Runtime, now: datetime) -> RetrySummary:
    """One retry cycle; a cycle already running elsewhere makes this a no-op."""
    started = time.monotonic()
    with exclusive(rt.redis, keys.RETRY_LOCK, max(30_000, 10 * rt.settings.retry_interval_ms)) as lock:
        if not lock.taken:
            return RetrySummary(ran=False)
        taken = take_back_orphans(rt, now)
        summary = RetrySummary(orphans=taken.returned, orphans_in_flight=taken.in_flight)
        _retry_cycle(rt, now, summary)
        # The audit looks for documents no loop would pick up; once a minute is plenty.
        if rt.redis.set(keys.AUDIT_DUE, 1, nx=True, ex=AUDIT_EVERY_S):
            summary.unclaimable = audit_unclaimable(rt, now)
            summary.outcomes["failed"] = summary.outcomes.get("failed", 0) + fail_exhausted_one_shots(rt, now)
    summary.duration_ms = (time.monotonic() - started) * 1000
    if summary.expired or summary.skipped or summary.unclaimable or summary.orphans:
        log.info(
            "retry cycle: expired=%d retried=%d failed=%d rescheduled=%d returned(never pushed)=%d conflicts=%d "
            "skipped(malformed)=%d unclaimable=%d returned(dead worker)=%d duration=%.0fms",
            summary.expired,
            summary.outcomes.get("retry", 0),
            summary.outcomes.get("failed", 0),
            summary.outcomes.get("rescheduled", 0),
            summary.outcomes.get("returned", 0),
            summary.conflicts,
            summary.skipped,
            summary.unclaimable,
            summary.orphans,
            summary.duration_ms,
        )
    return summary


def _retry_cycle(rt: Runtime, now: datetime, summary: RetrySummary) -> RetrySummary:
    # A lease is over at retryAt plus a grace: Kibana times a run from its start, a moment after
    # the claim (a push that waited longer than the grace renewed its lease), so it may still be
    # running at retryAt itself.
    grace_s = math.ceil(policy.LEASE_GRACE.total_seconds())
    body = queries.expired_leases(
        grace_s=grace_s, size=rt.settings.claim_batch_size, exclude_ids=quarantined(rt.redis, now)
    )
    hits = rt.store.search_hits(body, "searching expired leases")
    summary.expired = len(hits)
    docs: list[TaskDocument] = []
    for hit in hits:
        try:
            docs.append(parse_hit(hit))
        except DocumentError as e:
            summary.skipped += 1
            report_malformed(rt.redis, e, now)
    unpushed = unpushed_claims(rt, docs)
    plans: list[tuple[TaskDocument, policy.Expiry]] = []
    for doc in docs:
        if doc.id in unpushed:
            plans.append((doc, policy.attempt_returned(doc)))
            continue
        plans.append((doc, lost_run_expiry(rt, doc, now)))
    outcomes, written = write_expiries(rt, plans, now)
    summary.conflicts = len(plans) - len(written) - outcomes.pop("error", 0)
    summary.outcomes = dict(outcomes)
    return summary


def lost_run_expiry(
    rt: Runtime, doc: TaskDocument, now: datetime, why: str = "lease expired without an outcome"
) -> policy.Expiry:
    """The next state of a task whose run was lost, under its type's attempts and the retry delays."""
    retry = policy.RetryPolicy.for_type(rt.settings, doc.task_type)
    return policy.on_lease_expired(doc, now, retry, rng=rt.rng, why=why)


def write_expiries(
    rt: Runtime, plans: Sequence[tuple[TaskDocument, policy.Expiry]], now: datetime
) -> tuple[Counter[str], list[TaskDocument]]:
    """Write each ended lease's next state (conditional on the version read); the count per outcome
    ("error" for writes that failed) and the documents written.

    A conflict or a missing document is not counted: Kibana's outcome landed first (it wins), or the
    search was stale. Either way the slot is not ours to free: the claim loop's reconcile decides.
    """
    results = rt.store.bulk_update_tasks([(doc, expiry.fields) for doc, expiry in plans])
    outcomes: Counter[str] = Counter()
    written = []
    for (doc, expiry), result in zip(plans, results, strict=True):
        if result.conflict or result.missing:
            continue
        if not result.ok:
            log.error("ending the lease of %r failed: %s %s", doc.id, result.status, result.error)
            outcomes["error"] += 1
            continue
        outcomes[expiry.outcome] += 1
        written.append(doc)
        if expiry.outcome == "failed":
            record_failure(rt.redis, doc.id, now, expiry.reason, owner_id=doc.owner_id, task_type=doc.task_type)
        else:
            log.info("task %r (%s): %s", doc.id, doc.task_type, expiry.reason)
    if outcomes["retry"] or outcomes["rescheduled"] or outcomes["returned"]:
        Cadence(rt.redis).wake()  # tasks went back to idle: a resting claim loop looks again now
    return outcomes, written


def unpushed_claims(rt: Runtime, docs: Sequence[TaskDocument]) -> set[str]:
    """The expired leases elastask claimed and never pushed: a claim marker for their version, no push marker.

    Their dispatch job was lost before any push (ETA jobs a worker drops when its broker connection
    resets, a job whose worker died before it started): the run never began, so the attempt is
    returned. The markers are Redis's: when Redis lost its data since the claim (a restart, a
    failover, also one to a replica that missed the last writes) the claim marker is gone or of an
    older epoch than the ledger's, and the lease counts as an attempt, as before. So does a claim
    Kibana made itself.

    Redis not answering (a reply lost, a connection dropped) raises ``LedgerError``: the markers are
    there, only unread, and a lease ended now would count an attempt its task may never have made. The
    caller ends none of these leases and judges them again on its next turn (found by the simulation:
    seed 180047, a one-shot task failed for attempts that never reached Kibana).
    """
    versioned = [d for d in docs if d.seq_no is not None]
    if not versioned:
        return set()
    pipe = rt.redis.pipeline(transaction=False)
    pipe.get(keys.LEDGER_EPOCH)
    for doc in versioned:
        assert doc.seq_no is not None
        pipe.get(keys.claim_marker(doc.id, doc.seq_no))
        pipe.get(keys.push_marker(doc.id, doc.seq_no))
    if not rt.ledger.claims_current():
        return set()  # Redis lost data since (not rebuilt yet): the leases count as attempts
    with redis_errors("reading claim and push markers"):
        epoch, *markers = pipe.execute()
    claimed, pushed = markers[0::2], markers[1::2]
    # A marker the retry loop set when it took the claim back from a dead worker is no push either.
    return {
        d.id
        for d, c, p in zip(versioned, claimed, pushed, strict=True)
        if epoch is not None and c == epoch and p in (None, GIVEN_BACK)
    }


def audit_unclaimable(rt: Runtime, now: datetime) -> int:
    """Report documents with an unknown status or an idle one without runAt; returns how many exist."""
    hits = rt.store.search_hits(queries.unclaimable(size=AUDIT_SIZE), "auditing unclaimable tasks")
    for hit in hits:
        task = hit.get("_source", {}).get("task", {})
        doc_id = str(hit.get("_id"))
        status = task.get("status")
        if not isinstance(status, str) or status not in STATUSES:
            report_malformed(rt.redis, DocumentError(doc_id, "task.status", "unknown status", task.get("status")), now)
        else:
            report_malformed(rt.redis, DocumentError(doc_id, "task.runAt", "idle task without runAt", None), now)
    return len(hits)


def fail_exhausted_one_shots(rt: Runtime, now: datetime) -> int:
    """Fail idle one-shot tasks at or over their maximum attempts (no claim would ever take them).

    They appear when ``max_attempts`` was lowered, or Kibana left a task idle after its own last
    attempt. Conditional writes; returns how many were failed.

    An rrule task is recurring and never failed, but the engine cannot tell it from a one-shot task
    (``schedule.rrule`` is not indexed): one found here gets its attempts reset instead, so the claim
    search, which leaves out tasks at their maximum unless they have an interval, takes it again.
    """
    settings = rt.settings
    body = queries.exhausted_one_shots(
        size=AUDIT_SIZE,
        default_max_attempts=settings.max_attempts,
        max_attempts_by_type=settings.max_attempts_by_type(),
    )
    docs = []
    for hit in rt.store.search_hits(body, "searching one-shot tasks out of attempts"):
        try:
            docs.append(parse_hit(hit))
        except DocumentError as e:
            report_malformed(rt.redis, e, now)
    plans = [(doc, {"attempts": 0} if doc.is_recurring else {"status": "failed"}) for doc in docs]
    results = rt.store.bulk_update_tasks(plans)
    failed = 0
    for (doc, fields), result in zip(plans, results, strict=True):
        if not result.ok:
            continue
        if "attempts" in fields:
            log.info("rrule task %r was idle at %d attempts; attempts reset so it runs again", doc.id, doc.attempts)
            continue
        failed += 1
        maximum = settings.for_type(doc.task_type).max_attempts
        reason = f"idle one-shot task with {doc.attempts} attempts, at or over the maximum of {maximum}"
        record_failure(rt.redis, doc.id, now, reason, owner_id=doc.owner_id, task_type=doc.task_type)
    return failed

"""What becomes of a push: each task's outcome recorded, slots freed where the write applied.

accepted: keep the lease. refused: back to ``idle`` with the attempt returned, slot freed, node
health updated. rejected (a 4xx about the task itself): the attempt is burned, the task is retried
after Kibana's delay or fails at its maximum, the node stays in rotation. ambiguous: keep the lease
until ``retryAt``. A slot is freed only where the write applied (or the document is gone).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from elastask.core import policy
from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date, parse_interval_ms
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.errors import LedgerError, StoreError
from elastask.logs import bound
from elastask.loops.dispatch.push_markers import mark_answered, switch_off_pushes
from elastask.parts.cadence import Cadence
from elastask.parts.failures import record_failure
from elastask.parts.nodes import Node
from elastask.parts.push_outcome import PushOutcome, PushResult
from elastask.parts.store import VersionedUpdate, WriteResult
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


class DispatchOutcome(StrEnum):
    """What became of one task of a dispatch job; its value is the metrics' ``outcome`` label and the logs' word."""

    #: The push's own outcome (parts/push_outcome.py's PushOutcome).
    ACCEPTED = "accepted"
    REFUSED = "refused"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"
    #: Not pushed: its lease no longer covered a run (given back).
    EXPIRED = "expired"
    #: Not pushed: its node is no longer configured (given back).
    UNKNOWN_NODE = "unknown-node"
    #: Not pushed: its type or node was paused since the claim (given back).
    PAUSED = "paused"
    #: Not pushed: the real-time read of its version failed (its lease decides).
    UNREAD = "unread"
    #: Not pushed: its document is no longer this job's claim (taken back or claimed again).
    MOVED_ON = "moved-on"
    #: Not pushed: this claim was pushed once already (a redelivered job).
    DUPLICATE = "duplicate"
    #: Claimed ahead: left to the push schedule, pushed at its runAt.
    SCHEDULED = "scheduled"
    #: Pushed, not answered within the job's wait: settled when it answers.
    LATE = "late"
    #: Pushed, but its outcome could not be recorded (engine or Redis down): its lease decides.
    UNSETTLED = "unsettled"


@dataclass
class DispatchReport:
    """What one dispatch job did: an outcome per task, and the start drift of the accepted ones."""

    outcomes: dict[str, DispatchOutcome] = field(default_factory=dict)  # task id -> outcome
    #: (taskType, start drift in seconds) of every accepted push.
    drifts: list[tuple[str, float]] = field(default_factory=list)

    @property
    def drifts_s(self) -> list[float]:
        return [drift for _type, drift in self.drifts]

    def counts(self) -> Counter[DispatchOutcome]:
        return Counter(self.outcomes.values())


def answered(report: DispatchReport) -> bool:
    """True when the node answered any push of this job (accepted it, or rejected the task itself)."""
    return any(outcome in (DispatchOutcome.ACCEPTED, DispatchOutcome.REJECTED) for outcome in report.outcomes.values())


def settle_safely(
    rt: Runtime,
    node: Node,
    tasks: Sequence[ClaimedTask],
    results: Sequence[PushResult | None],
    now: datetime,
    report: DispatchReport,
) -> None:
    """Record each push's outcome (``_record``), where a failing engine or Redis leaves the leases to decide.

    The pushes have left: retrying the job could push them again where Redis lost their markers
    meanwhile, so an error here is logged, never raised (each lease runs out; the retry loop takes
    the task back, ambiguous at worst, never a second run at once).
    """
    mark_answered(rt, [task for task, r in zip(tasks, results, strict=True) if r is not None and r.known])
    try:
        _record(rt, node, list(zip(tasks, results, strict=True)), now, report)
    except (StoreError, LedgerError) as e:
        log.error(
            "recording the push outcomes of %d task(s) for %s failed; their leases decide: %s", len(tasks), node.url, e
        )
        for task in tasks:
            report.outcomes.setdefault(task.doc_id, DispatchOutcome.UNSETTLED)


def _record(
    rt: Runtime,
    node: Node,
    pushes: Sequence[tuple[ClaimedTask, PushResult | None]],
    now: datetime,
    report: DispatchReport,
) -> None:
    """Record each push's outcome: keep accepted leases, give refused and unsent tasks back, keep ambiguous leases.

    A node that accepted a push (or rejected a task itself: it answered) is healthy; counting failures
    is the job's, once for all its pushes (``count_failure``).
    """
    refused, rejected, unsent = [], [], []
    for task, result in pushes:
        if result is None:
            report.outcomes[task.doc_id] = DispatchOutcome.EXPIRED
            unsent.append(task)
            continue
        report.outcomes[task.doc_id] = DispatchOutcome(result.outcome.value)
        if result.outcome is PushOutcome.ACCEPTED:
            # Start drift as Kibana's health API defines it: when the run started (at once) - runAt.
            drift = max(0.0, (now - parse_date(task.body["runAt"])).total_seconds())
            report.drifts.append((str(task.body.get("taskType", "")), drift))
        elif result.outcome is PushOutcome.REFUSED:
            warn(task, "task %r: push refused, back to idle without burning an attempt: %s", task.doc_id, result.detail)
            refused.append(task)
        elif result.outcome is PushOutcome.REJECTED:
            rejected.append((task, result))
        else:
            warn(task, "task %r: push ambiguous, lease kept until %s: %s", task.doc_id, task.retry_at, result.detail)
    if unsent:
        log.warning(
            "%d task(s) for %s waited for a push thread until their lease no longer covered a run; "
            "giving them back: %s",
            len(unsent),
            node.owner_id,
            ", ".join(repr(t.doc_id) for t in unsent),
        )
    give_back_tasks(rt, node.owner_id, [*refused, *unsent])
    _burn_attempts(rt, node.owner_id, rejected, now)
    if any(r is not None and r.outcome in (PushOutcome.ACCEPTED, PushOutcome.REJECTED) for _, r in pushes):
        rt.nodes.record_success(node)


def count_failure(rt: Runtime, node: Node, results: Sequence[PushResult]) -> None:
    """Every push of one job failed: one failure for the node's breaker (per job, not per task).

    Never raises: the pushes have left, and a job retried for a Redis error here would push again
    where Redis lost their markers meanwhile. The breaker misses one failure at worst.
    """
    if not results:
        return
    refused = [r for r in results if r.connection_refused]
    worst = refused[0] if refused else results[0]
    try:
        rt.nodes.record_failure(node, worst.detail, hard=bool(refused))
    except LedgerError as e:
        log.warning("could not count a failed dispatch job against %s in Redis: %s", node.url, e)


def _burn_attempts(
    rt: Runtime, owner_id: str, rejected: Sequence[tuple[ClaimedTask, PushResult]], now: datetime
) -> None:
    """Kibana rejected these tasks themselves: the attempt counted at claim stays, so they end after the maximum.

    Back to idle after Kibana's retry delay (a recurring one: now, or its next interval after the
    maximum), or ``failed`` (one-shot, at the maximum), in one conditional ``_bulk``.
    """
    if not rejected:
        return
    plans = []
    for task, result in rejected:
        task_type = str(task.body.get("taskType"))
        schedule = task.body.get("schedule")
        interval = schedule.get("interval") if isinstance(schedule, dict) else None
        plan = policy.after_failed_attempt(
            task.attempts,
            isinstance(schedule, dict),
            parse_interval_ms(interval) if isinstance(interval, str) else None,
            now,
            f"Kibana rejected the push: {result.detail}",
            policy.RetryPolicy.for_type(rt.settings, task_type),
            rng=rt.rng,
        )
        warn(task, "task %r: %s", task.doc_id, plan.reason)
        plans.append((task, plan))
    writes = rt.store.bulk_update_versions(
        [VersionedUpdate(task.doc_id, task.seq_no, task.primary_term, plan.fields) for task, plan in plans]
    )
    for (task, plan), write in zip(plans, writes, strict=True):
        if write.ok and plan.outcome == "failed":
            task_type = str(task.body.get("taskType"))
            record_failure(rt.redis, task.doc_id, now, plan.reason, owner_id=owner_id, task_type=task_type)
    _release_where_ours(rt, owner_id, [task for task, _ in plans], writes)


def give_back_tasks(rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask]) -> None:
    """Return never-pushed tasks to idle (attempt returned) where still our claim; free their slots.

    A conflict or 404 means the task moved on (the retry loop or Kibana got there first): nothing
    to give back for it.
    """
    if not tasks:
        return
    results = rt.store.bulk_update_versions(
        [
            VersionedUpdate(task.doc_id, task.seq_no, task.primary_term, policy.release_fields_for(task.attempts))
            for task in tasks
        ],
    )
    _release_where_ours(rt, owner_id, tasks, results)
    Cadence(rt.redis).wake()  # due again now: a resting claim loop must not wait its idle interval


#: A push marker's value when the claim was given back instead of pushed (loops/retry/loop.py reads it: no attempt).
def give_back_unsent(rt: Runtime, job: DispatchJob) -> None:
    """A dispatch job the broker may or may not have taken (its send raised): switch its pushes off,
    then give back its tasks. Had the send applied, the job finds its claims given back and pushes none."""
    now_ms = epoch_ms(rt.now())
    lease_left = {t.doc_id: max(0, epoch_ms(parse_date(t.retry_at)) - now_ms) for t in job.tasks}
    switched = switch_off_pushes(rt, [(t.doc_id, t.claim, lease_left[t.doc_id]) for t in job.tasks])
    give_back_tasks(rt, job.owner_id, [t for t in job.tasks if (t.doc_id, t.claim) in switched])


def _release_where_ours(
    rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask], results: Sequence[WriteResult]
) -> None:
    """Free the slots of the tasks whose write applied (or whose document is gone).

    A 409 means the document moved on since this job's claim: a job redelivered after the visibility
    timeout, or one that waited past its lease, while the same task was claimed again, possibly for
    this very node. The slot then belongs to that newer lease and is not ours to free; nor is it when
    the write applied and this process paused before the release while the slot was freed and taken
    again: each slot is freed only while it is still this claim's (the ledger's fence).
    """
    mine = [task.doc_id for task, r in zip(tasks, results, strict=True) if r.ok or r.missing]
    rt.ledger.release(owner_id, mine, claims={task.doc_id: task.claim for task in tasks})


def warn(task: ClaimedTask, message: str, *args: object) -> None:
    """A warning about one task, with its id bound (JSON logs carry ``task_id``)."""
    with bound(task_id=task.doc_id):
        log.warning(message, *args)

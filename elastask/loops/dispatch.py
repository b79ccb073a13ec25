"""The dispatch job: push one claim cycle's tasks for one Kibana node to its ``_run_now``.

A claim cycle sends one job per node with every task it claimed for that node (at most the node's
free capacity; tasks claimed ahead of their runAt go in one job per node and 25 ms step, with an
ETA); the job pushes them in parallel. Per task:

- The lease ran out while the job waited in its queue: the task goes back to ``idle`` (attempt
  returned) with a conditional write; it never reached Kibana. A claim's lease is Kibana's plus a
  slack (``policy.dispatch_slack_ms``, 1-5 s) for the way to the node; a job that waited longer
  than the slack renews its leases first (one conditional ``_bulk``), so each lease covers the
  whole run Kibana starts now; a task that changed meanwhile is not pushed.
- A task is pushed at most once per claim: a Redis marker keyed by the claim's version is set
  before the push, so a job redelivered after a worker died mid-push does not push it again (its
  lease runs out and the retry loop takes it back: ambiguous, never a double run).
- accepted: keep the lease. refused: back to ``idle`` with the attempt returned, slot freed, node
  health updated. rejected (a 4xx about the task itself): the attempt is burned, the task is retried
  after Kibana's delay or fails at its maximum, the node stays in rotation. ambiguous: keep the
  lease until ``retryAt``. A slot is freed only where the write applied (or the document is gone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from elastask import keys
from elastask.core import policy
from elastask.core.intervals import format_date, parse_date, parse_interval_ms
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.errors import LedgerError, StoreError
from elastask.logs import bound
from elastask.loops.cadence import Cadence
from elastask.loops.failures import record_failure
from elastask.parts.kibana import PushOutcome, PushResult
from elastask.parts.nodes import Node
from elastask.parts.redis_errors import redis_errors
from elastask.parts.store import VersionedUpdate, WriteResult, bulk_update_versions
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: The longest a job that started before its ETA waits for it (a claim looks at most 1 s ahead).
MAX_EARLY_WAIT_S = 1.0
#: How long a job waits for its pushes' answers (Kibana answers 204 before it runs anything); later
#: answers are settled on the push threads, so a hung node never holds a worker process longer.
PUSH_WAIT_S = 0.25


@dataclass
class DispatchReport:
    """What one dispatch job did: an outcome per task, and the start drift of the accepted ones."""

    outcomes: dict[str, str] = field(default_factory=dict)  # task id -> outcome
    drifts_s: list[float] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())


def push_claimed_tasks(
    rt: Runtime,
    job: DispatchJob,
    now: datetime,
    pool: Executor,
    *,
    wait_s: float = PUSH_WAIT_S,
    on_late: Callable[[DispatchReport], object] = lambda _report: None,
) -> DispatchReport:
    """Push a node's claimed tasks; each ends accepted, refused, rejected, ambiguous, expired, duplicate,
    unknown-node, or ``late`` (not answered within ``wait_s``).

    Tasks claimed ahead are never pushed before their runAt: the job carries an ETA, and if it still
    starts early (clocks of the claiming and the pushing machine differ), it waits the rest here.

    Kibana answers a push at once (204, before it runs anything), so the job waits for its answers
    only ``wait_s``: a node that does not answer holds its own push threads, never the worker process
    other nodes' jobs need. Late answers are settled (and passed to ``on_late``) when they arrive, on
    the push thread; until then their leases stand, as for an ambiguous push.
    """
    if job.not_before is not None:
        early_s = (parse_date(job.not_before) - now).total_seconds()
        if early_s > 0:
            time.sleep(min(early_s, MAX_EARLY_WAIT_S))
            now += timedelta(seconds=min(early_s, MAX_EARLY_WAIT_S))
    report = DispatchReport()
    node = _node(rt, job)
    if node is None:
        log.error("Kibana node %s is no longer configured; giving its %d task(s) back", job.node_url, len(job.tasks))
        give_back_tasks(rt, job.owner_id, job.tasks)
        report.outcomes.update(dict.fromkeys((j.doc_id for j in job.tasks), "unknown-node"))
        return report
    live: list[ClaimedTask] = []
    expired: list[ClaimedTask] = []
    for task in job.tasks:
        (live if now < parse_date(task.retry_at) else expired).append(task)
    if expired:
        log.warning(
            "%d task(s) for %s: lease ran out before the push (queue backed up?); giving them back: %s",
            len(expired),
            job.owner_id,
            ", ".join(repr(t.doc_id) for t in expired),
        )
        give_back_tasks(rt, job.owner_id, expired)
        report.outcomes.update(dict.fromkeys((j.doc_id for j in expired), "expired"))
    live = _renew_waited_leases(rt, job.owner_id, live, now, report)
    to_push = _mark_pushed(rt, live, now, report)
    clock = _JobClock(now, time.monotonic())
    futures = {pool.submit(_push_within_lease, rt, node, task, clock): task for task in to_push}
    answered, late = wait(futures, timeout=wait_s)
    on_time = [task for future, task in futures.items() if future in answered]
    _settle_safely(rt, node, on_time, _results(futures, on_time), now, report)
    if late:
        log.warning(
            "%d push(es) to %s not answered within %.1fs (Kibana answers at once: is the node overloaded or hung?); "
            "their leases stand, settled when they answer",
            len(late),
            node.url,
            wait_s,
        )
        report.outcomes.update(dict.fromkeys((futures[f].doc_id for f in late), "late"))
        _settle_when_answered(
            rt, node, {f: futures[f] for f in late}, clock, on_time_ok=_answered(report), on_late=on_late
        )
    elif not _answered(report):
        _count_failure(rt, node, [r for r in _results(futures, on_time) if r is not None])
    return report


def _results(
    futures: dict[Future[PushResult | None], ClaimedTask], tasks: Sequence[ClaimedTask]
) -> list[PushResult | None]:
    by_task = {task.doc_id: future for future, task in futures.items()}
    return [by_task[task.doc_id].result() for task in tasks]


def _answered(report: DispatchReport) -> bool:
    """True when the node answered any push of this job (accepted it, or rejected the task itself)."""
    return any(outcome in ("accepted", "rejected") for outcome in report.outcomes.values())


@dataclass(frozen=True)
class _JobClock:
    """The job's ``now``, moved on by the time elapsed since (one clock for every decision of a job)."""

    now: datetime
    started_monotonic: float

    def read(self) -> datetime:
        return self.now + timedelta(seconds=time.monotonic() - self.started_monotonic)


def _push_within_lease(rt: Runtime, node: Node, task: ClaimedTask, clock: _JobClock) -> PushResult | None:
    """Push one task if its lease still covers the whole run Kibana would start now; None: not sent.

    Checked right before the request leaves: a push that waited for a free push thread (more tasks
    than threads, a slow node) must not start a run its lease no longer covers.
    """
    if _remaining_ms(task, clock.read()) < task.lease_ms - task.slack_ms:
        return None
    return rt.kibana.push(node.config, task.body)


def _settle_when_answered(
    rt: Runtime,
    node: Node,
    late: dict[Future[PushResult | None], ClaimedTask],
    clock: _JobClock,
    *,
    on_time_ok: bool,
    on_late: Callable[[DispatchReport], object],
) -> None:
    """Settle the late pushes of one job together once the last one answers (on its push thread)."""
    remaining = [len(late)]
    lock = threading.Lock()

    def one_answered(_future: Future[PushResult | None]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        report = DispatchReport()
        tasks = list(late.values())
        results = [future.result() if not future.cancelled() else None for future in late]
        try:
            _settle_safely(rt, node, tasks, results, clock.read(), report)
            if not on_time_ok and not _answered(report):
                _count_failure(rt, node, [r for r in results if r is not None])
            on_late(report)
        except Exception:  # a push thread: log it, the leases decide
            log.exception("settling late pushes to %s failed; their leases decide", node.url)

    for future in late:
        future.add_done_callback(one_answered)


def _settle_safely(
    rt: Runtime,
    node: Node,
    tasks: Sequence[ClaimedTask],
    results: Sequence[PushResult | None],
    now: datetime,
    report: DispatchReport,
) -> None:
    """``_settle``, where a failing engine or Redis leaves the leases to decide.

    The pushes have left: retrying the job could push them again where Redis lost their markers
    meanwhile, so an error here is logged, never raised (each lease runs out; the retry loop takes
    the task back, ambiguous at worst, never a second run at once).
    """
    try:
        _settle(rt, node, tasks, results, now, report)
    except (StoreError, LedgerError) as e:
        log.error(
            "recording the push outcomes of %d task(s) for %s failed; their leases decide: %s", len(tasks), node.url, e
        )
        for task in tasks:
            report.outcomes.setdefault(task.doc_id, "unsettled")


def _renew_waited_leases(
    rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask], now: datetime, report: DispatchReport
) -> list[ClaimedTask]:
    """Renew the leases of jobs that waited (one conditional ``_bulk``) so they cover the run Kibana starts now.

    Kibana times a run from its start; without this, the retry loop could take a task back while
    Kibana still runs it. A task that changed while its job waited is not pushed.
    """
    # Kibana's run, started now, ends by now + its lease (lease_ms - slack_ms); the retry loop waits
    # until retryAt + policy.LEASE_GRACE. Renewing once the wait passes the slack keeps policy.LEASE_GRACE in hand.
    waited = [j for j in tasks if _remaining_ms(j, now) < j.lease_ms - j.slack_ms]
    if not waited:
        return list(tasks)
    renewed_until = {j.doc_id: now + timedelta(milliseconds=j.lease_ms) for j in waited}
    results = bulk_update_versions(
        rt.store,
        [
            VersionedUpdate(
                j.doc_id,
                j.seq_no,
                j.primary_term,
                {"retryAt": format_date(renewed_until[j.doc_id]), "startedAt": format_date(now)},
            )
            for j in waited
        ],
    )
    renewed: dict[str, ClaimedTask] = {}
    unrenewed: list[ClaimedTask] = []
    for task, result in zip(waited, results, strict=True):
        if result.ok and result.seq_no is not None and result.primary_term is not None:
            retry_at = format_date(renewed_until[task.doc_id])
            # The body Kibana gets says what the document says: the renewed lease, started now.
            body = {**task.body, "retryAt": retry_at, "startedAt": format_date(now)}
            renewed[task.doc_id] = replace(
                task,
                seq_no=result.seq_no,
                primary_term=result.primary_term,
                retry_at=retry_at,
                claim_seq_no=task.claim,
                body=body,
            )
        elif result.conflict or result.missing:
            _warn(
                task, "task %r changed while its dispatch job waited (%s); not pushing it", task.doc_id, result.status
            )
            report.outcomes[task.doc_id] = "expired"
        else:
            # The renewal itself failed (429, 5xx): the task never reached Kibana, so it goes back now
            # with its attempt, rather than waiting out its lease with its slot held.
            _warn(
                task,
                "renewing the lease of %r failed (%s %s); giving it back",
                task.doc_id,
                result.status,
                result.error,
            )
            report.outcomes[task.doc_id] = "expired"
            unrenewed.append(task)
    if unrenewed:
        give_back_tasks(rt, owner_id, unrenewed)
    until = {doc_id: renewed_until[doc_id] + policy.LEASE_GRACE for doc_id in renewed}
    slotted = rt.ledger.extend(owner_id, until, now)
    unslotted = [task for doc_id, task in renewed.items() if doc_id not in slotted]
    if unslotted:
        # Their slot ran out while the job waited and may be another task's now: pushing would break the cap.
        log.warning(
            "%d task(s) for %s lost their slot while their job waited; giving them back: %s",
            len(unslotted),
            owner_id,
            ", ".join(repr(t.doc_id) for t in unslotted),
        )
        bulk_update_versions(
            rt.store,
            [
                VersionedUpdate(t.doc_id, t.seq_no, t.primary_term, policy.release_fields_for(t.attempts))
                for t in unslotted
            ],
        )
        for task in unslotted:
            report.outcomes[task.doc_id] = "expired"
            del renewed[task.doc_id]
    if renewed:
        log.info(
            "%d task(s) for %s waited %.1fs in their queue; leases renewed",
            len(renewed),
            owner_id,
            max(_waited_s(j, now) for j in waited),
        )
    waited_ids = {j.doc_id for j in waited}
    return [renewed.get(j.doc_id, j) for j in tasks if j.doc_id in renewed or j.doc_id not in waited_ids]


def _mark_pushed(rt: Runtime, tasks: Sequence[ClaimedTask], now: datetime, report: DispatchReport) -> list[ClaimedTask]:
    """Set each claim's push marker (one pipelined round trip); a claim already marked is not pushed again."""
    pipe = rt.redis.pipeline(transaction=False)
    for task in tasks:
        marker_ttl_ms = max(_remaining_ms(task, now), task.lease_ms) + 60_000
        pipe.set(keys.pushed(task.doc_id, task.claim), 1, nx=True, px=marker_ttl_ms)
    with redis_errors("setting push markers"):
        markers = pipe.execute()
    fresh = []
    for task, was_set in zip(tasks, markers, strict=True):
        if was_set:
            fresh.append(task)
        else:
            _warn(task, "task %r: this claim was already pushed once (redelivered job); its lease decides", task.doc_id)
            report.outcomes[task.doc_id] = "duplicate"
    return fresh


def _settle(
    rt: Runtime,
    node: Node,
    tasks: Sequence[ClaimedTask],
    results: Sequence[PushResult | None],
    now: datetime,
    report: DispatchReport,
) -> None:
    """Record each push's outcome: keep accepted leases, give refused and unsent tasks back, keep ambiguous leases.

    A node that accepted a push (or rejected a task itself: it answered) is healthy; counting failures
    is the job's, once for all its pushes (``_count_failure``).
    """
    refused, rejected, unsent = [], [], []
    for task, result in zip(tasks, results, strict=True):
        if result is None:
            report.outcomes[task.doc_id] = "expired"
            unsent.append(task)
            continue
        report.outcomes[task.doc_id] = result.outcome.value
        if result.outcome is PushOutcome.ACCEPTED:
            # Start drift as Kibana's health API defines it: when the run started (at once) - runAt.
            report.drifts_s.append(max(0.0, (now - parse_date(task.body["runAt"])).total_seconds()))
        elif result.outcome is PushOutcome.REFUSED:
            _warn(
                task, "task %r: push refused, back to idle without burning an attempt: %s", task.doc_id, result.detail
            )
            refused.append(task)
        elif result.outcome is PushOutcome.REJECTED:
            rejected.append((task, result))
        else:
            _warn(task, "task %r: push ambiguous, lease kept until %s: %s", task.doc_id, task.retry_at, result.detail)
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
    if any(r is not None and r.outcome in (PushOutcome.ACCEPTED, PushOutcome.REJECTED) for r in results):
        rt.nodes.record_success(node)


def _count_failure(rt: Runtime, node: Node, results: Sequence[PushResult]) -> None:
    """Every push of one job failed: one failure for the node's breaker (per job, not per task)."""
    if not results:
        return
    refused = [r for r in results if r.connection_refused]
    worst = refused[0] if refused else results[0]
    rt.nodes.record_failure(node, worst.detail, hard=bool(refused))


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
            max_attempts=rt.settings.for_type(task_type).max_attempts,
            base_delay_ms=rt.settings.retry_delay_ms,
            max_delay_ms=rt.settings.max_retry_delay_ms,
            rng=rt.rng,
        )
        _warn(task, "task %r: %s", task.doc_id, plan.reason)
        plans.append((task, plan))
    writes = bulk_update_versions(
        rt.store, [VersionedUpdate(j.doc_id, j.seq_no, j.primary_term, plan.fields) for j, plan in plans]
    )
    for (task, plan), write in zip(plans, writes, strict=True):
        if write.ok and plan.outcome == "failed":
            task_type = str(task.body.get("taskType"))
            record_failure(rt.redis, task.doc_id, now, plan.reason, owner_id=owner_id, task_type=task_type)
    _release_where_ours(rt, owner_id, [task for task, _ in plans], writes)


def _warn(task: ClaimedTask, message: str, *args: object) -> None:
    """A warning about one task, with its id bound (JSON logs carry ``task_id``)."""
    with bound(task_id=task.doc_id):
        log.warning(message, *args)


def _remaining_ms(task: ClaimedTask, now: datetime) -> int:
    return int((parse_date(task.retry_at) - now).total_seconds() * 1000)


def _waited_s(task: ClaimedTask, now: datetime) -> float:
    return (now - parse_date(task.body.get("startedAt") or task.retry_at)).total_seconds()


def _node(rt: Runtime, job: DispatchJob) -> Node | None:
    for config in rt.settings.kibana.hosts:
        if config.url == job.node_url:
            return Node(config, job.owner_id, rt.settings.capacity_units(config))
    return None


def give_back_tasks(rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask]) -> None:
    """Return never-pushed tasks to idle (attempt returned) where still our claim; free their slots.

    A conflict or 404 means the task moved on (the retry loop or Kibana got there first): nothing
    to give back for it.
    """
    if not tasks:
        return
    results = bulk_update_versions(
        rt.store,
        [VersionedUpdate(j.doc_id, j.seq_no, j.primary_term, policy.release_fields_for(j.attempts)) for j in tasks],
    )
    _release_where_ours(rt, owner_id, tasks, results)
    Cadence(rt.redis).wake()  # due again now: a resting claim loop must not wait its idle interval


def _release_where_ours(
    rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask], results: Sequence[WriteResult]
) -> None:
    """Free the slots of the tasks whose write applied (or whose document is gone).

    A 409 means the document moved on since this job's claim: a job redelivered after the visibility
    timeout, or one that waited past its lease, while the same task was claimed again, possibly for
    this very node. The slot then belongs to that newer lease and is not ours to free.
    """
    mine = [j.doc_id for j, r in zip(tasks, results, strict=True) if r.ok or r.missing]
    rt.ledger.release(owner_id, mine)

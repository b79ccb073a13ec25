"""Step 6 of a claim cycle: the dispatch jobs it sends, one per node.

A node's job carries every task the cycle claimed for it. Tasks due now are pushed when the job
runs; tasks claimed ahead of their runAt are pushed at their runAt rounded up to a 25 ms step, by
the job's worker process (parts/push_schedule.py). A job whose tasks are all ahead carries a Celery
ETA, its first step, so it waits in the broker's worker rather than in a pool process.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

import redis

from elastask.core import policy
from elastask.core.advice import interval_advice
from elastask.core.clock import epoch_ms
from elastask.core.documents import TaskDocument
from elastask.core.intervals import format_date
from elastask.core.messages import ClaimedTask, DispatchJob, run_now_body
from elastask.errors import LedgerError
from elastask.parts.nodes import Node
from elastask.parts.worker_claims import SENDING_MS, WorkerClaims
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def enqueue_jobs(
    rt: Runtime,
    now: datetime,
    nodes: Sequence[Node],
    claimed: Sequence[tuple[policy.Assignment, TaskDocument]],
    enqueue: Callable[[DispatchJob], None],
) -> None:
    """One dispatch job per node; tasks claimed ahead are pushed at their runAt, in 25 ms steps."""
    by_owner = {n.owner_id: n for n in nodes}
    jobs: dict[str, list[tuple[datetime | None, ClaimedTask]]] = defaultdict(list)
    for assignment, doc in claimed:
        _advise_on_interval(rt, doc)
        slack_ms = policy.dispatch_slack_ms(assignment.task, rt.settings.for_type(doc.task_type).timeout_ms)
        task = _claimed_task(doc, by_owner[assignment.owner_id], slack_ms)
        jobs[assignment.owner_id].append((policy.push_step(doc.run_at, now), task))
    to_send = []
    for owner_id, steps in jobs.items():
        first = None if any(at is None for at, _ in steps) else min(at for at, _ in steps if at is not None)
        tasks = tuple(task for _, task in sorted(steps, key=lambda step: step[0] or now))
        to_send.append(DispatchJob(owner_id, by_owner[owner_id].url, tasks, format_date(first) if first else None))
    _hold_until_received(rt, to_send)
    for job in to_send:
        enqueue(job)


def _hold_until_received(rt: Runtime, jobs: Sequence[DispatchJob]) -> None:
    """This worker holds the jobs it sends until a worker receives them: if it dies first, the retry
    loop gives their claims back (loops/retry/orphans.py). Best effort: without the record, the leases decide."""
    if rt.worker_id is None or not jobs:
        return
    try:
        # Redis's clock (every lease's): a simulated or skewed worker keeps the record as long as meant.
        WorkerClaims(rt.redis).hold(rt.worker_id, jobs, epoch_ms(rt.now()) + SENDING_MS)
    except (redis.RedisError, LedgerError) as e:
        log.warning("could not record the dispatch jobs this worker sends (if it dies, their leases decide): %s", e)


def _advise_on_interval(rt: Runtime, doc: TaskDocument) -> None:
    """Warn once per process about a task type that falls due more often than the claim loop looks."""
    interval_ms = doc.schedule.interval_ms if doc.schedule is not None else None
    if interval_ms is None or doc.task_type in rt.warned:
        return
    advice = interval_advice(rt.settings, doc.task_type, interval_ms)
    if advice is not None:
        rt.warned.add(doc.task_type)
        log.warning("%s", advice)


def _claimed_task(doc: TaskDocument, node: Node, slack_ms: int) -> ClaimedTask:
    assert doc.seq_no is not None and doc.primary_term is not None and doc.retry_at is not None
    assert doc.started_at is not None
    lease_ms = int((doc.retry_at - doc.started_at).total_seconds() * 1000)
    return ClaimedTask(
        doc_id=doc.id,
        owner_id=node.owner_id,
        node_url=node.url,
        seq_no=doc.seq_no,
        primary_term=doc.primary_term,
        retry_at=format_date(doc.retry_at),
        attempts=doc.attempts,
        lease_ms=lease_ms,
        body=run_now_body(doc),
        slack_ms=slack_ms,
    )

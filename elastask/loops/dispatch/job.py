"""The dispatch job: push one claim cycle's tasks for one Kibana node to its ``_run_now``.

A claim cycle sends one job per node with every task it claimed for that node (at most the node's
free capacity); the job pushes the tasks due in parallel, and leaves the tasks claimed ahead of their
runAt to its process's push schedule, which pushes them at their runAt in 25 ms steps. Per task:

- The lease ran out while the job waited in its queue: the task goes back to ``idle`` (attempt
  returned) with a conditional write; it never reached Kibana. A job that waited longer than its
  leases' slack renews them first (loops/dispatch/renewal.py).
- A task is pushed at most once per claim: a Redis marker keyed by the claim's version is set
  before the push, so a job redelivered after a worker died mid-push does not push it again (its
  lease runs out and the retry loop takes it back: ambiguous, never a double run). That marker and the
  checks before it are loops/dispatch/push_checks.py.
- Each push's outcome (accepted, refused, rejected, ambiguous) is recorded by loops/dispatch/outcomes.py.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from elastask import tracing
from elastask.core import policy
from elastask.core.intervals import parse_date
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.errors import LedgerError, StoreError
from elastask.loops.dispatch.outcomes import (
    DispatchOutcome,
    DispatchReport,
    answered,
    count_failure,
    give_back_tasks,
    settle_safely,
)
from elastask.loops.dispatch.push_checks import leave_out_paused, mark_pushed, still_claimed
from elastask.loops.dispatch.push_markers import new_token
from elastask.loops.dispatch.renewal import remaining_ms, renew_waited_leases
from elastask.parts.nodes import Node
from elastask.parts.push_outcome import PushResult
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: The furthest ahead of its first push a job may start (a claim looks at most 1 s ahead); a job
#: released earlier than that (the clocks of the claiming and the pushing machine differ) waits again.
MAX_EARLY_WAIT_S = 1.0
#: How long a job waits for its pushes' answers (Kibana answers 204 before it runs anything); later
#: answers are settled on the push threads, so a hung node never holds a worker process longer.
PUSH_WAIT_S = 0.25


def push_claimed_tasks(
    rt: Runtime,
    job: DispatchJob,
    now: datetime,
    pool: Executor,
    *,
    wait_s: float = PUSH_WAIT_S,
    on_late: Callable[[DispatchReport], object] = lambda _report: None,
    token: str | None = None,
) -> DispatchReport:
    """Push a node's claimed tasks; each ends accepted, refused, rejected, ambiguous, expired, duplicate,
    unknown-node, or ``late`` (not answered within ``wait_s``).

    Tasks claimed ahead are never pushed before their runAt: they are ``scheduled``, pushed by the
    process's push schedule at their step (``policy.push_step``) of this job's clock, and settled (and passed
    to ``on_late``) when they answer; a job that starts early (the claiming machine's clock is ahead)
    schedules all of them.

    Kibana answers a push at once (204, before it runs anything), so the job waits for its answers
    only ``wait_s``: a node that does not answer holds its own push threads, never the worker process
    other nodes' jobs need. Late answers are settled (and passed to ``on_late``) when they arrive, on
    the push thread; until then their leases stand, as for an ambiguous push.

    An engine or Redis error before any push raises (``StoreError``, ``LedgerError``): the caller retries
    the job. ``token`` names this execution in the push markers it sets (a fresh one by default); when
    setting them failed and they may have applied (``PushMarkersUnknown``, carrying it), the caller
    retries ``job.retried_after(error.token)``, which takes them as its own.
    """
    report = DispatchReport()
    token = token or new_token(rt)
    # The job's one clock, started before its own engine and Redis calls: a slow renewal must not
    # leave the pushes believing they have more lease than they do.
    clock = _JobClock(now, rt.monotonic_ms(), rt.monotonic_ms)
    node = _node(rt, job)
    if node is None:
        log.error("Kibana node %s is no longer configured; giving its %d task(s) back", job.node_url, len(job.tasks))
        give_back_tasks(rt, job.owner_id, job.tasks)
        report.outcomes.update(dict.fromkeys((task.doc_id for task in job.tasks), DispatchOutcome.UNKNOWN_NODE))
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
        report.outcomes.update(dict.fromkeys((task.doc_id for task in expired), DispatchOutcome.EXPIRED))
    live = leave_out_paused(rt, node, live, clock.read(), report)
    live = renew_waited_leases(rt, job.owner_id, live, clock.read(), report)
    live = still_claimed(rt, live, report)
    due, ahead = _split_by_step(live, clock.read())
    # Marked first: a Redis error retries the job before anything is scheduled.
    due = mark_pushed(rt, due, clock.read(), report, token=token, inherited=job.marked_by)
    _schedule(rt, node, ahead, pool, clock, wait_s, on_late, report, token)
    if not due:
        return report
    futures = {pool.submit(_push_within_lease, rt, node, task, clock): task for task in due}
    done, late = wait(futures, timeout=wait_s)
    on_time = [task for future, task in futures.items() if future in done]
    settle_safely(rt, node, on_time, _results(futures, on_time), now, report)
    if late:
        _warn_unanswered(node, len(late), wait_s)
        report.outcomes.update(dict.fromkeys((futures[f].doc_id for f in late), DispatchOutcome.LATE))
        _settle_when_answered(
            rt, node, {f: futures[f] for f in late}, clock, on_time_ok=answered(report), on_late=on_late
        )
    elif not answered(report):
        count_failure(rt, node, [r for r in _results(futures, on_time) if r is not None])
    return report


def _warn_unanswered(node: Node, count: int, wait_s: float) -> None:
    log.warning(
        "%d push(es) to %s not answered within %.1fs (Kibana answers at once: is the node overloaded or hung?); "
        "their leases stand, settled when they answer",
        count,
        node.url,
        wait_s,
    )


def _split_by_step(
    tasks: Sequence[ClaimedTask], now: datetime
) -> tuple[list[ClaimedTask], dict[datetime, list[ClaimedTask]]]:
    """The tasks due ``now``, and the ones claimed ahead by their push step (``policy.push_step``)."""
    due: list[ClaimedTask] = []
    ahead: dict[datetime, list[ClaimedTask]] = {}
    for task in tasks:
        at = policy.push_step(parse_date(task.body["runAt"]), now)
        if at is None:
            due.append(task)
        else:
            ahead.setdefault(at, []).append(task)
    return due, ahead


def _schedule(
    rt: Runtime,
    node: Node,
    steps: dict[datetime, list[ClaimedTask]],
    pool: Executor,
    clock: _JobClock,
    wait_s: float,
    on_late: Callable[[DispatchReport], object],
    report: DispatchReport,
    token: str,
) -> None:
    """Leave the tasks claimed ahead to the push schedule, one entry per step (``scheduled``)."""
    for at, step in steps.items():
        report.outcomes.update(dict.fromkeys((task.doc_id for task in step), DispatchOutcome.SCHEDULED))
        deadline = clock.started_ms / 1000 + (at - clock.now).total_seconds()  # the push schedule's clock: s
        rt.push_schedule.at(deadline, functools.partial(_run_step, rt, node, step, pool, clock, wait_s, on_late, token))


def _run_step(
    rt: Runtime,
    node: Node,
    tasks: list[ClaimedTask],
    pool: Executor,
    clock: _JobClock,
    wait_s: float,
    on_late: Callable[[DispatchReport], object],
    token: str,
) -> None:
    """One scheduled step: its tasks pushed now (their runAt has come), settled when they answer.

    Paused since the job started: given back, as at the job's start. Push markers are set here, right
    before the pushes, as a job sets them for its due tasks: a task the process never pushed (it
    died first) has none, and the retry loop returns its attempt. Redis down (no marker can be set):
    nothing is pushed, the leases decide.
    """
    report = DispatchReport()
    try:
        tasks = leave_out_paused(rt, node, tasks, clock.read(), report, step=True)
        tasks = mark_pushed(rt, tasks, clock.now, report, token=token)
    except (LedgerError, StoreError) as e:
        log.warning("a scheduled push step for %s is not pushed; its leases decide: %s", node.url, e)
        return
    futures = {pool.submit(_push_within_lease, rt, node, task, clock): task for task in tasks}
    if not futures:
        on_late(report)
        return
    _settle_when_answered(rt, node, futures, clock, on_time_ok=False, on_late=on_late, report=report)

    def check_answered() -> None:
        unanswered = sum(1 for future in futures if not future.done())
        if unanswered:
            _warn_unanswered(node, unanswered, wait_s)

    rt.push_schedule.at(time.monotonic() + wait_s, check_answered)


def _results(
    futures: dict[Future[PushResult | None], ClaimedTask], tasks: Sequence[ClaimedTask]
) -> list[PushResult | None]:
    by_task = {task.doc_id: future for future, task in futures.items()}
    return [by_task[task.doc_id].result() for task in tasks]


@dataclass(frozen=True)
class _JobClock:
    """The job's ``now``, moved on by the time elapsed since (one clock for every decision of a job)."""

    now: datetime
    started_ms: float
    #: The process's monotonic clock (ms): the runtime's.
    monotonic_ms: Callable[[], float]

    def read(self) -> datetime:
        return self.now + timedelta(milliseconds=self.monotonic_ms() - self.started_ms)


def _push_within_lease(rt: Runtime, node: Node, task: ClaimedTask, clock: _JobClock) -> PushResult | None:
    """Push one task if its lease still covers the whole run Kibana would start now; None: not sent.

    Checked right before the request leaves: a push that waited for a free push thread (more tasks
    than threads, a slow node) must not start a run its lease no longer covers.
    """
    if remaining_ms(task, clock.read()) < task.lease_ms - task.slack_ms:
        return None
    attributes = {"elastask.task_id": task.doc_id, "elastask.task_type": str(task.body.get("taskType"))}
    with tracing.span(
        rt.tracer,
        "elastask.push",
        traceparent=task.body.get("traceparent") or None,
        attributes={**attributes, "url": node.url},
    ) as traced:
        if traced is None:
            return rt.kibana.push(node.config, task.body)
        # Kibana's run becomes a child of this push (its traceparent), itself a child of the task's own.
        result = rt.kibana.push(node.config, {**task.body, "traceparent": tracing.current_traceparent(rt.tracer) or ""})
        traced.set_attribute("elastask.outcome", result.outcome.value)
        return result


def _settle_when_answered(
    rt: Runtime,
    node: Node,
    late: dict[Future[PushResult | None], ClaimedTask],
    clock: _JobClock,
    *,
    on_time_ok: bool,
    on_late: Callable[[DispatchReport], object],
    report: DispatchReport | None = None,
) -> None:
    """Settle the late pushes of one job (or one scheduled step) together once the last one answers
    (on its push thread), into ``report`` (a new one by default)."""
    remaining = [len(late)]
    lock = threading.Lock()
    report = report if report is not None else DispatchReport()

    def one_answered(_future: Future[PushResult | None]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        tasks = list(late.values())
        results = [future.result() if not future.cancelled() else None for future in late]
        try:
            settle_safely(rt, node, tasks, results, clock.read(), report)
            if not on_time_ok and not answered(report):
                count_failure(rt, node, [r for r in results if r is not None])
            on_late(report)
        except Exception:  # a push thread: log it, the leases decide
            log.exception("settling late pushes to %s failed; their leases decide", node.url)

    for future in late:
        future.add_done_callback(one_answered)


def _node(rt: Runtime, job: DispatchJob) -> Node | None:
    for config in rt.settings.kibana.hosts:
        if config.url == job.node_url:
            return Node(config, job.owner_id, rt.settings.capacity_units(config))
    return None

"""The Celery tasks: thin wrappers that build the process's clients and call the dispatcher.

- ``elastask.claim`` (beat, every ``polling_interval``, queue ``elastask.claim``)
- ``elastask.retry`` (beat, every ``retry_interval``, queue ``elastask.retry``)
- ``elastask.dispatch`` (one per node per claim cycle, carrying the tasks claimed for that node, queue
  ``elastask.dispatch.<ownerId>``)
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import signals

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date
from elastask.core.lanes import Lane, lane_count
from elastask.core.messages import DispatchJob
from elastask.entry import dispatch_retries
from elastask.entry.celeryapp import get_app, process_of
from elastask.entry.publisher import background_publisher
from elastask.errors import LedgerError, PushMarkersUnknown, StoreError
from elastask.logs import bound
from elastask.loops.claim.loop import claim_every_lane
from elastask.loops.claim.summary import ClaimSummary
from elastask.loops.dispatch.job import MAX_EARLY_WAIT_S, PUSH_WAIT_S, push_claimed_tasks
from elastask.loops.dispatch.outcomes import DispatchOutcome, DispatchReport, give_back_unsent
from elastask.loops.retry.loop import retry_expired_leases
from elastask.ops.metrics import Metrics, summary_counts
from elastask.ops.recent import queue_started
from elastask.ops.usage import UsageRecorder, queue_runs_started
from elastask.parts.cadence import Cadence
from elastask.parts.worker_claims import WorkerClaims
from elastask.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)
app = get_app()

#: Task ids a dispatch job shows in Flower and the logs.
MAX_IDS_SHOWN = 10


def runtime() -> Runtime:
    """This process's clients, built after the fork of a prefork pool child."""
    process = process_of(app)
    if process.runtime is None or process.runtime[0] != os.getpid():
        rt = build_runtime(app.conf.elastask_settings)
        rt.worker_id = process.life.worker_id
        process.runtime = (os.getpid(), rt)
        _check_index(rt)
    return process.runtime[1]


def _check_index(rt: Runtime) -> None:
    """Kibana owns the index: say clearly if it is missing or lacks a field elastask queries."""
    try:
        for warning in rt.store.check_index():
            log.warning("%s", warning)
    except StoreError as e:
        log.error("%s", e)


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue_dispatch(job: DispatchJob, producer: Any = None, *, countdown_s: float | None = None) -> None:
    """Send a dispatch job to its node's queue; Flower shows only the task ids, never the bodies."""
    dispatch.apply_async(
        args=[job.as_dict()],
        queue=keys.queue(job.owner_id),
        argsrepr=_dispatch_argsrepr(job),
        producer=producer,
        # Tasks claimed ahead of their runAt: the worker holds the job until then.
        eta=parse_date(job.not_before) if job.not_before and countdown_s is None else None,
        countdown=countdown_s,
    )


@app.task(name="elastask.claim", bind=True, ignore_result=True)
def claim(self: Any) -> dict[str, Any]:
    """One claim cycle, and a refill session while a backlog waits (see loops/claim/loop.py)."""
    try:
        rt = runtime()
        stopping = shutting_down_check(rt, str(self.request.hostname or ""))
        now = rt.now()
        # The jobs go out from a thread with one producer of its own: the loop does not wait on the broker.
        unsent = functools.partial(give_back_unsent, rt)
        with background_publisher(enqueue_dispatch, app.producer_or_acquire, unsent) as publish:
            done = claim_every_lane(
                rt,
                now,
                publish,
                lanes(rt),
                lambda cycle: record_cycle(rt, cycle),
                sessions=sessions_allowed(),
                sending=publish.sending,
                stopping=stopping,
            )
        for lane, summary in done:
            if summary.ran and summary.backlog:
                follow_up(rt, at_once=summary.session_expired, lane=lane)
        if any(summary.resting for _, summary in done):
            Metrics(rt.redis).claim_succeeded(now)  # resting after a quiet cycle is a healthy loop
            UsageRecorder(rt.redis).sample_in_flight({}, epoch_ms(now))  # quiet time counts in the usage window
        ran = [summary for _, summary in done if summary.ran]
        return (ran[-1] if ran else done[-1][1]).as_dict()
    except (StoreError, LedgerError) as e:
        log.error("claim cycle failed, next one in %d ms: %s", app.conf.elastask_settings.polling_interval_ms, e)
        return {"ran": False, "error": str(e)}


def record_cycle(rt: Runtime, summary: ClaimSummary) -> None:
    """Metrics of one cycle (one that searched; a session's look only marks the loop alive)."""
    now = _now()
    metrics = Metrics(rt.redis)
    if summary.searched:
        metrics.record(summary_counts(summary), observations=[("claim_duration_seconds", summary.duration_ms / 1000)])
    if summary.ran:
        metrics.claim_succeeded(now)
        # A resting loop has nothing in flight: its sample (no units) counts the quiet time too.
        UsageRecorder(rt.redis).sample_in_flight(summary.in_flight_units, epoch_ms(now))


def sessions_allowed() -> bool:
    """Refill sessions hold a worker process for seconds: only where the dispatch jobs have another one."""
    processes = process_of(app).pool_size
    return processes is None or processes >= 2


def lanes(rt: Runtime) -> list[Lane]:
    """The claim lanes to try, in order: ``claim_lanes`` of them, at most one per live worker."""
    configured = rt.settings.claim_lanes
    count = 1 if configured == 1 else lane_count(configured, WorkerClaims(rt.redis).alive_count())
    return [Lane(index, count) for index in range(count)]


def follow_up(rt: Runtime, *, at_once: bool = False, lane: Lane | None = None) -> None:
    """Tasks wait for slots: one more claim cycle after busy_polling_interval (``at_once``: a refill
    session that ran out of time hands over now), not at beat's next tick; one pending per lane."""
    busy_ms = rt.settings.busy_polling_interval_ms
    index = 0 if lane is None else lane.index
    if busy_ms < rt.settings.polling_interval_ms and Cadence(rt.redis, index).follow_up(busy_ms):
        claim.apply_async(
            queue=keys.CLAIM_QUEUE,
            countdown=0 if at_once else busy_ms / 1000,
            expires=max(1.0, 2 * rt.settings.polling_interval_ms / 1000),
        )


def shutting_down_check(rt: Runtime, hostname: str, every_s: float = 0.25) -> Callable[[], bool]:
    """Whether this worker is shutting down (celeryapp.py marks it in Redis), read at most every ``every_s``."""
    key, checked, answer = keys.shutting_down(hostname), [0.0], [False]

    def stopping() -> bool:
        if not hostname or answer[0] or time.monotonic() - checked[0] < every_s:
            return answer[0]
        checked[0] = time.monotonic()
        try:
            answer[0] = bool(rt.redis.exists(key))
        except Exception:  # a hint only: a Redis error is the claim loop's to report
            return False
        return answer[0]

    return stopping


@app.task(name="elastask.retry", ignore_result=True)
def retry() -> dict[str, Any]:
    """One retry cycle for expired leases."""
    try:
        rt = runtime()
        summary = retry_expired_leases(rt, rt.now())
        Metrics(rt.redis).record(
            {
                "elastask_malformed_total": summary.skipped,
                "elastask_dead_worker_claims_total": summary.orphans,
                "elastask_dead_worker_in_flight_total": summary.orphans_in_flight,
            },
            labelled=[("elastask_retried_total", {"outcome": k}, n) for k, n in summary.outcomes.items()],
        )
        return summary.as_dict()
    except (StoreError, LedgerError) as e:
        log.error("retry cycle failed, next one in %d ms: %s", app.conf.elastask_settings.retry_interval_ms, e)
        return {"ran": False, "error": str(e)}


#: How long a process that stops waits for the pushes queued on its nodes' threads (Kibana answers at
#: once; a hung node's pushes that already left are ambiguous anyway, their leases decide).
DRAIN_PUSHES_S = 2.0 + PUSH_WAIT_S


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _push_what_is_scheduled(**_kwargs: Any) -> None:
    """A warm shutdown pushes the tasks this process scheduled (at most a second ahead), and the pushes
    queued on its nodes' push threads, before it exits: their jobs are acknowledged and their push
    markers set, so left here they would wait for their leases to run out."""
    built = process_of(app).runtime
    if built is None or built[0] != os.getpid():
        return
    rt = built[1]
    left = rt.push_schedule.drain(MAX_EARLY_WAIT_S + PUSH_WAIT_S)
    if left:
        log.warning("%d scheduled push step(s) not started before this process exits; their leases decide", left)
    unsent = rt.drain_pushes(DRAIN_PUSHES_S)
    if unsent:
        log.warning("%d push(es) not answered before this process exits; their leases decide", unsent)


def _dispatch_argsrepr(job: DispatchJob) -> str:
    """What Flower and task events show of a dispatch job: task ids only, never params or state."""
    ids = ", ".join(repr(task.doc_id) for task in job.tasks[:MAX_IDS_SHOWN])
    more = f", ... {len(job.tasks) - MAX_IDS_SHOWN} more" if len(job.tasks) > MAX_IDS_SHOWN else ""
    return f"([{ids}{more}])"


@app.task(name="elastask.dispatch", bind=True, ignore_result=True, max_retries=None)
def dispatch(self: Any, message: dict[str, Any]) -> dict[str, int]:
    """Push the tasks one claim cycle claimed for one Kibana node; returns the count per outcome.

    An engine or Redis failure before any push left retries the job every second while its leases
    stand (its task ids only shown); once pushes left, their outcomes are recorded or left to the
    leases, never pushed again.
    """
    rt, job = runtime(), DispatchJob.from_dict(message)
    try:
        now = rt.now()
        early_s = (parse_date(job.not_before) - now).total_seconds() if job.not_before else 0.0
        if early_s > MAX_EARLY_WAIT_S:
            # This worker's clock runs ahead of Redis's: Celery released the job early. Never push
            # before runAt, and never hold the process for it: the job waits its remaining time again.
            enqueue_dispatch(job, countdown_s=early_s)
            return {"early": len(job.tasks)}
        with bound(owner_id=job.owner_id):
            report = push_claimed_tasks(
                rt,
                job,
                now,
                rt.pushers(job.owner_id),
                on_late=lambda late: record_dispatch(rt, job, late, now),
            )
    except (StoreError, LedgerError) as e:
        if dispatch_retries.leases_ran_out(rt, job, e):
            return {"unsent": len(job.tasks)}
        dispatch_retries.say_retrying(job, self.request.retries or 0, e)
        # Its push markers may have applied (a reply lost): nothing was pushed, the retry takes them as its own.
        retry = (job.retried_after(e.token) if isinstance(e, PushMarkersUnknown) else job).as_dict()
        countdown = dispatch_retries.EVERY_S
        raise self.retry(args=[retry], exc=e, countdown=countdown, argsrepr=_dispatch_argsrepr(job)) from e
    if job.tasks and log.isEnabledFor(logging.DEBUG):
        started_at = job.tasks[0].body.get("startedAt")
        waited_ms = (now - parse_date(started_at)).total_seconds() * 1000 if started_at else -1
        log.debug(
            "dispatch job for %s: %d task(s), started %.0f ms after the claim, pushed in %.0f ms",
            job.owner_id,
            len(job.tasks),
            waited_ms,
            (rt.now() - now).total_seconds() * 1000,
        )
    return record_dispatch(rt, job, report, now)


def record_dispatch(rt: Runtime, job: DispatchJob, report: DispatchReport, now: datetime) -> dict[str, int]:
    """Usage and metrics of what a dispatch job's pushes did (called again for pushes answered late)."""
    counts = report.counts()
    counts.pop(DispatchOutcome.LATE, None)  # counted when they answer
    counts.pop(DispatchOutcome.SCHEDULED, None)  # counted when pushed, at their runAt
    accepted = [task for task in job.tasks if report.outcomes.get(task.doc_id) == DispatchOutcome.ACCEPTED]
    units = sum(rt.settings.for_type(str(task.body.get("taskType", ""))).cost for task in accepted)
    Metrics(rt.redis).record(  # with the usage, in one round trip; best effort: the pushes are settled
        labelled=[("elastask_dispatched_total", {"outcome": outcome}, n) for outcome, n in counts.items()],
        observations=[("start_drift_seconds", drift) for drift in report.drifts_s],
        also=lambda pipe: _queue_usage(pipe, job.owner_id, len(accepted), units, report, epoch_ms(now)),
    )
    return {str(outcome): n for outcome, n in report.counts().items()}


def _queue_usage(pipe: Any, owner_id: str, runs: int, units: int, report: DispatchReport, now_ms: int) -> None:
    """The usage (capacity estimation) and the recent starts (the console) of a job, on one pipeline."""
    queue_runs_started(pipe, owner_id, runs, units, now_ms)
    queue_started(pipe, owner_id, report.drifts, now_ms)

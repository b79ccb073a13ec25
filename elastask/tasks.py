"""The Celery tasks: thin wrappers that build the process's clients and call the dispatcher.

- ``elastask.claim`` (beat, every ``polling_interval``, queue ``elastask.claim``)
- ``elastask.retry`` (beat, every ``retry_interval``, queue ``elastask.retry``)
- ``elastask.dispatch`` (one per claimed task, queue ``elastask.dispatch.<ownerId>``)
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from elastask import keys
from elastask.celeryapp import get_app
from elastask.dispatcher.claim import DispatchJob, claim_available_tasks
from elastask.dispatcher.dispatch import job_from_dict, push_claimed_task
from elastask.dispatcher.retry import retry_expired_leases
from elastask.errors import LedgerError, StoreError
from elastask.intervals import parse_date
from elastask.logs import bound
from elastask.metrics import Metrics, summary_counts
from elastask.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)
app = get_app()

_runtime: tuple[int, Runtime] | None = None


def runtime() -> Runtime:
    """This process's clients, built after the fork of a prefork pool child."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), build_runtime(app.conf.elastask_settings))
        _check_index(_runtime[1])
    return _runtime[1]


def _check_index(rt: Runtime) -> None:
    """Kibana owns the index: say clearly if it is missing or lacks a field elastask queries."""
    try:
        for warning in rt.store.check_index():
            log.warning("%s", warning)
    except StoreError as e:
        log.error("%s", e)


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue_dispatch(job: DispatchJob, producer: Any = None) -> None:
    """Send a dispatch job to its node's queue; Flower shows only the task id, never the body."""
    dispatch.apply_async(
        args=[job.as_dict()], queue=keys.queue(job.owner_id), argsrepr=f"({job.doc_id!r})", producer=producer
    )


@app.task(name="elastask.claim", ignore_result=True)
def claim() -> dict[str, Any]:
    """One claim cycle."""
    now = _now()
    try:
        rt = runtime()
        # One producer (one broker connection) for every job this cycle enqueues.
        with app.producer_or_acquire() as producer:
            summary = claim_available_tasks(rt, now, lambda job: enqueue_dispatch(job, producer))
        if summary.ran:
            metrics = Metrics(rt.redis)
            metrics.record(
                summary_counts(summary), observations=[("claim_duration_seconds", summary.duration_ms / 1000)]
            )
            metrics.claim_succeeded(now)
        return summary.as_dict()
    except (StoreError, LedgerError) as e:
        log.error("claim cycle failed, next one in %d ms: %s", app.conf.elastask_settings.polling_interval_ms, e)
        return {"ran": False, "error": str(e)}


@app.task(name="elastask.retry", ignore_result=True)
def retry() -> dict[str, Any]:
    """One retry cycle for expired leases."""
    try:
        rt = runtime()
        summary = retry_expired_leases(rt, _now())
        Metrics(rt.redis).record(
            {"elastask_malformed_total": summary.skipped},
            labelled=[("elastask_retried_total", {"outcome": k}, n) for k, n in summary.outcomes.items()],
        )
        return summary.as_dict()
    except (StoreError, LedgerError) as e:
        log.error("retry cycle failed, next one in %d ms: %s", app.conf.elastask_settings.retry_interval_ms, e)
        return {"ran": False, "error": str(e)}


@app.task(
    name="elastask.dispatch",
    ignore_result=True,
    autoretry_for=(StoreError, LedgerError),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=10,
)
def dispatch(job: dict[str, Any]) -> str:
    """Push one claimed task to its Kibana node."""
    rt, claimed, now = runtime(), job_from_dict(job), _now()
    with bound(task_id=claimed.doc_id, owner_id=claimed.owner_id):
        outcome = push_claimed_task(rt, claimed, now)
    observations = []
    if outcome == "accepted":
        # Start drift as Kibana's health API defines it: when the run started (Kibana starts at once) - runAt.
        drift_s = (now - parse_date(claimed.body["runAt"])).total_seconds()
        observations.append(("start_drift_seconds", max(0.0, drift_s)))
    Metrics(rt.redis).record(
        labelled=[("elastask_dispatched_total", {"outcome": outcome}, 1)], observations=observations
    )
    return outcome

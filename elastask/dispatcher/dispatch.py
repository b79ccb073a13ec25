"""The dispatch job: push one claimed task to its Kibana node's ``_run_now``.

- The lease ran out while the job waited in its queue: the task goes back to ``idle`` (attempt
  returned) with a conditional write; it never reached Kibana. A job that waited more than a
  second renews the lease first (conditional write), so the lease covers the whole run Kibana
  starts now.
- A job is pushed at most once per claim: a Redis marker keyed by the claim's version is set
  before the push, so a job redelivered after a worker died mid-push is not pushed again (its
  lease runs out and the retry loop takes it back: ambiguous, never a double run).
- accepted: keep the lease. refused: back to ``idle`` with the attempt returned, slot freed, node
  health updated. ambiguous: keep the lease until ``retryAt``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from elastask import keys, policy
from elastask.dispatcher.claim import LEASE_GRACE, DispatchJob
from elastask.errors import ConflictError, DocumentMissingError
from elastask.intervals import format_date, parse_date
from elastask.kibana import PushOutcome
from elastask.nodes import Node
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: A job that waited in its queue longer than this renews its lease before pushing.
RENEW_AFTER_MS = 1000


def job_from_dict(data: dict[str, Any]) -> DispatchJob:
    """A DispatchJob from its JSON form in the Celery message."""
    return DispatchJob(**data)


def push_claimed_task(rt: Runtime, job: DispatchJob, now: datetime) -> str:
    """Push one task; returns the outcome: accepted, refused, ambiguous, expired, duplicate or unknown-node."""
    node = _node(rt, job)
    if node is None:
        log.error("task %r: Kibana node %s is no longer configured; giving the task back", job.doc_id, job.node_url)
        _give_back(rt, job)
        return "unknown-node"
    retry_at = parse_date(job.retry_at)
    if now >= retry_at:
        log.warning(
            "task %r: lease ran out before the push (queue of %s backed up?); giving it back", job.doc_id, job.owner_id
        )
        _give_back(rt, job)
        return "expired"
    remaining_ms = int((retry_at - now).total_seconds() * 1000)
    marker_ttl_ms = max(remaining_ms, job.lease_ms) + 60_000
    if not rt.redis.set(keys.pushed(job.doc_id, job.seq_no), 1, nx=True, px=marker_ttl_ms):
        log.warning("task %r: this claim was already pushed once (redelivered job); its lease decides", job.doc_id)
        return "duplicate"
    if remaining_ms < job.lease_ms - RENEW_AFTER_MS:
        renewed = _renew_lease(rt, job, now)
        if renewed is None:
            return "expired"
        job = renewed
    result = rt.kibana.push(node.config, job.body)
    if result.outcome is PushOutcome.ACCEPTED:
        rt.nodes.record_success(node)
        log.debug("task %r pushed to %s", job.doc_id, node.url)
        return "accepted"
    if result.outcome is PushOutcome.REFUSED:
        log.warning("task %r: push refused, back to idle without burning an attempt: %s", job.doc_id, result.detail)
        _give_back(rt, job)
        rt.nodes.record_failure(node, now, result.detail, hard=result.connection_refused)
        return "refused"
    log.warning("task %r: push ambiguous, keeping the lease until %s: %s", job.doc_id, job.retry_at, result.detail)
    rt.nodes.record_failure(node, now, result.detail, hard=False)
    return "ambiguous"


def _renew_lease(rt: Runtime, job: DispatchJob, now: datetime) -> DispatchJob | None:
    """The job waited in its queue: renew the lease so it covers the run Kibana starts now.

    Kibana times a run from its start; without this, the retry loop could take the task back
    while Kibana still runs it. A conditional write: if the task changed, it is not pushed.
    """
    retry_at = now + timedelta(milliseconds=job.lease_ms)
    try:
        seq_no, primary_term = rt.store.update_if_unchanged(
            job.doc_id, job.seq_no, job.primary_term, {"retryAt": format_date(retry_at)}
        )
    except (ConflictError, DocumentMissingError):
        log.warning("task %r changed while its dispatch job waited; not pushing it", job.doc_id)
        return None
    rt.ledger.extend(job.owner_id, job.doc_id, retry_at + LEASE_GRACE)
    log.info(
        "task %r waited %.1fs in its queue; lease renewed until %s",
        job.doc_id,
        (now - parse_date(job.body.get("startedAt") or job.retry_at)).total_seconds(),
        format_date(retry_at),
    )
    return replace(job, seq_no=seq_no, primary_term=primary_term, retry_at=format_date(retry_at))


def _node(rt: Runtime, job: DispatchJob) -> Node | None:
    for config in rt.settings.kibana.hosts:
        if config.url == job.node_url:
            return Node(config, job.owner_id, rt.settings.capacity_units(config))
    return None


def _give_back(rt: Runtime, job: DispatchJob) -> None:
    """Return a never-pushed task to idle (attempt returned) if it is still our claim; free its slot."""
    # A conflict or 404: it moved on (the retry loop or Kibana got there first); nothing to give back.
    with contextlib.suppress(ConflictError, DocumentMissingError):
        rt.store.update_if_unchanged(job.doc_id, job.seq_no, job.primary_term, policy.release_fields_for(job.attempts))
    rt.ledger.release(job.owner_id, [job.doc_id])

"""The dispatch job: push one claimed task to its Kibana node's ``_run_now``.

- The lease ran out while the job waited in its queue: the task goes back to ``idle`` (attempt
  returned) with a conditional write; it never reached Kibana.
- A job is pushed at most once per claim: a Redis marker keyed by the claim's version is set
  before the push, so a job redelivered after a worker died mid-push is not pushed again (its
  lease runs out and the retry loop takes it back: ambiguous, never a double run).
- accepted: keep the lease. refused: back to ``idle`` with the attempt returned, slot freed, node
  health updated. ambiguous: keep the lease until ``retryAt``.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any

from elastask import keys, policy
from elastask.dispatcher.claim import DispatchJob
from elastask.errors import ConflictError, DocumentMissingError
from elastask.intervals import parse_date
from elastask.kibana import PushOutcome
from elastask.nodes import Node
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


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
    ttl_ms = max(1, int((retry_at - now).total_seconds() * 1000))
    if not rt.redis.set(keys.pushed(job.doc_id, job.seq_no), 1, nx=True, px=ttl_ms):
        log.warning("task %r: this claim was already pushed once (redelivered job); its lease decides", job.doc_id)
        return "duplicate"
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

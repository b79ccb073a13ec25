"""What operators do with tasks and ask of a running elastask: status, failed tasks, show, requeue, schedule.

The dependency checks (``elastask check``) are in ops/checks.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from elastask import keys
from elastask.core import policy, queries
from elastask.core.clock import epoch_ms
from elastask.core.documents import TaskDocument, masked_source, new_task
from elastask.core.intervals import format_date
from elastask.errors import ConflictError, ElastaskError
from elastask.loops.dispatch.push_markers import switch_off_pushes
from elastask.ops import pausing
from elastask.ops.health import capacity_estimation, count_overdue
from elastask.parts.cadence import Cadence
from elastask.parts.ledger import Lease
from elastask.runtime import Runtime

#: ``elastask status`` waits this long for nodes whose ownerId it must first ask.
STATUS_RESOLVE_WAIT_S = 4.0


def status(rt: Runtime, now: datetime) -> dict[str, Any]:
    """Per node: in flight / capacity (cost units), health; overall: task counts by status."""
    nodes, problems = rt.nodes.resolve(wait_s=STATUS_RESOLVE_WAIT_S)
    used = rt.ledger.used_units([n.owner_id for n in nodes])
    rows = []
    breakers = rt.nodes.breakers([n.owner_id for n in nodes])
    for node in nodes:
        breaker = breakers[node.owner_id]
        open_until = breaker["open_until_ms"]
        rows.append(
            node.load(used.get(node.owner_id, 0)) | {"in_rotation": open_until == 0, "failures": breaker["failures"]}
        )
    answer = rt.store.search(queries.counts_by_status(), "counting tasks by status")
    counts = {b["key"]: b["doc_count"] for b in answer["aggregations"]["status"]["buckets"]}
    due = queries.due_tasks(now, size=0, default_max_attempts=rt.settings.max_attempts, max_attempts_by_type={})
    due_now = rt.store.count(due["query"], "counting due tasks")
    estimation = capacity_estimation(rt, now, count_overdue(rt, now))
    for row in rows:
        row.update(estimation["observed"]["by_node"].get(row["owner_id"], {}))
    return {
        **pausing.described(rt, now),
        "nodes": rows,
        "unresolved": problems,
        "tasks_by_status": counts,
        "due_now": due_now,
        "capacity_estimation": estimation,
    }


def failed_tasks(rt: Runtime, size: int = 100) -> list[dict[str, Any]]:
    """Tasks in ``failed``, with the reason elastask recorded when it failed them."""
    body = {
        "query": {"bool": {"filter": [{"term": {"type": "task"}}, {"term": {"task.status": "failed"}}]}},
        "size": size,
        "seq_no_primary_term": True,
    }
    rows = []
    for hit in rt.store.search_hits(body, "listing failed tasks"):
        reason = rt.redis.hget(keys.FAILED_REASONS, hit["_id"])
        task = hit["_source"]["task"]
        rows.append(
            {
                "id": hit["_id"],
                "task_type": task.get("taskType"),
                "attempts": task.get("attempts"),
                "owner_id": task.get("ownerId"),
                "reason": json.loads(cast(bytes, reason)).get("reason") if reason else None,
            }
        )
    return rows


def show(rt: Runtime, doc_id: str) -> dict[str, Any]:
    """One task document as stored, with its version and any failure reason."""
    doc_id = doc_id if doc_id.startswith("task:") else f"task:{doc_id}"
    hit = rt.store.raw(doc_id)
    reason = rt.redis.hget(keys.FAILED_REASONS, doc_id)
    return {
        "id": doc_id,
        "seq_no": hit["_seq_no"],
        "primary_term": hit["_primary_term"],
        "source": masked_source(hit["_source"]),
        "failure": json.loads(cast(bytes, reason)) if reason else None,
    }


def requeue(rt: Runtime, doc_id: str, now: datetime, *, force: bool = False) -> TaskDocument:
    """Send a failed (or stuck) task back to ``idle`` now with its attempts reset, conditionally.

    A running or claiming task is refused until its lease (plus grace) ran out, unless ``force``.
    """
    doc_id = doc_id if doc_id.startswith("task:") else f"task:{doc_id}"
    doc = rt.store.get(doc_id)
    if doc.status not in ("failed", "running", "claiming", "idle"):
        raise ElastaskError(f"task {doc_id!r} is {doc.status!r}; only failed, running or claiming tasks are requeued")
    refusal = policy.requeue_refusal(doc, now, policy.LEASE_GRACE)
    if refusal is not None and not force:
        raise ElastaskError(refusal)
    fields = {"status": "idle", "attempts": 0, "runAt": format_date(now), "retryAt": None, "startedAt": None}
    lease = _lease_of(rt, doc) if doc.status in ("running", "claiming") else None
    switched = _switch_off_push(rt, doc_id, lease, now)
    try:
        updated = rt.store.update_task(doc, fields)
    except ConflictError as e:
        raise ElastaskError(f"task {doc_id!r} changed while requeueing it; look at it again and retry") from e
    if lease is not None and switched:
        # Never pushed, and now never will be: its slot is free for the next claim. A pushed one keeps its
        # slot until reconcile sees Kibana is done (the run may still be going: the cap holds).
        rt.ledger.release(lease.owner_id, [doc_id], claims={doc_id: lease.claim})
    rt.redis.hdel(keys.FAILED_REASONS, doc_id)
    rt.redis.zrem(keys.FAILED_REASONS_BY_TIME, doc_id)
    Cadence(rt.redis).wake()
    return updated


def _lease_of(rt: Runtime, doc: TaskDocument) -> Lease | None:
    """The ledger's lease of a running task on its node, if it holds one."""
    if not doc.owner_id:
        return None
    return next((lease for lease in rt.ledger.leases([doc.owner_id]) if lease.task_id == doc.id), None)


def _switch_off_push(rt: Runtime, doc_id: str, lease: Lease | None, now: datetime) -> bool:
    """Switch off the push of the lease's claim (a dispatch job holding it pushes nothing); True when no
    push came first (see ``switch_off_pushes``)."""
    if lease is None or lease.claim is None:
        return False
    left_ms = max(0, lease.expires_ms - epoch_ms(now))
    return (doc_id, lease.claim) in switch_off_pushes(rt, [(doc_id, lease.claim, left_ms)])


def schedule(
    rt: Runtime,
    task_type: str,
    now: datetime,
    *,
    task_id: str,
    params: dict[str, Any],
    interval: str | None,
    run_at: datetime | None,
) -> TaskDocument:
    """Create a task document as Kibana's taskManager.schedule would."""
    try:
        doc = new_task(task_id, task_type, now=now, params=params, interval=interval, run_at=run_at)
    except ValueError as e:
        raise ElastaskError(f"--interval: {e}") from e
    created = rt.store.create(doc, refresh=True)
    Cadence(rt.redis).wake()
    return created

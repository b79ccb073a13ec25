"""The claim loop: find due tasks, give each to the node with the most free capacity, claim, enqueue.

One cycle, run by beat every ``polling_interval`` under a Redis lock (so cycles never overlap):

1. learn the nodes and, if Redis lost the ledger, rebuild it from the engine before anything else;
2. search due tasks (``seq_no_primary_term``);
3. reconcile the ledger with the engine (real-time ``mget``): tasks Kibana finished free their
   slot (see ``finished``; skipped, but for once a second, when nothing is due); then drop stale hits (tasks this
   ledger holds, or whose real-time version differs: the search is near-real-time) and skip
   malformed ones (reported by id);
4. assign by free capacity, reserve the slots atomically in the ledger (Lua), claim with one
   conditional ``_bulk`` (``if_seq_no``/``if_primary_term``); a 409 is a lost race, not an error;
5. enqueue one dispatch job per claimed task on its node's queue; log one line with the counts.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from elastask import keys, policy, queries
from elastask.dispatcher.locks import exclusive
from elastask.dispatcher.malformed import quarantined, report_malformed
from elastask.documents import TaskDocument, parse_hit, run_now_body
from elastask.errors import DocumentError
from elastask.intervals import format_date, parse_date
from elastask.ledger import Lease
from elastask.nodes import Node
from elastask.runtime import Runtime
from elastask.store import bulk_update_tasks, mget_sources, search_hits

log = logging.getLogger(__name__)

RECONCILE_EVERY_MS = 1000
#: A slot is held this long past retryAt: Kibana times a run from when it started, a little after the claim.
LEASE_GRACE = timedelta(seconds=2)
#: After a ledger rebuild, no claims for this long (longer than any claim cycle runs).
LEDGER_SETTLE_MS = 3000


@dataclass
class ClaimSummary:
    """The counts of one claim cycle (Kibana's words)."""

    ran: bool = True
    found: int = 0
    claimed: int = 0
    conflicts: int = 0
    stale: int = 0
    missing: int = 0
    skipped: int = 0
    released: int = 0
    ledger_rebuilt: int = -1
    nodes: int = 0
    capacity_left: dict[str, int] = field(default_factory=dict)
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DispatchJob:
    """What a dispatch job carries: the claim's version and the ``_run_now`` body."""

    doc_id: str
    owner_id: str
    node_url: str
    seq_no: int
    primary_term: int
    retry_at: str
    attempts: int
    lease_ms: int  # how long the claim leased the task for (retryAt - startedAt)
    body: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def claim_available_tasks(rt: Runtime, now: datetime, enqueue: Callable[[DispatchJob], None]) -> ClaimSummary:
    """One claim cycle (see the module docstring); a cycle already running elsewhere makes this a no-op."""
    started = time.monotonic()
    lock_ttl_ms = max(30_000, 10 * rt.settings.polling_interval_ms)
    with exclusive(rt.redis, keys.CLAIM_LOCK, lock_ttl_ms) as taken:
        if not taken:
            return ClaimSummary(ran=False)
        summary = _claim_cycle(rt, now, enqueue)
    summary.duration_ms = (time.monotonic() - started) * 1000
    per_node = " ".join(f"{owner}={left}" for owner, left in summary.capacity_left.items())
    log.info(
        "claim cycle: found=%d claimed=%d conflicts=%d stale=%d missing=%d skipped(malformed)=%d released=%d "
        "nodes=%d duration=%.0fms capacity_left(units) %s",
        summary.found,
        summary.claimed,
        summary.conflicts,
        summary.stale,
        summary.missing,
        summary.skipped,
        summary.released,
        summary.nodes,
        summary.duration_ms,
        per_node or "-",
    )
    return summary


def _claim_cycle(rt: Runtime, now: datetime, enqueue: Callable[[DispatchJob], None]) -> ClaimSummary:
    summary = ClaimSummary()
    nodes, problems = rt.nodes.resolve()
    for problem in problems:
        log.warning("%s", problem)
    if not rt.ledger.is_built():
        # Redis lost the ledger, and with it the claim lock: a cycle that started before the loss
        # may still be writing claims the engine does not show yet. Rebuild now, claim nothing
        # while such a cycle could still finish, then rebuild once more before claiming again.
        summary.ledger_rebuilt = rebuild_ledger(rt, nodes, now)
        rt.redis.set(keys.LEDGER_SETTLING, 1, px=LEDGER_SETTLE_MS)
        rt.redis.set(keys.LEDGER_RECHECK, 1)
        return summary
    if rt.redis.exists(keys.LEDGER_SETTLING):
        return summary
    if rt.redis.delete(keys.LEDGER_RECHECK):
        summary.ledger_rebuilt = rebuild_ledger(rt, nodes, now)
    available = rt.nodes.available(nodes, now)
    summary.nodes = len(available)
    leases = rt.ledger.leases([n.owner_id for n in nodes])
    settings = rt.settings
    body = queries.due_tasks(
        now,
        # Every unit of capacity, plus the stale hits the near-real-time search may still return.
        size=min(settings.claim_batch_size, sum(n.capacity_units for n in available) + len(leases)),
        default_max_attempts=settings.max_attempts,
        max_attempts_by_type={name: t.max_attempts for name, t in settings.task_types.items()},
        exclude_ids=quarantined(rt.redis, now),
    )
    hits = search_hits(rt.store, body, "searching due tasks") if available else []
    # Nothing due: the ledger only needs the engine's view about once a second (for status and load).
    if hits or rt.redis.set(keys.RECONCILED, 1, nx=True, px=RECONCILE_EVERY_MS):
        held, summary.released = reconcile_ledger(rt, leases, now)
    else:
        held = {lease.task_id for lease in leases}
    used = rt.ledger.used_units([n.owner_id for n in available], now)
    free = {n.owner_id: n.capacity_units - used[n.owner_id] for n in available}
    summary.capacity_left = dict(free)
    room = sum(max(0, units) for units in free.values())
    if room <= 0 or not hits:
        return summary

    summary.found = len(hits)
    candidates = []
    # Most tasks this cycle can claim: the free units over the cheapest cost, plus a margin for stale hits.
    cheapest = min([settings.for_type("").cost, *(t.cost for t in settings.task_types.values())])
    most = room // max(1, cheapest)
    for hit in fresh_hits(rt, hits, held, summary, limit=most + most // 4 + 2):
        try:
            candidates.append(parse_hit(hit))
        except DocumentError as e:
            summary.skipped += 1
            report_malformed(rt.redis, e, now)

    def cost_of(task_type: str) -> int:
        return settings.for_type(task_type).cost

    assignments = policy.assign(candidates, {o: max(0, f) for o, f in free.items()}, cost_of)
    reserved = _reserve(rt, assignments, {n.owner_id: n for n in available}, now)
    to_claim = [a for a in assignments if a.task.id in reserved[a.owner_id]]
    fields = [
        policy.claim_fields(a.task, a.owner_id, now, settings.for_type(a.task.task_type).timeout_ms) for a in to_claim
    ]
    results = bulk_update_tasks(rt.store, [(a.task, f) for a, f in zip(to_claim, fields, strict=True)])
    give_back: dict[str, list[str]] = defaultdict(list)
    by_owner = {n.owner_id: n for n in available}
    for assignment, claim, result in zip(to_claim, fields, results, strict=True):
        if result.ok and result.seq_no is not None and result.primary_term is not None:
            summary.claimed += 1
            summary.capacity_left[assignment.owner_id] -= assignment.cost
            doc = policy.claimed(assignment.task, claim, result.seq_no, result.primary_term)
            enqueue(_job(doc, by_owner[assignment.owner_id]))
            continue
        give_back[assignment.owner_id].append(assignment.task.id)
        if result.conflict:
            summary.conflicts += 1
        elif result.missing:
            summary.missing += 1
        else:
            log.error("claiming %r failed: %s %s", result.doc_id, result.status, result.error)
    rt.ledger.release_many(give_back)
    return summary


def fresh_hits(
    rt: Runtime, hits: Sequence[dict[str, Any]], held: set[str], summary: ClaimSummary, limit: int
) -> list[dict[str, Any]]:
    """Drop stale search hits, as Kibana's mget claimer does: the search is near-real-time, ``mget`` is not.

    A hit is stale when this ledger already holds it (we claimed it moments ago), or when its
    real-time version differs (Kibana wrote an outcome, another claim won) or it is gone. Only the
    first ``limit`` other hits are checked: the most this cycle can claim, plus a margin, so the
    engine does not read documents that would be left unclaimed anyway.
    """
    candidates: list[dict[str, Any]] = []
    for hit in hits:
        if str(hit["_id"]) in held:
            summary.stale += 1
        elif len(candidates) < limit:
            candidates.append(hit)
    current = mget_sources(rt.store, [str(hit["_id"]) for hit in candidates])
    fresh = []
    for hit in candidates:
        now_hit = current.get(str(hit["_id"]))
        if now_hit is None:
            summary.missing += 1
        elif (now_hit.get("_seq_no"), now_hit.get("_primary_term")) != (hit.get("_seq_no"), hit.get("_primary_term")):
            summary.stale += 1
        else:
            fresh.append(hit)
    return fresh


def _reserve(
    rt: Runtime, assignments: Sequence[policy.Assignment], nodes: dict[str, Node], now: datetime
) -> dict[str, set[str]]:
    by_owner: dict[str, list[tuple[str, int, datetime]]] = defaultdict(list)
    for a in assignments:
        timeout_ms = rt.settings.for_type(a.task.task_type).timeout_ms
        expiry = policy.lease_until(a.task, now, timeout_ms) + LEASE_GRACE
        by_owner[a.owner_id].append((a.task.id, a.cost, expiry))
    reserved: dict[str, set[str]] = defaultdict(set)
    for owner, candidates in by_owner.items():
        reserved[owner] = rt.ledger.reserve(owner, nodes[owner].capacity_units, candidates, now)
    return reserved


def _job(doc: TaskDocument, node: Node) -> DispatchJob:
    assert doc.seq_no is not None and doc.primary_term is not None and doc.retry_at is not None
    assert doc.started_at is not None
    lease_ms = int((doc.retry_at - doc.started_at).total_seconds() * 1000)
    return DispatchJob(
        doc_id=doc.id,
        owner_id=node.owner_id,
        node_url=node.url,
        seq_no=doc.seq_no,
        primary_term=doc.primary_term,
        retry_at=format_date(doc.retry_at),
        attempts=doc.attempts,
        lease_ms=lease_ms,
        body=run_now_body(doc),
    )


def reconcile_ledger(rt: Runtime, leases: Sequence[Lease], now: datetime) -> tuple[set[str], int]:
    """Free the slots of tasks Kibana finished (deleted, back to idle, or owned by someone else).

    Uses ``mget`` because it is real-time: a search could still show a task we claimed a moment ago
    as idle and free a slot that is in use. Returns the ids still held and how many were freed.
    """
    if not leases:
        return set(), 0
    now_ms = int(now.timestamp() * 1000)
    hits = mget_sources(rt.store, sorted({lease.task_id for lease in leases}))
    done: dict[str, list[str]] = defaultdict(list)
    held = set()
    for lease in leases:
        hit = hits.get(lease.task_id)
        task = (hit or {}).get("_source", {}).get("task", {}) if hit else {}
        if lease.expires_ms > now_ms and not finished(hit, task, lease.owner_id):
            held.add(lease.task_id)
        else:
            done[lease.owner_id].append(lease.task_id)
    return held, rt.ledger.release_many(done)


def finished(hit: dict[str, Any] | None, task: Any, owner_id: str) -> bool:
    """True when the engine shows Kibana is done with the task on this node, so its slot is free.

    Done: the document is gone (a one-shot task succeeded), another node owns it, or it is idle
    with ``attempts: 0`` (Kibana's outcome of a recurring task). A task the retry loop sent back to
    idle keeps its attempts: the node may still be running it until its own timeout, so its slot is
    held until the lease (plus grace) runs out.
    """
    if hit is None or not isinstance(task, dict):
        return True
    if task.get("ownerId") != owner_id:
        return True
    status = task.get("status")
    return bool(status == "idle" and task.get("attempts") == 0)


def rebuild_ledger(rt: Runtime, nodes: Sequence[Node], now: datetime) -> int:
    """Redis lost the ledger: take every live lease back from the engine before claiming anything."""
    rt.store.refresh()  # the search below must see the claims of the last second too
    owners = [n.owner_id for n in nodes]
    body = queries.in_flight(now, owners, size=max(1000, sum(n.capacity_units for n in nodes)))
    hits = search_hits(rt.store, body, "rebuilding the ledger") if owners else []
    by_owner: dict[str, list[tuple[str, int, datetime]]] = defaultdict(list)
    for hit in hits:
        task = hit.get("_source", {}).get("task", {})
        try:
            retry_at = parse_date(task["retryAt"])
        except (KeyError, TypeError, ValueError):
            continue
        cost = rt.settings.for_type(str(task.get("taskType"))).cost
        by_owner[str(task.get("ownerId"))].append((str(hit["_id"]), cost, retry_at + LEASE_GRACE))
    capacity = {n.owner_id: n.capacity_units for n in nodes}
    count = 0
    for owner, leases in by_owner.items():
        count += len(rt.ledger.reserve(owner, capacity.get(owner, 0), leases, now, force=True))
    rt.ledger.mark_built(now)
    log.warning(
        "in-flight ledger not found in Redis (first start, or Redis flushed or restarted): "
        "rebuilt %d lease(s) from the engine before claiming",
        count,
    )
    return count

"""The claim loop: find due tasks, give each to the node with the most free capacity, claim, enqueue.

One cycle, run by beat every ``polling_interval`` under a Redis lock (so cycles never overlap):

1. learn the nodes and, if Redis lost the ledger, rebuild it from the engine before anything else;
2. search due tasks, and those due within the next polling interval (at most 1 s ahead), leaving
   out the tasks the ledger holds (ids and ``seq_no_primary_term`` only);
3. reconcile the ledger with the engine (real-time ``mget`` of the fields that tell) when the free
   room may be too small for what is due, and otherwise about once a second: tasks Kibana finished
   free their slot (see ``finished``); then read the hits this cycle can claim in real time, drop
   stale ones (whose version differs: the search is near-real-time) and skip malformed ones
   (reported by id);
4. assign by free capacity, reserve the slots atomically in the ledger (Lua), claim with one
   conditional ``_bulk`` (``if_seq_no``/``if_primary_term``); a 409 is a lost race, not an error;
5. enqueue one dispatch job per node on its queue, carrying the tasks claimed for it (tasks claimed
   ahead go in jobs with an ETA: their runAt, in 25 ms steps); log one line with the counts.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from elastask import keys
from elastask.config import Settings
from elastask.core import policy, queries
from elastask.core.advice import interval_advice
from elastask.core.documents import TaskDocument, parse_hit, run_now_body
from elastask.core.intervals import format_date, parse_date
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.errors import DocumentError
from elastask.loops.cadence import Cadence, rest_until
from elastask.loops.locks import exclusive
from elastask.loops.malformed import quarantined, report_malformed
from elastask.parts.ledger import Lease
from elastask.parts.nodes import Node
from elastask.parts.store import bulk_update_tasks, mget_sources, search, search_hits
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

RECONCILE_EVERY_MS = 1000
#: A slot is held this long past retryAt: Kibana times a run from when it started, a little after the claim.
LEASE_GRACE = timedelta(seconds=2)
#: After a ledger rebuild, no claims for this long (longer than any claim cycle runs).
LEDGER_SETTLE_MS = 3000
#: Tasks due within the next polling interval, but at most this far ahead, are claimed now and
#: pushed at their runAt (a dispatch job with an ETA), not one interval late.
MAX_LOOKAHEAD_MS = 1000
#: Claimed-ahead tasks are pushed in steps of this many ms (one dispatch job per node and step).
ETA_STEP_MS = 25


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
    #: Leases held when the cycle began (tasks Kibana may be finishing: slots about to free).
    in_flight: int = 0
    #: The earliest runAt of a later idle task, when a cycle with nothing in flight asked (ms since epoch).
    next_run_at_ms: int | None = None
    #: The cycle was skipped because the loop rests after a quiet cycle (see cadence.py).
    resting: bool = False
    capacity_left: dict[str, int] = field(default_factory=dict)
    duration_ms: float = 0.0
    #: Milliseconds spent in each step (search, reconcile, verify, reserve, claim, enqueue).
    steps_ms: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.monotonic, repr=False)

    def step(self, name: str) -> None:
        """Close the step that just ended: its time goes under ``name``."""
        now = time.monotonic()
        self.steps_ms[name] = round(self.steps_ms.get(name, 0.0) + (now - self._mark) * 1000, 1)
        self._mark = now

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_mark")
        return data


def claim_available_tasks(rt: Runtime, now: datetime, enqueue: Callable[[DispatchJob], None]) -> ClaimSummary:
    """One claim cycle (see the module docstring); a cycle already running elsewhere makes this a no-op."""
    started = time.monotonic()
    cadence = Cadence(rt.redis)
    if cadence.resting():
        return ClaimSummary(ran=False, resting=True)
    with exclusive(rt.redis, keys.CLAIM_LOCK, claim_lock_ttl_ms(rt.settings)) as lock:
        if not lock.taken:
            return ClaimSummary(ran=False)
        summary = _claim_cycle(rt, now, enqueue, lock.held)
        if _quiet(summary):
            cadence.rest(now, _rest_until(rt.settings, summary, now))
    summary.duration_ms = (time.monotonic() - started) * 1000
    per_node = " ".join(f"{owner}={left}" for owner, left in summary.capacity_left.items())
    steps = ",".join(f"{name}:{ms:.0f}" for name, ms in summary.steps_ms.items() if ms >= 1)
    log.info(
        "claim cycle: found=%d claimed=%d conflicts=%d stale=%d missing=%d skipped(malformed)=%d released=%d "
        "nodes=%d duration=%.0fms (%s) capacity_left(units) %s",
        summary.found,
        summary.claimed,
        summary.conflicts,
        summary.stale,
        summary.missing,
        summary.skipped,
        summary.released,
        summary.nodes,
        summary.duration_ms,
        steps or "-",
        per_node or "-",
    )
    return summary


def _quiet(summary: ClaimSummary) -> bool:
    """Nothing was due and nothing is in flight (no slot about to free): the loop may rest."""
    return summary.ran and summary.found == 0 and summary.in_flight == 0 and summary.ledger_rebuilt == -1


def _rest_until(settings: Settings, summary: ClaimSummary, now: datetime) -> datetime:
    """A quiet loop rests until the idle interval ends or the next known runAt comes near."""
    next_ms = summary.next_run_at_ms
    next_run_at = None if next_ms is None else datetime.fromtimestamp(next_ms / 1000, tz=UTC)
    return rest_until(
        now, next_run_at=next_run_at, idle_ms=settings.idle_polling_interval_ms, lookahead_ms=_lookahead_ms(settings)
    )


def _lookahead_ms(settings: Settings) -> int:
    """How far ahead of runAt a task is claimed (and pushed at its runAt)."""
    return min(settings.polling_interval_ms, MAX_LOOKAHEAD_MS)


def claim_lock_ttl_ms(settings: Settings) -> int:
    """How long the claim lock lives without renewal: also how long a reservation may stay unwritten."""
    return max(30_000, 10 * settings.polling_interval_ms)


def pending_max_ms(settings: Settings) -> int:
    """How long a reservation may stay unwritten before reconcile judges it by the engine.

    A cycle that lost its lock (a pause longer than its TTL) may still have its claim ``_bulk`` in
    flight for up to the engine request timeout; a few seconds more for clocks and queues.
    """
    return claim_lock_ttl_ms(settings) + int(settings.elasticsearch.request_timeout_s * 1000) + 5000


def _claim_cycle(
    rt: Runtime, now: datetime, enqueue: Callable[[DispatchJob], None], fence: Callable[[], bool] = lambda: True
) -> ClaimSummary:
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
    summary.step("nodes")
    leases = rt.ledger.leases([n.owner_id for n in nodes])
    summary.in_flight = len(leases)
    settings = rt.settings
    costs = [settings.for_type("").cost, *(t.cost for t in settings.task_types.values())]
    cheapest = max(1, min(costs))  # the most tasks a unit of free capacity can take
    lookahead = timedelta(milliseconds=_lookahead_ms(settings))
    body = queries.due_tasks(
        now + lookahead,
        # Every task the nodes could take if every lease ended now; held tasks are left out of the
        # search (the near-real-time search can still show a task claimed a moment ago as idle).
        size=min(settings.claim_batch_size, sum(n.capacity_units for n in available) // cheapest),
        default_max_attempts=settings.max_attempts,
        max_attempts_by_type={name: t.max_attempts for name, t in settings.task_types.items()},
        exclude_ids={*quarantined(rt.redis, now), *(lease.task_id for lease in leases)},
        # Nothing in flight: this cycle may turn out quiet; learn how long the loop may then rest.
        next_run_after=None if leases else now + lookahead,
    )
    answer = search(rt.store, body, "searching due tasks") if available else {"hits": {"hits": []}}
    hits = [dict(hit) for hit in answer["hits"]["hits"]]
    summary.next_run_at_ms = queries.next_run_at_ms(answer)
    summary.step("search")
    owners = [n.owner_id for n in available]

    def free_units() -> dict[str, int]:
        used = rt.ledger.used_units(owners, now)
        return {n.owner_id: n.capacity_units - used[n.owner_id] for n in available}

    free = free_units()
    # The ledger learns which tasks Kibana finished from the engine (a real-time read of every
    # lease): when the free room may be too small for what is due, and otherwise about once a
    # second (for status and load).
    short_of_room = sum(max(0, units) for units in free.values()) < len(hits) * max(costs)
    if short_of_room or rt.redis.set(keys.RECONCILED, 1, nx=True, px=RECONCILE_EVERY_MS):
        held, summary.released = reconcile_ledger(rt, leases, now, pending_max_ms(settings))
        if summary.released:
            free = free_units()
    else:
        held = {lease.task_id for lease in leases}
    summary.capacity_left = dict(free)
    summary.step("reconcile")
    room = sum(max(0, units) for units in free.values())
    if room <= 0 or not hits:
        return summary

    summary.found = len(hits)
    candidates = []
    # Most tasks this cycle can claim: the free units over the cheapest cost, plus a margin for stale hits.
    most = room // cheapest
    for hit in fresh_hits(rt, hits, held, summary, limit=most + most // 4 + 2):
        try:
            candidates.append(parse_hit(hit))
        except DocumentError as e:
            summary.skipped += 1
            report_malformed(rt.redis, e, now)

    def cost_of(task_type: str) -> int:
        return settings.for_type(task_type).cost

    summary.step("verify")
    assignments = policy.assign(candidates, {o: max(0, f) for o, f in free.items()}, cost_of)
    reserved = _reserve(rt, assignments, {n.owner_id: n for n in available}, now)
    summary.step("reserve")
    to_claim = [a for a in assignments if a.task.id in reserved[a.owner_id]]
    if to_claim and not fence():
        # The lock ran out under us (a pause longer than its TTL) and another cycle may be claiming
        # from the same room: write nothing, give the reservations back.
        log.warning("claim lock lost during the cycle; abandoning %d claim(s) before writing them", len(to_claim))
        abandoned: dict[str, list[str]] = defaultdict(list)
        for a in to_claim:
            abandoned[a.owner_id].append(a.task.id)
        rt.ledger.release_many(abandoned)
        return summary
    fields = [
        policy.claim_fields(a.task, a.owner_id, now, settings.for_type(a.task.task_type).timeout_ms) for a in to_claim
    ]
    results = bulk_update_tasks(rt.store, [(a.task, f) for a, f in zip(to_claim, fields, strict=True)])
    summary.step("claim")
    give_back: dict[str, list[str]] = defaultdict(list)
    by_owner = {n.owner_id: n for n in available}
    jobs: dict[tuple[str, datetime | None], list[ClaimedTask]] = defaultdict(list)
    for assignment, claim, result in zip(to_claim, fields, results, strict=True):
        if result.ok and result.seq_no is not None and result.primary_term is not None:
            summary.claimed += 1
            summary.capacity_left[assignment.owner_id] -= assignment.cost
            doc = policy.claimed(assignment.task, claim, result.seq_no, result.primary_term)
            _advise_on_interval(rt, doc)
            slack_ms = policy.dispatch_slack_ms(
                assignment.task, settings.for_type(assignment.task.task_type).timeout_ms
            )
            push_at = _push_step(doc.run_at, now)
            jobs[(assignment.owner_id, push_at)].append(_job(doc, by_owner[assignment.owner_id], slack_ms))
            continue
        give_back[assignment.owner_id].append(assignment.task.id)
        if result.conflict:
            summary.conflicts += 1
        elif result.missing:
            summary.missing += 1
        else:
            log.error("claiming %r failed: %s %s", result.doc_id, result.status, result.error)
    rt.ledger.release_many(give_back)
    written: dict[str, list[str]] = defaultdict(list)
    for (owner_id, _push_at), claimed_jobs in jobs.items():
        written[owner_id] += [j.doc_id for j in claimed_jobs]
    for owner_id, ids in written.items():
        rt.ledger.confirm(owner_id, ids)
    summary.step("bookkeeping")
    for (owner_id, push_at), claimed in jobs.items():
        not_before = format_date(push_at) if push_at is not None else None
        enqueue(DispatchJob(owner_id, by_owner[owner_id].url, tuple(claimed), not_before))
    summary.step("enqueue")
    return summary


def fresh_hits(
    rt: Runtime, hits: Sequence[dict[str, Any]], held: set[str], summary: ClaimSummary, limit: int
) -> list[dict[str, Any]]:
    """The documents of the search hits that are still as the search saw them, read in real time.

    As Kibana's mget claimer does: the search is near-real-time, ``mget`` is not. A hit is stale
    when this ledger already holds it (we claimed it moments ago), or when its real-time version
    differs (Kibana wrote an outcome, another claim won) or it is gone. Only the first ``limit``
    other hits are read: the most this cycle can claim, plus a margin, so the engine does not read
    documents that would be left unclaimed anyway. Returns the real-time documents, in search order.
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
        if str(hit["_id"]) not in current:
            summary.stale += 1  # its real-time read failed: not claimed this cycle
            continue
        now_hit = current[str(hit["_id"])]
        if now_hit is None:
            summary.missing += 1
        elif (now_hit.get("_seq_no"), now_hit.get("_primary_term")) != (hit.get("_seq_no"), hit.get("_primary_term")):
            summary.stale += 1
        else:
            fresh.append(now_hit)
    return fresh


def _advise_on_interval(rt: Runtime, doc: TaskDocument) -> None:
    """Warn once per process about a task type that falls due more often than the claim loop looks."""
    interval_ms = doc.schedule.interval_ms if doc.schedule is not None else None
    if interval_ms is None or doc.task_type in rt.warned:
        return
    advice = interval_advice(rt.settings, doc.task_type, interval_ms)
    if advice is not None:
        rt.warned.add(doc.task_type)
        log.warning("%s", advice)


def _push_step(run_at: datetime, now: datetime) -> datetime | None:
    """When to push a task claimed ahead: its runAt rounded up to the next ETA step; None if due now."""
    if run_at <= now:
        return None
    step_us = ETA_STEP_MS * 1000
    ahead_us = (run_at - now) // timedelta(microseconds=1)
    return now + timedelta(microseconds=-(-ahead_us // step_us) * step_us)


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


def _job(doc: TaskDocument, node: Node, slack_ms: int) -> ClaimedTask:
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


def reconcile_ledger(
    rt: Runtime, leases: Sequence[Lease], now: datetime, pending_max_ms: int = 30_000
) -> tuple[set[str], int]:
    """Free the slots of tasks Kibana finished (deleted, back to idle, or owned by someone else).

    Uses ``mget`` because it is real-time: a search could still show a task we claimed a moment ago
    as idle and free a slot that is in use. A reservation whose claim may not be written yet (another
    cycle still running, for up to ``pending_max_ms``) looks idle in the engine and is never judged
    by it. Returns the ids still held and how many were freed.
    """
    if not leases:
        return set(), 0
    now_ms = int(now.timestamp() * 1000)
    held = {
        lease.task_id
        for lease in leases
        if lease.pending_since_ms is not None and now_ms - lease.pending_since_ms < pending_max_ms
    }
    leases = [lease for lease in leases if lease.task_id not in held]
    if not leases:
        return held, 0
    hits = mget_sources(rt.store, sorted({lease.task_id for lease in leases}), fields=FINISHED_FIELDS)
    done: dict[str, list[str]] = defaultdict(list)
    for lease in leases:
        if lease.task_id not in hits and lease.expires_ms > now_ms:
            held.add(lease.task_id)  # the read failed: unknown, so the lease stands
            continue
        hit = hits.get(lease.task_id)
        task = (hit or {}).get("_source", {}).get("task", {}) if hit else {}
        if lease.expires_ms > now_ms and not finished(hit, task, lease.owner_id):
            held.add(lease.task_id)
        else:
            done[lease.owner_id].append(lease.task_id)
    return held, rt.ledger.release_many(done)


#: The fields ``finished`` looks at: the ledger's reads fetch only these.
FINISHED_FIELDS = ("task.ownerId", "task.status", "task.attempts")


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

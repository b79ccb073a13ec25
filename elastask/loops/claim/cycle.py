"""The steps of one claim cycle (loops/claim/loop.py runs them under the claim lock and logs the summary).

One sequence for every look: the nodes, the room (leases read), the hits, the real-time read, the
assignment, the reservation, the claim write, the dispatch jobs. Which nodes to reuse, which leases
to read and which hits to reuse is the look's plan (``RefillSession.plan``, loops/claim/refill.py);
each step is a function of the cycle's shared state (``Cycle``) and closes its timing in the summary.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from elastask.core import policy
from elastask.core.documents import TaskDocument, parse_hit
from elastask.core.messages import DispatchJob
from elastask.core.pauses import PauseSet
from elastask.errors import DocumentError
from elastask.loops.claim import limited
from elastask.loops.claim.fresh_hits import fresh_hits, read_limit
from elastask.loops.claim.hits import find_hits, prefetch
from elastask.loops.claim.jobs import enqueue_jobs
from elastask.loops.claim.lease_reads import ClaimedLease
from elastask.loops.claim.reconcile import ensure_ledger, likely_finished
from elastask.loops.claim.refill import KnownNodes, RefillSession
from elastask.loops.claim.state import Cycle
from elastask.loops.claim.summary import ClaimSummary
from elastask.loops.claim.timing import RECONCILE_EVERY_MS, pending_max_ms
from elastask.loops.claim.too_costly import fail_too_costly
from elastask.loops.claim.write import abandon_claims, write_claims
from elastask.loops.pauses.kibana import watch_kibana_pause
from elastask.loops.pauses.read import read_pauses
from elastask.loops.retry.node_restarts import watch_restarts
from elastask.parts.ledger import SlotRequest
from elastask.parts.nodes import Node
from elastask.parts.quarantine import report_malformed
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def run_claim_cycle(
    rt: Runtime,
    now: datetime,
    enqueue: Callable[[DispatchJob], None],
    fence: Callable[[], bool] = lambda: True,
    refill: RefillSession | None = None,
) -> ClaimSummary:
    """The steps of the module docstring, in order; a step with nothing left to do ends the cycle.

    ``refill``: the refill session this look belongs to (a look without one begins its own); it plans
    the look and learns what the look claimed.
    """
    session = refill if refill is not None else RefillSession(rt.monotonic_ms(), rt.settings.busy_polling_interval_ms)
    cycle = Cycle(rt, now, session, session.plan(rt.monotonic_ms()))
    _learn_nodes_and_ledger(cycle)
    _watch(cycle)
    _read_leases(cycle)
    if not find_hits(cycle) or not _room_for_hits(cycle):
        return cycle.summary
    candidates = _verify(cycle)
    capacity = {n.owner_id: n.capacity_units for n in cycle.available}
    assignments = policy.assign(
        candidates,
        cycle.free_units(),
        cycle.cost_of,
        capacity,
        group_of=limited.group_of(cycle.settings),
        group_free=limited.group_room(cycle.settings, cycle.available, cycle.view.group_counts),
    )
    to_claim = _reserve(cycle, assignments)
    cycle.summary.step("reserve")
    if to_claim and not fence():
        abandon_claims(cycle.rt, to_claim, cycle.token)
        return cycle.summary
    claimed = _write_claims(cycle, to_claim)
    _learn_claims(cycle, claimed)
    enqueue_jobs(cycle.rt, cycle.now, cycle.available, claimed, enqueue)
    cycle.summary.step("enqueue")
    prefetch(cycle, {a.task.id for a, _doc in claimed})
    return cycle.summary


def _learn_nodes_and_ledger(cycle: Cycle) -> None:
    """The nodes (ownerIds, rotation, pauses; the plan's, or learned now) and the ledger (rebuilt first
    if Redis lost it). The leases are read every look."""
    rt, summary = cycle.rt, cycle.summary
    known = cycle.plan.nodes
    if known is None:
        known = cycle.session.nodes = KnownNodes(rt.monotonic_ms(), *_learn_nodes(cycle))
    cycle.pauses, cycle.in_rotation = known.pauses, known.in_rotation
    cycle.available = [n for n in known.in_rotation if not cycle.pauses.node_paused(n.names)]
    summary.nodes = len(cycle.available)
    cycle.view = rt.ledger.view([n.owner_id for n in known.nodes])
    summary.in_flight = len(cycle.view.leases)
    summary.in_flight_units = dict(cycle.view.used_units)
    summary.step("nodes")


def _learn_nodes(cycle: Cycle) -> tuple[list[Node], list[Node], PauseSet]:
    """The nodes known, those in rotation, and what is paused; the ledger rebuilt first if Redis lost it."""
    rt = cycle.rt
    nodes, problems = rt.nodes.resolve()
    for problem in problems:
        log.warning("%s", problem)
    cycle.summary.ledger_rebuilt = ensure_ledger(rt, nodes, cycle.now)
    in_rotation = rt.nodes.available(nodes, cycle.now)
    return nodes, in_rotation, read_pauses(rt, cycle.now)


def _watch(cycle: Cycle) -> None:
    """The watchers beside the claims, each on its own turns (most looks make no round trip): the nodes
    holding leases asked whether they restarted (loops/retry/node_restarts.py), and Kibana's execution
    pause asked from the nodes in rotation (loops/pauses/kibana.py). Their questions run in the background."""
    watch_restarts(cycle.rt, [n for n in cycle.available if cycle.view.used_units.get(n.owner_id)])
    watch_kibana_pause(cycle.rt, cycle.in_rotation)


def _read_leases(cycle: Cycle) -> None:
    """The room: the leases the plan names read in real time (the slots of finished ones freed), then
    the free units per node. A session's look reads those likely finished; a look that begins a
    session reads them all once a second (and again once its hits are known, when its room is short of them)."""
    rt, session = cycle.rt, cycle.session
    lease_ids = {lease.task_id for lease in cycle.view.leases}
    session.forget(lease_ids)
    reads = cycle.plan.reads
    if reads is not None:
        to_read = reads.due(lease_ids, rt.monotonic_ms())
    elif rt.ledger.reconcile_due(RECONCILE_EVERY_MS):
        to_read, cycle.read_all = lease_ids, True
    else:
        to_read = set()
    used: Mapping[str, int] = cycle.view.used_units
    cycle.leased = set(lease_ids)
    if to_read:
        judged = likely_finished(cycle.view, to_read)
        held, released = session.reader.reconcile(rt, judged, pending_max_ms(cycle.settings))
        cycle.leased = held | (lease_ids - {lease.task_id for lease in judged.leases})
        cycle.summary.released += released
        if reads is not None:
            reads.record_reads(to_read, cycle.leased, rt.monotonic_ms())
        if released:
            used = rt.ledger.used_units([n.owner_id for n in cycle.available])
    cycle.set_free(used)
    cycle.summary.step("reconcile")


def _room_for_hits(cycle: Cycle) -> bool:
    """A look that begins a session and whose room is short of what it found reads every lease it has
    not read (tasks Kibana finished free their slots). False when nothing is left to claim, or no room."""
    short_of_room = cycle.room() < len(cycle.hits) * cycle.dearest
    if cycle.plan.reads is None and not cycle.read_all and short_of_room:
        held, released = cycle.session.reader.reconcile(cycle.rt, cycle.view, pending_max_ms(cycle.settings))
        cycle.leased, cycle.read_all = held, True
        cycle.summary.released += released
        if released:
            cycle.set_free(cycle.rt.ledger.used_units([n.owner_id for n in cycle.available]))
        cycle.summary.step("reconcile")
    cycle.summary.found = len(cycle.hits) if cycle.room() > 0 else 0
    return cycle.room() > 0 and bool(cycle.hits)


def _learn_claims(cycle: Cycle, claimed: Sequence[tuple[policy.Assignment, TaskDocument]]) -> None:
    """The session learns what was claimed (when to read each lease, at which version); a session's
    look keeps the hits it did not read for the next look."""
    cycle.session.add_claims((_lease(cycle, a, doc) for a, doc in claimed), cycle.rt.monotonic_ms())
    if cycle.plan.unread is not None:
        unread = [h for h in cycle.hits if str(h["_id"]) not in cycle.examined]
        cycle.plan.unread.keep(unread, cycle.searched_ms, cycle.search_size, cycle.search_full)


def _lease(cycle: Cycle, a: policy.Assignment, doc: TaskDocument) -> ClaimedLease:
    """What the session learns of a claim: the version written, and how far ahead of its runAt."""
    assert doc.seq_no is not None and doc.primary_term is not None  # a claimed document has both
    ahead_ms = (doc.run_at - cycle.rt.now()).total_seconds() * 1000  # Redis's clock, as runAt is judged
    return ClaimedLease(a.task.id, a.task.task_type, (doc.seq_no, doc.primary_term), max(0.0, ahead_ms))


def _verify(cycle: Cycle) -> list[TaskDocument]:
    """The hits this cycle can claim, read in real time; stale ones dropped, malformed ones reported."""
    limit = read_limit(cycle.hits, cycle.leased, cycle.room(), cycle.cost_of, cycle.cheapest)
    candidates = []
    for hit in fresh_hits(cycle.rt, cycle.hits, cycle.leased, cycle.summary, limit=limit, seen=cycle.examined):
        try:
            candidates.append(parse_hit(hit))
        except DocumentError as e:
            cycle.summary.skipped += 1
            report_malformed(cycle.rt.redis, e, cycle.now)
    fitting = fail_too_costly(cycle.rt, candidates, cycle.now, cycle.summary)
    cycle.summary.step("verify")
    return fitting


def _reserve(cycle: Cycle, assignments: Sequence[policy.Assignment]) -> list[policy.Assignment]:
    """Reserve the assigned tasks' slots atomically in the ledger; the assignments that got one."""
    rt, now = cycle.rt, cycle.now
    capacity = {n.owner_id: n.capacity_units for n in cycle.available}
    by_owner: dict[str, list[SlotRequest]] = defaultdict(list)
    for a in assignments:
        expiry = policy.lease_until(a.task, now, rt.settings.for_type(a.task.task_type).timeout_ms) + policy.LEASE_GRACE
        by_owner[a.owner_id].append(limited.slot_request(rt.settings, a.task.id, a.task.task_type, a.cost, expiry))
    reserved = {
        owner: rt.ledger.reserve(owner, capacity[owner], tasks, now, token=cycle.token)
        for owner, tasks in by_owner.items()
    }
    return [a for a in assignments if a.task.id in reserved.get(a.owner_id, set())]


def _write_claims(cycle: Cycle, to_claim: Sequence[policy.Assignment]) -> list[tuple[policy.Assignment, TaskDocument]]:
    """One conditional ``_bulk`` (loops/claim/write.py); the claims written, their slots confirmed."""
    capacity = {n.owner_id: n.capacity_units for n in cycle.available}
    return write_claims(cycle.rt, cycle.now, capacity, to_claim, cycle.summary, cycle.token)

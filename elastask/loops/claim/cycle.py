"""The steps of one claim cycle (loops/claim/loop.py runs them under the claim lock and logs the summary).

Each step is a function of the cycle's shared state (``_Cycle``) and closes its timing in the summary;
``run_claim_cycle`` says in which order they run and where a cycle ends early (one file: the order).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elastask.config import Settings
from elastask.core import policy
from elastask.core.clock import monotonic_ms
from elastask.core.documents import TaskDocument, parse_hit
from elastask.core.messages import DispatchJob
from elastask.core.pauses import PauseSet
from elastask.errors import DocumentError, ElastaskError
from elastask.loops.claim import limited
from elastask.loops.claim import search as due_search
from elastask.loops.claim.fresh_hits import fresh_hits
from elastask.loops.claim.jobs import enqueue_jobs
from elastask.loops.claim.reconcile import ensure_ledger, reconcile_ledger
from elastask.loops.claim.refill import ClaimedLease, KnownNodes, RefillSession
from elastask.loops.claim.summary import ClaimSummary
from elastask.loops.claim.too_costly import fail_too_costly
from elastask.loops.claim.write import abandon_claims, write_claims
from elastask.loops.pauses.read import read_pauses
from elastask.loops.retry.node_restarts import watch_restarts
from elastask.parts.ledger import LeaseView, SlotRequest
from elastask.parts.nodes import Node
from elastask.parts.quarantine import quarantined, report_malformed
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

RECONCILE_EVERY_MS = 1000
#: A refill session's look reuses what it learned of the nodes (rotation, pauses, ownerIds; the
#: ledger's epoch) this long: a pause, a breaker that opened or a Redis that lost the ledger is seen
#: this much later, and every dispatch job checks pauses and leases itself. The fence before a
#: claim write (the claim lock, gone with a Redis that lost its data) still runs every cycle.
NODES_REUSE_MS = 100


def claim_lock_ttl_ms(settings: Settings) -> int:
    """How long the claim lock lives without renewal.

    Its holder renews it (a thread, every third of the TTL) however long an engine call takes, so
    the TTL only bounds how long a holder that died (a worker SIGKILLed in a refill session) or
    froze keeps every other claim job out; a frozen holder that wakes finds the lock lost before
    its claim write (the fence) and writes nothing.
    """
    # 3 s at the shipped 500 ms: a holder SIGKILLed in a refill session stopped every claim for the
    # whole TTL (5 s before 0.7, a chaos run's longest stall); renewed every second, two renewals
    # may still fail before it runs out.
    return max(3_000, 6 * settings.polling_interval_ms)


def pending_max_ms(settings: Settings) -> int:
    """How long a reservation may stay unwritten before reconcile judges it by the engine.

    A cycle that lost its lock (a pause longer than its TTL) may still have its claim ``_bulk`` in
    flight for up to the engine request timeout; a few seconds more for clocks and queues.
    """
    return claim_lock_ttl_ms(settings) + int(settings.elasticsearch.request_timeout_s * 1000) + 5000


@dataclass
class _Cycle:
    """What the steps of one claim cycle share."""

    rt: Runtime
    now: datetime
    summary: ClaimSummary = field(default_factory=lambda: ClaimSummary())
    available: list[Node] = field(default_factory=list)
    view: LeaseView = field(default_factory=lambda: LeaseView(0, []))
    hits: list[dict[str, Any]] = field(default_factory=list)
    #: Free units per node (capacity minus what the ledger holds; below 0 after a capacity cut).
    free: dict[str, int] = field(default_factory=dict)
    #: The ids still leased after this cycle's reads of the ledger (left out of the claim).
    leased: set[str] = field(default_factory=set)
    #: Hits read in real time this cycle (the others may be kept as a session's unread hits).
    examined: set[str] = field(default_factory=set)
    #: When the hits were searched (monotonic ms): unread hits are reused only while recent.
    searched_ms: float = 0.0
    #: The size of the search the hits came from, and whether it came back full (more tasks wait).
    search_size: int = 0
    search_full: bool = False
    #: What is paused now (elastask pause, elastask.yaml's paused:): nothing new is claimed for it.
    pauses: PauseSet = field(default_factory=PauseSet)
    #: Names this cycle's reservations in the ledger: its releases and confirms touch only its own.
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    def set_free(self, used: Mapping[str, int]) -> None:
        """The free units per node, from the units the ledger holds (the one way they are computed)."""
        self.free = {n.owner_id: n.capacity_units - used.get(n.owner_id, 0) for n in self.available}
        self.summary.capacity_left = dict(self.free)

    def free_units(self) -> dict[str, int]:
        return {owner: max(0, units) for owner, units in self.free.items()}

    def room(self) -> int:
        """Free units over every node."""
        return sum(self.free_units().values())

    def cost_of(self, task_type: str) -> int:
        return self.settings.for_type(task_type).cost

    @property
    def cheapest(self) -> int:
        """The smallest cost of any task type: the most tasks a unit of free capacity can take."""
        costs = [self.settings.for_type(name).cost for name in ("", *self.settings.known_types())]
        return max(1, min(costs))

    @property
    def dearest(self) -> int:
        return max(self.settings.for_type(name).cost for name in ("", *self.settings.known_types()))


def run_claim_cycle(
    rt: Runtime,
    now: datetime,
    enqueue: Callable[[DispatchJob], None],
    fence: Callable[[], bool] = lambda: True,
    refill: RefillSession | None = None,
) -> ClaimSummary:
    """The steps of the module docstring, in order; a step with nothing left to do ends the cycle.

    ``refill``: a refill session (loops/claim/refill.py) learns what this cycle claimed. Once it is active, its
    cycles look for room first, reading only the leases likely finished, and search (or reuse the
    last search's unread hits) only when a slot is free: between two completions, the common case,
    a look costs one ``mget``. A cycle of the beat searches first: how many tasks are due is what
    tells it whether to reconcile every lease now and whether a session should start.
    """
    cycle = _Cycle(rt, now)
    session = refill if refill is not None and refill.active else None
    _learn_nodes_and_ledger(cycle, session)
    if session is not None:
        _prefetched(session, wait=False)
        if not _room_in_session(cycle, session) or not _hits_in_session(cycle, session):
            return cycle.summary
    else:
        _search_due(cycle)
        if not _make_room(cycle):
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
    if refill is not None:
        refill.add_claims((_lease(cycle, a, doc) for a, doc in claimed), monotonic_ms())
        if session is not None:
            unread = [h for h in cycle.hits if str(h["_id"]) not in cycle.examined]
            session.unread.keep(unread, cycle.searched_ms, cycle.search_size, cycle.search_full)
    enqueue_jobs(cycle.rt, cycle.now, cycle.available, claimed, enqueue)
    cycle.summary.step("enqueue")
    if session is not None and claimed and session.unread.running_low(monotonic_ms()):
        _prefetch(cycle, session, {a.task.id for a, _doc in claimed})
    return cycle.summary


def _learn_nodes_and_ledger(cycle: _Cycle, session: RefillSession | None = None) -> None:
    """1. The nodes (ownerIds, rotation, pauses) and the ledger (rebuilt first if Redis lost it).

    A refill session's look reuses the nodes its session learned under NODES_REUSE_MS ago (five Redis
    round trips, a fifth of a look); the ledger's leases are read every time.
    """
    rt, summary = cycle.rt, cycle.summary
    known = _known_nodes(cycle, session)
    nodes, in_rotation, cycle.pauses = known.nodes, known.in_rotation, known.pauses
    cycle.available = [n for n in in_rotation if not cycle.pauses.node_paused(n.names)]
    summary.nodes = len(cycle.available)
    cycle.view = rt.ledger.view([n.owner_id for n in nodes])
    watch_restarts(rt, [n for n in cycle.available if cycle.view.used_units.get(n.owner_id)])
    summary.in_flight = len(cycle.view.leases)
    summary.in_flight_units = dict(cycle.view.used_units)
    summary.step("nodes")


def _known_nodes(cycle: _Cycle, session: RefillSession | None) -> KnownNodes:
    """The nodes as the session learned them under NODES_REUSE_MS ago, else learned now (and kept)."""
    known = session.nodes if session is not None else None
    if known is not None and monotonic_ms() - known.learned_ms < NODES_REUSE_MS:
        return known
    known = KnownNodes(monotonic_ms(), *_learn_nodes(cycle))
    if session is not None:
        session.nodes = known
    return known


def _learn_nodes(cycle: _Cycle) -> tuple[list[Node], list[Node], PauseSet]:
    """The nodes known, those in rotation, and what is paused; the ledger rebuilt first if Redis lost it."""
    rt = cycle.rt
    nodes, problems = rt.nodes.resolve()
    for problem in problems:
        log.warning("%s", problem)
    cycle.summary.ledger_rebuilt = ensure_ledger(rt, nodes, cycle.now)
    in_rotation = rt.nodes.available(nodes, cycle.now)
    pauses = read_pauses(rt, cycle.now, ask=in_rotation)  # Kibana's execution pause is asked from them
    return nodes, in_rotation, pauses


def _search_due(cycle: _Cycle) -> None:
    """2. Due tasks (and those due within the claim-ahead window), leaving out what the ledger holds
    (loops/claim/search.py). Types with a concurrency limit are searched apart, one search per group with room."""
    _found(cycle, due_search.run(cycle.rt.store, _plan(cycle)))
    cycle.summary.step("search")


def _plan(cycle: _Cycle, claimed_now: frozenset[str] = frozenset(), sources: bool = False) -> due_search.DueSearch:
    """The look's searches, leaving out the ledger's tasks and ``claimed_now`` (claimed since it was read)."""
    # ... and so can a task Kibana finished a moment ago (deleted, or rescheduled): left out too.
    exclude = {
        *quarantined(cycle.rt.redis, cycle.now),
        *(lease.task_id for lease in cycle.view.leases),
        *cycle.view.recently_finished,
        *claimed_now,
    }
    return due_search.plan(
        cycle.settings, cycle.now, cycle.available, cycle.view, cycle.pauses, cycle.cheapest, exclude, sources=sources
    )


def _found(cycle: _Cycle, found: due_search.Found) -> None:
    """Take a look's hits as this cycle's."""
    cycle.hits, cycle.searched_ms, cycle.search_size = found.hits, found.searched_ms, found.size
    cycle.summary.search_full = cycle.search_full = found.full
    cycle.summary.waiting = len(cycle.hits)
    cycle.summary.next_run_at_ms = found.next_run_at_ms
    cycle.summary.searched = True


def _prefetch(cycle: _Cycle, session: RefillSession, claimed: set[str]) -> None:
    """6'. In a session, search again right after the claim when its unread hits run low (loops/claim/refill.py),
    with the documents: the next freed slot finds its hits ready, claimed without a real-time read.

    With a ``searcher`` the search runs there, while the session goes on looking and claiming (a
    search took ~30 ms of a loaded 2-core machine, a third of the cycles of a 200 ms backlog, and
    the slots that freed meanwhile waited for it); its hits become the session's unread hits at the
    next cycle (``_prefetched``). A claim made meanwhile is in the ledger, so left out of them.
    """
    search = _plan(cycle, frozenset(claimed), sources=True)
    if session.searcher is not None:
        if session.prefetching is None:
            session.prefetching = session.searcher.submit(due_search.run, cycle.rt.store, search)
        return
    _found(cycle, due_search.run(cycle.rt.store, search))
    cycle.summary.waiting += cycle.summary.claimed  # due when the cycle began: what it claimed, and these
    session.unread.keep(cycle.hits, cycle.searched_ms, cycle.search_size, cycle.search_full)
    cycle.summary.step("prefetch")


def _prefetched(session: RefillSession, *, wait: bool) -> bool:
    """The session's search in flight, once done (or, ``wait``, now), as its unread hits; True if it was
    kept. A search that failed is logged and dropped: the next cycle that needs hits searches itself."""
    future = session.prefetching
    if future is None or (not wait and not future.done()):
        return False
    session.prefetching = None
    try:
        found: due_search.Found = future.result()
    except ElastaskError as e:
        log.warning("a refill session's search after its claim failed; the next cycle searches again: %s", e)
        return False
    session.unread.keep(found.hits, found.searched_ms, found.size, found.full)
    return True


def _make_room(cycle: _Cycle) -> bool:
    """3. Free units per node; reconciled with the engine when the room may be too small, else once a second.

    Returns False when there is nothing to claim or no room to claim it in.
    """
    rt, summary = cycle.rt, cycle.summary
    owners = [n.owner_id for n in cycle.available]
    cycle.set_free(rt.ledger.used_units(owners))
    short_of_room = cycle.room() < len(cycle.hits) * cycle.dearest
    if short_of_room or rt.ledger.reconcile_due(RECONCILE_EVERY_MS):
        cycle.leased, summary.released = reconcile_ledger(rt, cycle.view, pending_max_ms(cycle.settings))
        if summary.released:
            cycle.set_free(rt.ledger.used_units(owners))
    else:
        cycle.leased = {lease.task_id for lease in cycle.view.leases}
    summary.step("reconcile")
    summary.found = len(cycle.hits) if cycle.room() > 0 else 0
    return cycle.room() > 0 and bool(cycle.hits)


def _room_in_session(cycle: _Cycle, session: RefillSession) -> bool:
    """2'. In a refill session: read only the leases likely finished; True when a slot is free.

    No slot free: the cycle ends before its search (the common case between two completions).
    """
    rt, summary = cycle.rt, cycle.summary
    lease_ids = {lease.task_id for lease in cycle.view.leases}
    session.forget(lease_ids)
    due = session.reads.due(lease_ids, monotonic_ms())
    used: Mapping[str, int] = cycle.view.used_units
    if due:
        cycle.leased, summary.released = reconcile_ledger(
            rt, cycle.view, pending_max_ms(cycle.settings), only=due, versions=session.versions
        )
        session.reads.record_reads(due, cycle.leased, monotonic_ms())
        if summary.released:
            used = rt.ledger.used_units([n.owner_id for n in cycle.available])
    else:
        cycle.leased = lease_ids
    cycle.set_free(used)
    summary.step("reconcile")
    return any(free >= cycle.cheapest for free in cycle.free.values())


def _hits_in_session(cycle: _Cycle, session: RefillSession) -> bool:
    """3'. The last search's unread hits when they suffice for the room, else a new search; True if any."""
    room = cycle.room() // cycle.cheapest
    unread = session.unread.take(room, monotonic_ms(), cycle.leased | cycle.view.recently_finished)
    if not unread and _prefetched(session, wait=True):
        unread = session.unread.take(room, monotonic_ms(), cycle.leased | cycle.view.recently_finished)
    if unread:
        # Read in real time below, like any hit.
        cycle.hits, cycle.searched_ms = unread, session.unread.searched_ms
        cycle.search_size, cycle.search_full = session.unread.size, session.unread.full
        cycle.summary.waiting, cycle.summary.search_full, cycle.summary.searched = len(unread), True, True
    else:
        _search_due(cycle)
    cycle.summary.found = len(cycle.hits)
    return bool(cycle.hits)


def _lease(cycle: _Cycle, a: policy.Assignment, doc: TaskDocument) -> ClaimedLease:
    """What a refill session learns of a claim: the version written, and how far ahead of its runAt."""
    assert doc.seq_no is not None and doc.primary_term is not None  # a claimed document has both
    ahead_ms = (doc.run_at - cycle.rt.now()).total_seconds() * 1000  # Redis's clock, as runAt is judged
    return ClaimedLease(a.task.id, a.task.task_type, (doc.seq_no, doc.primary_term), max(0.0, ahead_ms))


def _verify(cycle: _Cycle) -> list[TaskDocument]:
    """4. The hits this cycle can claim, read in real time; stale ones dropped, malformed ones reported."""
    most = cycle.room() // cycle.cheapest  # plus a margin for stale hits
    candidates = []
    for hit in fresh_hits(
        cycle.rt, cycle.hits, cycle.leased, cycle.summary, limit=most + most // 4 + 2, seen=cycle.examined
    ):
        try:
            candidates.append(parse_hit(hit))
        except DocumentError as e:
            cycle.summary.skipped += 1
            report_malformed(cycle.rt.redis, e, cycle.now)
    fitting = fail_too_costly(cycle.rt, candidates, cycle.now, cycle.summary)
    cycle.summary.step("verify")
    return fitting


def _reserve(cycle: _Cycle, assignments: Sequence[policy.Assignment]) -> list[policy.Assignment]:
    """5a. Reserve the assigned tasks' slots atomically in the ledger; the assignments that got one."""
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


def _write_claims(cycle: _Cycle, to_claim: Sequence[policy.Assignment]) -> list[tuple[policy.Assignment, TaskDocument]]:
    """5b. One conditional ``_bulk`` (loops/claim/write.py); the claims written, their slots confirmed."""
    capacity = {n.owner_id: n.capacity_units for n in cycle.available}
    return write_claims(cycle.rt, cycle.now, capacity, to_claim, cycle.summary, cycle.token)

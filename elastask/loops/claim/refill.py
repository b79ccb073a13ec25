"""A refill session: while a backlog waits for slots, the claim loop keeps its lock and refills freed slots.

Kibana answers ``_run_now`` at once and writes the outcome when the run ends; the only way to
learn that a slot came free is to read the task in the engine. Without a session, a freed slot
waits for the next claim cycle (``busy_polling_interval``, then the beat's tick): with short
tasks the nodes spend more time waiting for work than running it.

In a session the loop instead reads, in real time (``mget``), only the leases likely to have
ended -- those older than the short end of the recent runs of their task type, then again every
10 ms or so -- and runs a claim cycle as soon as a slot is free, skipping the search while no slot
is. Every invariant is the claim cycle's own: the session only chooses *when* cycles run and
*which* leases they read. It is three pieces:

- :class:`~elastask.loops.claim.lease_reads.LeaseReadSchedule`: when to read which lease, learned from the
  runs seen (and scouts, when what it learned is stale);
- :class:`~elastask.loops.claim.reconcile.LeaseReader`: frees what finished, and keeps the version each
  lease was last read at, so a read of an unchanged lease skips its source;
- :class:`UnreadHits`: the last search's hits no cycle read yet, which may stand in for a search.

Each look of the session is a :class:`LookPlan` (``RefillSession.plan``): which nodes to reuse, which
leases to read, which hits to reuse; the claim cycle runs the same steps on any plan. The schedule
and the unread hits are pure (times are passed in, milliseconds of a monotonic clock); the session
also holds the thread its searches after a claim run on.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from elastask.core.lanes import Lane
from elastask.loops.claim.lease_reads import FOREIGN_READ_MS, ClaimedLease, LeaseReadSchedule
from elastask.loops.claim.reconcile import LeaseReader

if TYPE_CHECKING:
    from elastask.core.pauses import PauseSet
    from elastask.parts.nodes import Node

#: The last search's unread hits stand in for a new search for this long (a task due later, or of a
#: higher priority, waits at most this much longer than with a search every cycle).
UNREAD_HITS_MAX_AGE_MS = 500
#: A session searches again right after a claim when fewer unread hits are left than this share of
#: the search's size, or when they are older than this share of UNREAD_HITS_MAX_AGE_MS.
PREFETCH_BELOW_SHARE = 0.5
PREFETCH_AGE_SHARE = 0.6
#: A session's look reuses what it learned of the nodes (rotation, pauses, ownerIds; the ledger's
#: epoch) this long: a pause, a breaker that opened or a Redis that lost the ledger is seen this much
#: later, and every dispatch job checks pauses and leases itself. The fence before a claim write (the
#: claim lock, gone with a Redis that lost its data) still runs every cycle.
NODES_REUSE_MS = 100


@dataclass
class UnreadHits:
    """The last search's hits no cycle read yet, when that search ran, and whether it found more."""

    hits: list[dict[str, Any]] = field(default_factory=list)
    searched_ms: float = 0.0
    #: The size of that search, and whether it came back full (more tasks wait than it returned).
    size: int = 0
    full: bool = False

    def keep(self, hits: list[dict[str, Any]], searched_ms: float, size: int, full: bool) -> None:
        """Hits no cycle read yet, from the search that ran at ``searched_ms``: the next cycle may use them."""
        self.hits, self.searched_ms, self.size, self.full = hits, searched_ms, size, full

    def running_low(self, now_ms: float) -> bool:
        """Search again now, right after a claim: more tasks wait, and what is left of the last search
        will soon not cover the room the next completions free (or will be too old by then).

        Searched here, the next freed slot finds its hits ready instead of waiting for a search.
        """
        if not self.full:
            return False  # every task due was in that search: a new one finds only what fell due since
        too_old = now_ms - self.searched_ms > UNREAD_HITS_MAX_AGE_MS * PREFETCH_AGE_SHARE
        return len(self.hits) < self.size * PREFETCH_BELOW_SHARE or too_old

    def take(self, room: int, now_ms: float, exclude: set[str] | frozenset[str]) -> list[dict[str, Any]]:
        """The hits, when they are recent and more than the free room (so a search adds nothing); else []."""
        if now_ms - self.searched_ms > UNREAD_HITS_MAX_AGE_MS:
            return []
        usable = [h for h in self.hits if str(h["_id"]) not in exclude]
        return usable if len(usable) > room else []


class KnownNodes(NamedTuple):
    """What a look learned of the nodes, and when (a session's next looks reuse it briefly)."""

    learned_ms: float
    nodes: list[Node]
    in_rotation: list[Node]
    pauses: PauseSet


class LookPlan(NamedTuple):
    """What one claim cycle reads; the cycle (loops/claim/cycle.py) runs the same steps on any plan.

    The look that begins a session knows nothing yet: it learns the nodes, searches (how many tasks
    wait is what decides whether a session starts), and reads every lease when the room is short of
    what it found (and once a second). The session's later looks read only the leases likely
    finished and, while no slot is free, stop there; with room, they reuse the last search's unread
    hits when those cover it.
    """

    #: The nodes learned under NODES_REUSE_MS ago, reused as they are; None: learn them now.
    nodes: KnownNodes | None
    #: Which leases are likely finished (the session's schedule); None: every lease, when the room is short.
    reads: LeaseReadSchedule | None
    #: The last search's unread hits, reused while they cover the room; None: search, even with no slot free.
    unread: UnreadHits | None


@dataclass
class RefillSession:
    """One session: its start, and the three pieces its looks use (see the module docstring)."""

    started_ms: float
    max_wait_ms: float
    #: False while the session only records claims (the look that found the backlog); then True.
    active: bool = False
    reads: LeaseReadSchedule = field(init=False)
    reader: LeaseReader = field(default_factory=LeaseReader)
    unread: UnreadHits = field(default_factory=UnreadHits)
    #: Where the session's searches after a claim run (loops/claim/loop.py: one thread), and the one in flight:
    #: the session goes on looking and claiming meanwhile. None: they run in the cycle.
    searcher: Executor | None = None
    prefetching: Future[Any] | None = None
    nodes: KnownNodes | None = None
    #: The claim lane whose share of the tasks the session's looks search (core/lanes.py).
    lane: Lane = field(default_factory=Lane)

    def __post_init__(self) -> None:
        foreign_wait_ms = FOREIGN_READ_MS if self.lane.count > 1 else 0.0
        self.reads = LeaseReadSchedule(self.max_wait_ms, foreign_wait_ms=foreign_wait_ms)

    def plan(self, now_ms: float) -> LookPlan:
        """The next look's plan (see LookPlan)."""
        nodes = self.nodes if self.nodes is not None and now_ms - self.nodes.learned_ms < NODES_REUSE_MS else None
        if not self.active:
            return LookPlan(nodes, None, None)
        return LookPlan(nodes, self.reads, self.unread)

    def add_claims(self, tasks: Iterable[ClaimedLease], now_ms: float) -> None:
        """Tasks a look of this session claimed: scheduled for reading, and read without their source
        while they are still at the version the claim wrote."""
        tasks = list(tasks)
        self.reads.add_claims(tasks, now_ms)
        for task in tasks:
            self.reader.versions.seen(task.task_id, task.version)

    def forget(self, lease_ids: set[str]) -> None:
        """Drop what is known of leases no longer in the ledger (freed by another path)."""
        self.reads.forget(lease_ids)
        self.reader.versions.keep_only(lease_ids)

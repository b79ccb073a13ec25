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

- :class:`LeaseReadSchedule`: when to read which lease, learned from the runs seen;
- :class:`~elastask.loops.claim.reconcile.LeaseReader`: frees what finished, and keeps the version each
  lease was last read at, so a read of an unchanged lease skips its source;
- :class:`UnreadHits`: the last search's hits no cycle read yet, which may stand in for a search.

Each look of the session is a :class:`LookPlan` (``RefillSession.plan``): which nodes to reuse, which
leases to read, which hits to reuse; the claim cycle runs the same steps on any plan. The schedule
and the unread hits are pure (times are passed in, milliseconds of a monotonic clock); the session
also holds the thread its searches after a claim run on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from elastask.core.lanes import Lane
from elastask.loops.claim.reconcile import LeaseReader

if TYPE_CHECKING:
    from elastask.core.pauses import PauseSet
    from elastask.parts.nodes import Node

#: Never wait less than this between two looks (a session must not spin).
MIN_WAIT_MS = 10
#: A lease still running when read is read again after this share of its age (at least MIN_RECHECK_MS):
#: a 200 ms task is re-read every 10 ms, a 1 s task every 30 ms, a 5 s task every ~150 ms (fewer
#: reads for long tasks). A slot that frees waits for its read half the interval on average.
RECHECK_SHARE = 0.03
MIN_RECHECK_MS = 10
#: The short end of a type's runs: this quantile of its last RECENT_RUNS runs (claim -> found
#: finished). Not the shortest ever seen: one outcome written at once would bring every later first
#: read forward, and each read too early is a wasted real-time read.
SHORT_RUN_QUANTILE = 0.05
RECENT_RUNS = 64
#: The first read of a lease comes at this share of the short end of its type's runs: a read
#: only ever finds a run at least as long as the wait before it, so waiting the whole short end
#: would never learn a shorter one (a slow first batch would slow every later one).
#: Before any run of a task type was seen, its leases are first read after max_wait_ms (what a
#: session would wait anyway): reading a thousand fresh leases every few ms would cost more than
#: the first batch gains.
FIRST_READ_SHARE = 0.95
#: The last search's unread hits stand in for a new search for this long (a task due later, or of a
#: higher priority, waits at most this much longer than with a search every cycle).
UNREAD_HITS_MAX_AGE_MS = 500
#: A session searches again right after a claim when fewer unread hits are left than this share of
#: the search's size, or when they are older than this share of UNREAD_HITS_MAX_AGE_MS.
PREFETCH_BELOW_SHARE = 0.5
PREFETCH_AGE_SHARE = 0.6
#: The task type of a lease the session did not claim (its type is not known).
DEFAULT_TYPE = ""
#: With several claim lanes (core/lanes.py), a lease another lane claimed is read this often only: its own
#: lane reads it on time; this read frees its slot should that lane's holder be gone.
FOREIGN_READ_MS = 500
#: A session's look reuses what it learned of the nodes (rotation, pauses, ownerIds; the ledger's
#: epoch) this long: a pause, a breaker that opened or a Redis that lost the ledger is seen this much
#: later, and every dispatch job checks pauses and leases itself. The fence before a claim write (the
#: claim lock, gone with a Redis that lost its data) still runs every cycle.
NODES_REUSE_MS = 100


class ClaimedLease(NamedTuple):
    """A task a claim cycle of the session claimed."""

    task_id: str
    task_type: str
    #: The version (_seq_no, _primary_term) the claim wrote.
    version: tuple[int, int]
    #: How long until its runAt, when it was claimed ahead (0 when due).
    ahead_ms: float = 0.0


@dataclass
class LeaseReadSchedule:
    """When to read which lease in real time, learned from how long runs took (claim -> found finished)."""

    max_wait_ms: float
    #: task id -> (task type, when it could start: its claim, or its runAt when claimed ahead)
    started_at: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: task id -> when to read it next
    next_read: dict[str, float] = field(default_factory=dict)
    #: task type -> its last RECENT_RUNS runs (claim written -> found finished)
    runs_ms: dict[str, deque[float]] = field(default_factory=dict)
    #: How long a lease this session did not claim waits for each read (0: read it now, then as its age says).
    foreign_wait_ms: float = 0.0
    #: The leases read at ``foreign_wait_ms`` (another lane's).
    foreign: set[str] = field(default_factory=set)

    @property
    def shortest_run_ms(self) -> dict[str, float]:
        """Per task type, the short end of its recent runs (SHORT_RUN_QUANTILE; the shortest while few)."""
        return {task_type: _quantile(runs, SHORT_RUN_QUANTILE) for task_type, runs in self.runs_ms.items()}

    def _ran(self, task_type: str, run_ms: float) -> None:
        self.runs_ms.setdefault(task_type, deque(maxlen=RECENT_RUNS)).append(run_ms)

    def add_claims(self, tasks: Iterable[ClaimedLease], now_ms: float) -> None:
        """Tasks this session claimed: first read after the shortest run of their type.

        A run counts from when the task could start: its claim, or its runAt when it was claimed
        ahead (pushed then); counted from the claim, tasks claimed a second ahead would teach a run
        several times the real one.
        """
        shortest_ms = self.shortest_run_ms
        for task in tasks:
            since = now_ms + max(0.0, task.ahead_ms)
            self.started_at[task.task_id] = (task.task_type, since)
            shortest = shortest_ms.get(task.task_type)
            first = self.max_wait_ms if shortest is None else FIRST_READ_SHARE * shortest
            self.next_read[task.task_id] = since + first

    def learn(self, shortest_run_ms: Mapping[str, float]) -> None:
        """Start from the short end of the runs earlier sessions saw (a type this one saw runs of keeps its
        own); leases not read yet get their first read re-timed."""
        for task_type, run_ms in shortest_run_ms.items():
            if task_type not in self.runs_ms:
                self._ran(task_type, run_ms)
        shortest_ms = self.shortest_run_ms
        for task_id, (task_type, since) in self.started_at.items():
            if task_type in shortest_ms and task_id in self.next_read:
                first = since + FIRST_READ_SHARE * shortest_ms[task_type]
                self.next_read[task_id] = min(self.next_read[task_id], first)

    def due(self, lease_ids: Iterable[str], now_ms: float) -> set[str]:
        """The leases worth a real-time read now (a lease this session did not claim: read it now, or
        after ``foreign_wait_ms``)."""
        if self.foreign_wait_ms:
            for task_id in lease_ids:
                if task_id not in self.next_read:
                    self.next_read[task_id] = now_ms + self.foreign_wait_ms
                    self.foreign.add(task_id)
        return {task_id for task_id in lease_ids if self.next_read.get(task_id, now_ms) <= now_ms}

    def record_reads(self, read: Iterable[str], still_leased: set[str], now_ms: float) -> None:
        """Learn from a read: finished leases teach their type's runs; running ones are read again later."""
        for task_id in read:
            task_type, since = self.started_at.get(task_id, (DEFAULT_TYPE, now_ms))
            if task_id in still_leased:
                ours = task_id not in self.foreign
                self.started_at.setdefault(task_id, (task_type, since))  # not ours: its age counts from now
                recheck_ms = max(MIN_RECHECK_MS, RECHECK_SHARE * (now_ms - since))
                self.next_read[task_id] = now_ms + (recheck_ms if ours else max(recheck_ms, self.foreign_wait_ms))
                continue
            if task_id in self.started_at:
                self._ran(task_type, now_ms - since)
            self.started_at.pop(task_id, None)
            self.next_read.pop(task_id, None)
            self.foreign.discard(task_id)

    def forget(self, lease_ids: set[str]) -> None:
        """Drop what is known of leases no longer in the ledger (freed by another path)."""
        for task_id in [t for t in self.next_read if t not in lease_ids]:
            self.next_read.pop(task_id, None)
            self.started_at.pop(task_id, None)
            self.foreign.discard(task_id)

    def wait_ms(self, now_ms: float) -> float:
        """How long to sleep before the next look: until the earliest lease is worth reading."""
        if not self.next_read:
            return self.max_wait_ms
        earliest = min(self.next_read.values())
        return min(self.max_wait_ms, max(MIN_WAIT_MS, earliest - now_ms))


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


def _quantile(values: Iterable[float], share: float) -> float:
    """The ``share`` quantile (nearest rank, rounded down) of ``values``: the smallest while few."""
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))]

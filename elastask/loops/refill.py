"""A refill session: while a backlog waits for slots, the claim loop keeps its lock and refills freed slots.

Kibana answers ``_run_now`` at once and writes the outcome when the run ends; the only way to
learn that a slot came free is to read the task in the engine. Without a session, a freed slot
waits for the next claim cycle (``busy_polling_interval``, then the beat's tick): with short
tasks the nodes spend more time waiting for work than running it.

In a session the loop instead checks, in real time (``mget``), only the leases likely to have
ended — those older than the shortest hold seen for their task type, then again at growing
intervals — and runs a claim cycle as soon as a slot is free, skipping the search while no slot
is. Every invariant is the claim cycle's own: the session only chooses *when* cycles run and
*which* leases reconcile reads.

Pure: times are passed in (milliseconds of a monotonic clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Never wait less than this between two checks (a session must not spin).
MIN_WAIT_MS = 10
#: A lease still running when checked is checked again after this share of its age (at least MIN_RECHECK_MS):
#: a 200 ms or 1 s task is re-read every 20-30 ms, a 5 s task every ~150 ms (fewer reads for long tasks).
RECHECK_SHARE = 0.03
MIN_RECHECK_MS = 20
#: The first read of a lease comes at this share of the shortest hold seen for its type: a read
#: only ever finds a hold at least as long as the wait before it, so waiting the whole shortest
#: hold would never learn a shorter one (a slow first batch would slow every later one).
FIRST_READ_SHARE = 0.9
#: Before any hold of a task type was seen, its leases are first read after max_wait_ms (what a
#: session would wait anyway): reading a thousand fresh leases every few ms would cost more than
#: the first batch gains.
#: The last search's unread hits stand in for a new search for this long (a task due later, or of a
#: higher priority, waits at most this much longer than with a search every cycle).
LEFTOVER_MAX_AGE_MS = 500
#: Hold times learned per task type: only the shortest matters (when to look first).
DEFAULT_TYPE = ""


class ClaimedLease(NamedTuple):
    """A task a claim cycle of the session claimed."""

    task_id: str
    task_type: str
    #: The version (_seq_no, _primary_term) the claim wrote.
    version: tuple[int, int]
    #: How long until its runAt, when it was claimed ahead (0 when due).
    ahead_ms: float = 0.0


@dataclass
class RefillSession:
    """When to read which leases, learned from the holds seen in this session."""

    started_ms: float
    max_wait_ms: float
    #: False while the session only records claims (the cycle that found the backlog); then True.
    refilling: bool = False
    #: task id -> (task type, when its claim was written)
    claimed_at: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: task id -> when to read it next
    next_check: dict[str, float] = field(default_factory=dict)
    #: task type -> the shortest hold seen (claim written -> found finished)
    shortest_hold_ms: dict[str, float] = field(default_factory=dict)
    #: task id -> the version (_seq_no, _primary_term) it was last seen held at (its claim, or a read)
    versions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The last search's hits no cycle read yet, and when that search ran.
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    leftovers_ms: float = 0.0

    def keep_leftovers(self, hits: list[dict[str, Any]], searched_ms: float) -> None:
        """Hits no cycle read yet, from the search that ran at ``searched_ms``: the next cycle may use them."""
        self.leftovers, self.leftovers_ms = hits, searched_ms

    def take_leftovers(self, room: int, now_ms: float, exclude: set[str] | frozenset[str]) -> list[dict[str, Any]]:
        """The leftovers, when they are recent and more than the free room (so a search adds nothing); else []."""
        if now_ms - self.leftovers_ms > LEFTOVER_MAX_AGE_MS:
            return []
        usable = [h for h in self.leftovers if str(h["_id"]) not in exclude]
        return usable if len(usable) > room else []

    def claimed(self, tasks: Iterable[ClaimedLease], now_ms: float) -> None:
        """Tasks this session claimed: read them first after the shortest hold of their type, without
        their source while they are still at the version the claim wrote.

        A hold counts from when the task could start: its claim, or its runAt when it was claimed
        ahead (pushed then). Counted from the claim, the first tasks of a backlog -- claimed up to a
        second ahead -- taught a hold several times the run, and every later first read waited for
        it, a tenth sooner each round (a 200 ms backlog spent its first 7 s refilling every ~650 ms).
        """
        for task in tasks:
            since = now_ms + max(0.0, task.ahead_ms)
            self.claimed_at[task.task_id] = (task.task_type, since)
            self.versions[task.task_id] = task.version
            shortest = self.shortest_hold_ms.get(task.task_type)
            first = self.max_wait_ms if shortest is None else FIRST_READ_SHARE * shortest
            self.next_check[task.task_id] = since + first

    def learn(self, shortest_hold_ms: Mapping[str, float]) -> None:
        """Start from holds earlier sessions saw; leases not read yet get their first read re-timed."""
        for task_type, hold in shortest_hold_ms.items():
            self.shortest_hold_ms[task_type] = min(hold, self.shortest_hold_ms.get(task_type, hold))
        for task_id, (task_type, since) in self.claimed_at.items():
            if task_type in self.shortest_hold_ms and task_id in self.next_check:
                first = since + FIRST_READ_SHARE * self.shortest_hold_ms[task_type]
                self.next_check[task_id] = min(self.next_check[task_id], first)

    def due_for_check(self, lease_ids: Iterable[str], now_ms: float) -> set[str]:
        """The leases worth a real-time read now (a lease this session did not claim: read it now)."""
        return {task_id for task_id in lease_ids if self.next_check.get(task_id, now_ms) <= now_ms}

    def checked(self, read: Iterable[str], still_held: set[str], now_ms: float) -> None:
        """Learn from a read: finished leases teach the shortest hold; held ones are read again later."""
        for task_id in read:
            task_type, since = self.claimed_at.get(task_id, (DEFAULT_TYPE, now_ms))
            if task_id in still_held:
                self.claimed_at.setdefault(task_id, (task_type, since))  # not ours: its age counts from now
                self.next_check[task_id] = now_ms + max(MIN_RECHECK_MS, RECHECK_SHARE * (now_ms - since))
                continue
            if task_id in self.claimed_at:
                hold = now_ms - since
                self.shortest_hold_ms[task_type] = min(hold, self.shortest_hold_ms.get(task_type, hold))
            self.claimed_at.pop(task_id, None)
            self.next_check.pop(task_id, None)

    def forget(self, lease_ids: set[str]) -> None:
        """Drop what is known of leases no longer in the ledger (freed by another path)."""
        for task_id in [t for t in self.next_check if t not in lease_ids]:
            self.next_check.pop(task_id, None)
            self.claimed_at.pop(task_id, None)
        for task_id in [t for t in self.versions if t not in lease_ids]:
            del self.versions[task_id]

    def wait_ms(self, now_ms: float) -> float:
        """How long to sleep before the next look: until the earliest lease is worth reading."""
        if not self.next_check:
            return self.max_wait_ms
        earliest = min(self.next_check.values())
        return min(self.max_wait_ms, max(MIN_WAIT_MS, earliest - now_ms))

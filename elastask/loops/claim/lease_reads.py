"""When a refill session reads which lease in real time, learned from how long runs took. Pure.

A run counts from the claim (or the runAt of a task claimed ahead) to the read that found it finished;
times are milliseconds of a monotonic clock, passed in. loops/claim/refill.py holds the session that
uses it; loops/claim/reconcile.py does the reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

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
#: A lease not read yet is read once early, as a scout, when its first read is still to come after
#: ``max_wait_ms``: one per task type every ``max_wait_ms``, the oldest first. The short end of a type's
#: runs counts from the claim, so a fault that held dispatch jobs in their queues teaches runs of many
#: seconds; without scouts, no lease claimed meanwhile would be read before that (the claim path then
#: sees every node full while they run nothing). A scout that finds its lease finished teaches a run
#: as long as its wait, which brings the type's short end, and every first read still to come, forward.
#: The task type of a lease the session did not claim (its type is not known).
DEFAULT_TYPE = ""
#: With several claim lanes (core/lanes.py), a lease another lane claimed is read this often only: its own
#: lane reads it on time; this read frees its slot should that lane's holder be gone.
FOREIGN_READ_MS = 500


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
    #: Leases this session claimed and has not read yet; those read early as scouts; the last scout per type.
    unread: set[str] = field(default_factory=set)
    scouted: set[str] = field(default_factory=set)
    last_scout_ms: dict[str, float] = field(default_factory=dict)
    #: The short end per type when first reads were last timed by it.
    _short_ms: dict[str, float] = field(default_factory=dict)

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
            self.unread.add(task.task_id)

    def learn(self, shortest_run_ms: Mapping[str, float]) -> None:
        """Start from the short end of the runs earlier sessions saw (a type this one saw runs of keeps its
        own); leases not read yet get their first read re-timed."""
        for task_type, run_ms in shortest_run_ms.items():
            if task_type not in self.runs_ms:
                self._ran(task_type, run_ms)
        self._retime(set(shortest_run_ms))

    def _retime(self, task_types: set[str]) -> None:
        """Leases of these types not read yet: their first read brought forward to the type's short end."""
        shortest_ms = self.shortest_run_ms
        for task_id, (task_type, since) in self.started_at.items():
            if task_type in task_types and task_type in shortest_ms and task_id in self.next_read:
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
        due = {task_id for task_id in lease_ids if self.next_read.get(task_id, now_ms) <= now_ms}
        return due | self._scouts(lease_ids, due, now_ms)

    def _scouts(self, lease_ids: Iterable[str], due: set[str], now_ms: float) -> set[str]:
        """Per task type, the oldest lease not read yet whose first read is still to come and that was
        claimed ``max_wait_ms`` ago or more, at most one every ``max_wait_ms`` (see the module constants)."""
        oldest: dict[str, tuple[float, str]] = {}
        for task_id in lease_ids:
            if task_id not in self.unread or task_id in due or task_id in self.scouted:
                continue
            task_type, since = self.started_at[task_id]
            scouted_ms = self.last_scout_ms.get(task_type)
            if now_ms - since < self.max_wait_ms or (scouted_ms is not None and now_ms - scouted_ms < self.max_wait_ms):
                continue
            if task_type not in oldest or since < oldest[task_type][0]:
                oldest[task_type] = (since, task_id)
        for task_type in oldest:
            self.last_scout_ms[task_type] = now_ms
        self.scouted.update(task_id for _since, task_id in oldest.values())
        return {task_id for _since, task_id in oldest.values()}

    def record_reads(self, read: Iterable[str], still_leased: set[str], now_ms: float) -> None:
        """Learn from a read: finished leases teach their type's runs; running ones are read again later
        (a scout still running keeps its first read: it only found the short end not yet reached)."""
        taught: set[str] = set()
        for task_id in read:
            task_type, since = self.started_at.get(task_id, (DEFAULT_TYPE, now_ms))
            if task_id in still_leased and task_id in self.scouted and self.next_read.get(task_id, 0.0) > now_ms:
                continue
            self.unread.discard(task_id)
            if task_id in still_leased:
                ours = task_id not in self.foreign
                self.started_at.setdefault(task_id, (task_type, since))  # not ours: its age counts from now
                recheck_ms = max(MIN_RECHECK_MS, RECHECK_SHARE * (now_ms - since))
                self.next_read[task_id] = now_ms + (recheck_ms if ours else max(recheck_ms, self.foreign_wait_ms))
                continue
            if task_id in self.started_at:
                self._ran(task_type, now_ms - since)
                taught.add(task_type)
            self.started_at.pop(task_id, None)
            self.next_read.pop(task_id, None)
            self.foreign.discard(task_id)
            self.scouted.discard(task_id)
        if taught:
            shortest_ms = self.shortest_run_ms
            # Only a short end that came forward moves first reads (most reads teach what it already was).
            self._retime({t for t in taught if shortest_ms[t] < self._short_ms.get(t, float("inf"))})
            self._short_ms = shortest_ms

    def forget(self, lease_ids: set[str]) -> None:
        """Drop what is known of leases no longer in the ledger (freed by another path)."""
        for task_id in [t for t in self.next_read if t not in lease_ids]:
            self.next_read.pop(task_id, None)
            self.started_at.pop(task_id, None)
            self.foreign.discard(task_id)
            self.unread.discard(task_id)
            self.scouted.discard(task_id)

    def wait_ms(self, now_ms: float) -> float:
        """How long to sleep before the next look: until the earliest lease is worth reading."""
        if not self.next_read:
            return self.max_wait_ms
        earliest = min(self.next_read.values())
        return min(self.max_wait_ms, max(MIN_WAIT_MS, earliest - now_ms))


def _quantile(values: Iterable[float], share: float) -> float:
    """The ``share`` quantile (nearest rank, rounded down) of ``values``: the smallest while few."""
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))]

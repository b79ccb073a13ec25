"""What one claim cycle did, in Kibana's words (claimed, stale, conflicts, missing), and how long each step took."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


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
    #: Tasks failed because their own cost is more than any node holds (loops/claim/too_costly.py).
    too_costly: int = 0
    released: int = 0
    #: Leases rebuilt from the engine this cycle (Redis had lost the ledger), or None.
    ledger_rebuilt: int | None = None
    nodes: int = 0
    #: Due tasks the search returned (claimed or not: more than ``claimed`` means a backlog).
    waiting: int = 0
    #: More may be due than this cycle saw: the search came back full (its size is the room).
    search_full: bool = False
    #: Leases held when the cycle began (tasks Kibana may be finishing: slots about to free).
    in_flight: int = 0
    #: Units each node held when the cycle began (the capacity estimation samples them).
    in_flight_units: dict[str, int] = field(default_factory=dict)
    #: The earliest runAt of a later idle task, when a cycle with nothing in flight asked (ms since epoch).
    next_run_at_ms: int | None = None
    #: The cycle was skipped because the loop rests after a quiet cycle (see parts/cadence.py).
    resting: bool = False
    #: The cycle searched for due tasks (a refill session's look that found no free slot does not).
    searched: bool = False
    #: A refill session ran its full length (SESSION_MAX_MS) and tasks still wait: the next claim
    #: job should start at once, not a busy interval later.
    session_expired: bool = False
    capacity_left: dict[str, int] = field(default_factory=dict)
    duration_ms: float = 0.0
    #: Milliseconds spent in each step (search, reconcile, verify, reserve, claim, enqueue).
    steps_ms: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.monotonic, repr=False)

    @property
    def backlog(self) -> bool:
        """Due tasks wait for slots: some were left unclaimed, or the search could not show them all."""
        return self.waiting > self.claimed or self.search_full

    def step(self, name: str) -> None:
        """Close the step that just ended: its time goes under ``name``."""
        now = time.monotonic()
        self.steps_ms[name] = round(self.steps_ms.get(name, 0.0) + (now - self._mark) * 1000, 1)
        self._mark = now

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_mark")
        return data

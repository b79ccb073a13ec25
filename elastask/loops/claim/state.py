"""What the steps of one claim cycle share: the look's plan, what it learned, what it found, its summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elastask.config import Settings
from elastask.core.clock import epoch_ms
from elastask.core.pauses import PauseSet
from elastask.loops.claim.refill import LookPlan, RefillSession
from elastask.loops.claim.summary import ClaimSummary
from elastask.parts.ledger import LeaseView, reservation_token
from elastask.parts.nodes import Node
from elastask.runtime import Runtime


@dataclass
class Cycle:
    """What the steps of one claim cycle share."""

    rt: Runtime
    now: datetime
    session: RefillSession
    plan: LookPlan
    summary: ClaimSummary = field(default_factory=lambda: ClaimSummary())
    available: list[Node] = field(default_factory=list)
    #: The nodes in rotation, paused or not (Kibana's execution pause is asked from them).
    in_rotation: list[Node] = field(default_factory=list)
    view: LeaseView = field(default_factory=lambda: LeaseView(0, []))
    hits: list[dict[str, Any]] = field(default_factory=list)
    #: Free units per node (capacity minus what the ledger holds; below 0 after a capacity cut).
    free: dict[str, int] = field(default_factory=dict)
    #: The ids still leased after this cycle's reads of the ledger (left out of the claim).
    leased: set[str] = field(default_factory=set)
    #: Whether this look read every lease (a look that begins a session reads them all at most once).
    read_all: bool = False
    #: Hits read in real time this cycle (the others may be kept as a session's unread hits).
    examined: set[str] = field(default_factory=set)
    #: When the hits were searched (monotonic ms): unread hits are reused only while recent.
    searched_ms: float = 0.0
    #: The size of the search the hits came from, and whether it came back full (more tasks wait).
    search_size: int = 0
    search_full: bool = False
    #: What is paused now (elastask pause, elastask.yaml's paused:): nothing new is claimed for it.
    pauses: PauseSet = field(default_factory=PauseSet)
    #: Names this cycle's reservations in the ledger (and its worker): its releases and confirms touch
    #: only its own, and reconcile judges those of a worker that died without waiting the pending window.
    token: str = ""

    def __post_init__(self) -> None:
        self.token = self.token or reservation_token(self.rt.worker_id, epoch_ms(self.now))

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

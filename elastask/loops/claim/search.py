"""Step 2 of a claim cycle, the search for due tasks: its requests, and running them.

A look is planned from what the cycle knows (the nodes, the ledger's view, what is paused) and run
as one search, plus one per concurrency group with room (loops/claim/limited.py); the hits come back merged in
claim order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from elastask.config import Settings
from elastask.core import policy, queries
from elastask.core.clock import monotonic_ms
from elastask.core.lanes import Lane
from elastask.core.pauses import PauseSet
from elastask.loops.claim import limited
from elastask.parts.ledger import LeaseView
from elastask.parts.nodes import Node
from elastask.parts.store import TaskStore


def lookahead_ms(settings: Settings) -> int:
    """How far ahead of runAt a task is claimed (and pushed at its runAt)."""
    return min(settings.polling_interval_ms, policy.MAX_LOOKAHEAD_MS)


@dataclass(frozen=True)
class DueSearch:
    """The requests of one look for due tasks: the main search first, then one per group with room."""

    #: (request body, what it is for an error message)
    requests: Sequence[tuple[dict[str, Any], str]] = ()

    @property
    def size(self) -> int:
        return int(self.requests[0][0]["size"]) if self.requests else 0


@dataclass
class Found:
    """What a look found: the hits in claim order, and whether any search came back full."""

    hits: list[dict[str, Any]] = field(default_factory=list)
    full: bool = False
    size: int = 0
    #: The next known runAt after the claim-ahead window (ms since the epoch; None: none).
    next_run_at_ms: int | None = None
    #: When the search ran (monotonic ms).
    searched_ms: float = 0.0


def plan(
    settings: Settings,
    now: datetime,
    available: Sequence[Node],
    view: LeaseView,
    pauses: PauseSet,
    cheapest: int,
    exclude_ids: Iterable[str],
    *,
    sources: bool = False,
    lane: Lane | None = None,
) -> DueSearch:
    """The searches for tasks due by ``now`` plus the claim-ahead window, leaving out ``exclude_ids``
    (the tasks the ledger holds, the quarantined, those Kibana finished a moment ago). ``sources``:
    the hits carry their documents (loops/claim/fresh_hits.py need not read them again). ``lane``: only
    that claim lane's share of the tasks (core/lanes.py)."""
    if not available:
        return DueSearch()
    lookahead = timedelta(milliseconds=lookahead_ms(settings))
    common: dict[str, Any] = {
        "default_max_attempts": settings.max_attempts,
        "max_attempts_by_type": settings.max_attempts_by_type(),
        "priority_by_type": settings.priority_by_type(),
        "exclude_ids": set(exclude_ids),
        "share": None if lane is None else lane.query_filter(),
    }
    source_option = {"_source": True} if sources else {}
    body = queries.due_tasks(
        now + lookahead,
        # Every task the nodes could take if every lease ended now; leased tasks are left out of the
        # search (the near-real-time search can still show a task claimed a moment ago as idle).
        size=min(settings.claim_batch_size, sum(n.capacity_units for n in available) // cheapest),
        exclude_types={*settings.catalogue.removed, *limited.limited_types(settings), *pauses.types()},
        # Nothing in flight: this cycle may turn out quiet; learn how long the loop may then rest.
        next_run_after=None if view.leases else now + lookahead,
        **common,
    )
    requests = [({**body, **source_option}, "searching due tasks")]
    room = limited.group_room(settings, available, view.group_counts)
    for group, size, types in limited.group_searches(settings, room):
        group_body = queries.due_tasks(
            now + lookahead,
            size=size,
            only_types=types,
            exclude_types={*settings.catalogue.removed, *pauses.types()},
            **common,
        )
        requests.append(({**group_body, **source_option}, f"searching due {group} tasks"))
    return DueSearch(requests)


def run(store: TaskStore, search: DueSearch, clock: Callable[[], float] = monotonic_ms) -> Found:
    """Run a look's searches; the hits merged in claim order, and when (``clock``, monotonic ms)."""
    found = Found(size=search.size, searched_ms=clock())
    batches = []
    for i, (body, what) in enumerate(search.requests):
        answer = store.search(body, what)
        batches.append([dict(hit) for hit in answer["hits"]["hits"]])
        found.full = found.full or len(batches[-1]) >= int(body["size"])
        if i == 0:
            found.next_run_at_ms = queries.next_run_at_ms(answer)
    found.hits = limited.merge_hits(batches) if batches else []
    found.full = bool(found.hits) and found.full
    return found

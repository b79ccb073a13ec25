"""Claim lanes: claim paths that run at once, each over a disjoint share of the due tasks. Pure.

Kibana splits its tasks into 256 partitions (``task.partition`` = murmur3(id) % 256, set since 8.16)
and spreads them over its claimers (elastic/kibana #187698). elastask's lanes use the same field: with
``count`` lanes, lane ``index`` claims the tasks whose partition is ``index`` modulo ``count``; a task
without a partition (written before 8.16) belongs to lane 0. Each lane has its own claim lock, refill
session and rest; every lane shares the one ledger, so the cap stays one atomic check. Lanes that
disagree for a moment on ``count`` (a worker came or went) overlap or leave a share unclaimed until
their next look: an overlap costs conflicts (each claim is a conditional write), never a double run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Kibana's number of task partitions.
PARTITIONS = 256
#: The most lanes (``claim_lanes``); also how many lanes' rests a wake clears.
MAX_LANES = 16


@dataclass(frozen=True)
class Lane:
    """Lane ``index`` of ``count`` (``Lane(0, 1)``: the one claim path, every task)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count <= MAX_LANES:
            raise ValueError(f"lane {self.index} of {self.count}: want 0 <= index < count <= {MAX_LANES}")

    @property
    def partitions(self) -> list[int]:
        return [p for p in range(PARTITIONS) if p % self.count == self.index]

    def query_filter(self) -> dict[str, Any] | None:
        """The search filter of this lane's share (None: one lane, every task)."""
        if self.count == 1:
            return None
        share: list[dict[str, Any]] = [{"terms": {"task.partition": self.partitions}}]
        if self.index == 0:
            share.append({"bool": {"must_not": [{"exists": {"field": "task.partition"}}]}})
        return {"bool": {"should": share, "minimum_should_match": 1}}

    def __str__(self) -> str:
        return f"lane {self.index + 1} of {self.count}"


def lane_count(configured: int, live_workers: int) -> int:
    """How many lanes run: ``claim_lanes``, at most one per live worker, at least one."""
    return max(1, min(configured, live_workers, MAX_LANES))

"""Task types with a concurrency limit per Kibana node (Kibana's ``maxConcurrency``): searched apart.

As Kibana's mget claimer does (strategy_mget.ts searches each limited type apart), the claim cycle's
main search leaves these types out, and each group whose limit leaves room on some node gets a search
of its own sized to that room: a limited type at its limit never fills the batch that the other types
need (Kibana's starvation bug, elastic/kibana #184937). The ledger holds the limit itself (reserve.lua),
on Redis's clock, beside the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from elastask.config import Settings
from elastask.parts.ledger import SlotRequest
from elastask.parts.nodes import Node


def limited_types(settings: Settings) -> list[str]:
    """Every task type (or pattern) with a concurrency limit: left out of the main due search."""
    return [t for _limit, types in settings.concurrency_groups().values() for t in types]


def group_room(
    settings: Settings, nodes: Sequence[Node], counts: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """Per node, per group: how many more of the group's tasks it may run now (``counts``: held now)."""
    groups = settings.concurrency_groups()
    return {
        node.owner_id: {
            group: max(0, limit - counts.get(node.owner_id, {}).get(group, 0))
            for group, (limit, _types) in groups.items()
        }
        for node in nodes
    }


def group_searches(settings: Settings, room: Mapping[str, Mapping[str, int]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(group, how many to search for, its types) for every group with room on some node."""
    searches = []
    for group, (_limit, types) in sorted(settings.concurrency_groups().items()):
        free = sum(rooms.get(group, 0) for rooms in room.values())
        if free > 0:
            searches.append((group, free, types))
    return searches


def group_of(settings: Settings) -> Callable[[str], str | None]:
    """A task type's concurrency group, or None for a type without a limit."""
    return lambda task_type: settings.for_type(task_type).concurrency_group


def slot_request(settings: Settings, task_id: str, task_type: str, cost: int, expiry: datetime) -> SlotRequest:
    """The ledger's request for one task's slot, with its type's concurrency group and limit.

    Every slot carries them, however it is taken (reserved, taken again at confirm, rebuilt from the
    engine): a slot without its group would let a second run of the group start beside it.
    """
    group = settings.for_type(task_type).concurrency_group
    limit = settings.concurrency_groups()[group][0] if group else None
    return (task_id, cost, expiry, group, limit)


def merge_hits(batches: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The hits of several searches in one claim order: priority high to low, then runAt old to new.

    Each search sorts by (priority, runAt) and every hit carries its ``sort`` values; without them (a
    search that did not sort), the batches keep their own order one after the other.
    """
    hits = [hit for batch in batches for hit in batch]
    if len(batches) < 2 or not all(isinstance(hit.get("sort"), list) and len(hit["sort"]) >= 2 for hit in hits):
        return hits
    return sorted(hits, key=lambda hit: (-float(hit["sort"][0]), float(hit["sort"][1])))

"""Ready tasks: claimed for a node ahead of a free slot, so a freed slot costs one push, not a claim cycle.

A refill session claims, beyond the free room, a few tasks per node (READY_SHARE of its capacity)
and keeps them here, in claim order, as the dispatch job would carry them. They hold no slot: when
reconcile sees a slot free, the next ready task takes it (the ledger's reservation checks the cap as
for any claim) and its dispatch job is enqueued at once. Only the claim loop, under its lock,
reads and writes these lists.

A ready task is claimed in the engine (``status: running``, its node's ``ownerId``, a lease), so
the due search never returns it; if Redis loses the list, its lease runs out and the retry loop
returns it, as for a dispatch job lost with the broker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

import redis

from elastask import keys
from elastask.core.messages import ClaimedTask
from elastask.parts.redis_errors import redis_errors

#: Ready tasks per node, as a share of its capacity units.
READY_SHARE = 0.5


class ReadyTasks:
    """Per-node lists of ready tasks in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def view(self, owner_ids: Sequence[str]) -> dict[str, list[ClaimedTask]]:
        """Every node's ready tasks, in order (one pipelined round trip)."""
        if not owner_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for owner in owner_ids:
            pipe.lrange(keys.ready(owner), 0, -1)
        with redis_errors("reading the ready tasks"):
            answers = cast(list[list[bytes]], pipe.execute())
        return {owner: [_decode(raw) for raw in items] for owner, items in zip(owner_ids, answers, strict=True)}

    def append(self, owner_id: str, tasks: Sequence[ClaimedTask]) -> None:
        """Add tasks claimed for this node at the end of its list."""
        if tasks:
            with redis_errors(f"keeping ready tasks for {owner_id}"):
                self.client.rpush(keys.ready(owner_id), *(json.dumps(t.as_dict()) for t in tasks))

    def take(self, owner_id: str, count: int) -> list[ClaimedTask]:
        """Remove and return up to ``count`` tasks from the front of this node's list."""
        if count <= 0:
            return []
        with redis_errors(f"taking ready tasks of {owner_id}"):
            raw = cast(list[bytes] | None, self.client.lpop(keys.ready(owner_id), count))
        return [_decode(item) for item in raw or []]

    def put_back(self, owner_id: str, tasks: Sequence[ClaimedTask]) -> None:
        """Return tasks taken but not dispatched to the front of the list, in their order."""
        if tasks:
            with redis_errors(f"returning ready tasks of {owner_id}"):
                self.client.lpush(keys.ready(owner_id), *(json.dumps(t.as_dict()) for t in reversed(tasks)))


def _decode(raw: bytes | str) -> ClaimedTask:
    return ClaimedTask(**json.loads(raw))

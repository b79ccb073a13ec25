"""What happened lately, kept in Redis for the console: accepted pushes with their start drift and task
type, each node's last push and restarts noticed (counted by loops/retry/node_restarts.py), and the
console's control actions.

Bounded lists and small hashes: the write side is one more command in a pipeline a dispatch job sends
anyway (``queue_started``); the read side is what the console reads once per refresh. Best effort on
the write side, as metrics.py: a lost sample never fails a push.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from elastask import keys

#: Accepted pushes kept (newest first): at 500 pushes/s, the last 20 s; at 10/s, the last 20 minutes.
STARTS_KEPT = 10_000
#: Control actions kept.
ACTIONS_KEPT = 200


@dataclass(frozen=True)
class Start:
    """One accepted push: when (ms), to which node, its task type and start drift (seconds)."""

    at_ms: int
    owner_id: str
    task_type: str
    drift_s: float


def queue_started(pipe: Any, owner_id: str, drifts: Sequence[tuple[str, float]], now_ms: int) -> None:
    """Commands recording a dispatch job's accepted pushes, added to a pipeline the job sends anyway."""
    if not drifts:
        return
    pipe.lpush(keys.RECENT_STARTS, *(f"{now_ms}|{owner_id}|{drift:.3f}|{task_type}" for task_type, drift in drifts))
    pipe.ltrim(keys.RECENT_STARTS, 0, STARTS_KEPT - 1)
    pipe.hset(keys.RECENT_LAST_PUSH, owner_id, now_ms)


def record_action(client: redis.Redis, entry: dict[str, Any]) -> None:
    """Keep one control action (who, what, when, result) for the console's list; raises RedisError."""
    pipe = client.pipeline(transaction=False)
    pipe.lpush(keys.CONSOLE_ACTIONS, json.dumps(entry, sort_keys=True))
    pipe.ltrim(keys.CONSOLE_ACTIONS, 0, ACTIONS_KEPT - 1)
    pipe.execute()


def parse_start(raw: bytes | str) -> Start | None:
    """One ``RECENT_STARTS`` entry, or None for one this version cannot read."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split("|", 3)
    if len(parts) != 4:
        return None
    try:
        return Start(int(parts[0]), parts[1], parts[3], float(parts[2]))
    except ValueError:
        return None


class RecentReader:
    """Read side, for the console (one pipelined round trip)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def read(self, since_ms: int) -> tuple[list[Start], dict[str, int], dict[str, int], list[dict[str, Any]]]:
        """Starts since ``since_ms`` (newest first), last push and restarts per node, the latest actions."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lrange(keys.RECENT_STARTS, 0, STARTS_KEPT - 1)
        pipe.hgetall(keys.RECENT_LAST_PUSH)
        pipe.hgetall(keys.RECENT_RESTARTS)
        pipe.lrange(keys.CONSOLE_ACTIONS, 0, 19)
        raw_starts, last_push, restarts, actions = pipe.execute()
        starts: list[Start] = []
        for raw in raw_starts:
            start = parse_start(raw)
            if start is None:
                continue
            if start.at_ms < since_ms:
                break  # newest first: the rest is older
            starts.append(start)
        return (
            starts,
            {k.decode(): int(v) for k, v in last_push.items()},
            {k.decode(): int(v) for k, v in restarts.items()},
            [json.loads(a) for a in actions],
        )

"""Per-minute usage buckets in Redis, the inputs of the capacity estimation (see core/capacity_estimate.py).

Each minute has one hash, kept for ``KEEP_MINUTES``:

- ``sampled_ms`` and ``in_flight_unit_ms|<ownerId>``: every claim cycle adds the units each node
  holds, weighted by the time since the previous cycle (Redis's clock, in Lua), so their ratio is
  the time-averaged units in flight;
- ``runs|<ownerId>`` and ``run_units|<ownerId>``: every dispatch job adds the pushes Kibana
  accepted and their cost units.

Writes are best effort (a lost sample never fails a claim or a push), like metrics.py.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from elastask import keys
from elastask.parts.scripts import register

#: Minutes of buckets kept; the estimate reads the last ``WINDOW_MINUTES`` of them.
KEEP_MINUTES = 15
WINDOW_MINUTES = 5
#: A gap between claim cycles longer than this (the dispatcher was stopped) is not counted.
MAX_SAMPLE_GAP_MS = 10_000

LAST_SAMPLE = keys.USAGE_LAST_SAMPLE


@dataclass(frozen=True)
class UsageWindow:
    """The summed buckets of a window: sampled time and, per owner, in-flight unit-ms, runs, run units."""

    sampled_ms: int
    by_owner: dict[str, dict[str, float]]


class UsageRecorder:
    """Write side: the claim loop samples in-flight units, the dispatch loop counts accepted runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._sample = register(client, "capacity_sample", "now")

    def sample_in_flight(self, used_units: Mapping[str, int], now_ms: int) -> None:
        """One sample of the units each node holds now."""
        args: list[str | int] = [MAX_SAMPLE_GAP_MS, KEEP_MINUTES * 60]
        for owner, units in sorted(used_units.items()):
            args += [owner, int(units)]
        with contextlib.suppress(redis.RedisError):
            self._sample(keys=[keys.usage_minute(now_ms // 60_000), LAST_SAMPLE], args=args)

    def runs_started(self, owner_id: str, runs: int, units: int, now_ms: int) -> None:
        """Kibana accepted ``runs`` pushes of ``units`` cost units in total on this node."""
        if runs <= 0:
            return
        pipe = self.client.pipeline(transaction=False)
        queue_runs_started(pipe, owner_id, runs, units, now_ms)
        with contextlib.suppress(redis.RedisError):
            pipe.execute()


def queue_runs_started(pipe: Any, owner_id: str, runs: int, units: int, now_ms: int) -> None:
    """``UsageRecorder.runs_started``'s commands, added to a pipeline another write shares."""
    if runs <= 0:
        return
    key = keys.usage_minute(now_ms // 60_000)
    pipe.hincrby(key, f"runs|{owner_id}", runs)
    pipe.hincrby(key, f"run_units|{owner_id}", units)
    pipe.expire(key, KEEP_MINUTES * 60)


class UsageReader:
    """Read side, for /health and ``elastask status``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def window(self, now_ms: int, minutes: int = WINDOW_MINUTES) -> UsageWindow:
        """The last ``minutes`` buckets (the current, partial one included), summed."""
        current = now_ms // 60_000
        pipe = self.client.pipeline(transaction=False)
        for minute in range(current - minutes + 1, current + 1):
            pipe.hgetall(keys.usage_minute(minute))
        sampled = 0
        by_owner: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for raw in cast(list[dict[bytes, bytes]], pipe.execute()):
            for field, value in raw.items():
                name, _, owner = field.decode().partition("|")
                if name == "sampled_ms":
                    sampled += int(value)
                elif owner:
                    by_owner[owner][name] += float(value)
        return UsageWindow(sampled, {owner: dict(values) for owner, values in by_owner.items()})

"""Counters, histograms and recent samples, kept in Redis so every worker on every machine adds to one set.

Celery's prefork pool runs many processes, often on many machines: in-process Prometheus metrics
would each see a slice. The loops record here (one pipelined round trip per record); ``elastask
serve`` renders ``/metrics`` and ``/health`` from it, plus live gauges from the ledger.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import redis

from elastask import keys
from elastask.core.clock import epoch_ms

#: Histogram bucket upper bounds, seconds.
BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf)
#: Recent samples kept for health percentiles.
WINDOW = 1000

COUNTERS = keys.METRIC_COUNTERS
LAST_CLAIM = keys.METRIC_LAST_CLAIM


def counter_field(name: str, labels: Mapping[str, str] | None = None) -> str:
    """``name`` or ``name|k=v,k2=v2`` (labels sorted), the field a counter is stored under."""
    if not labels:
        return name
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_counter_field(text: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`counter_field`."""
    name, _, rest = text.partition("|")
    labels = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
    return name, labels


class Metrics:
    """Write side: what the claim, dispatch and retry loops record."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def record(
        self,
        counts: Mapping[str, int] | None = None,
        labelled: Sequence[tuple[str, Mapping[str, str], int]] = (),
        observations: Sequence[tuple[str, float]] = (),
        also: Callable[[Any], object] | None = None,
    ) -> None:
        """Add to counters and observe values (seconds) in one round trip; never raises (metrics are best effort).
        ``also``: more commands for the same round trip (e.g. the usage a dispatch job records)."""
        pipe = self.client.pipeline(transaction=False)
        if also is not None:
            also(pipe)
        for name, n in (counts or {}).items():
            if n:
                pipe.hincrby(COUNTERS, name, n)
        for name, labels, n in labelled:
            if n:
                pipe.hincrby(COUNTERS, counter_field(name, labels), n)
        # One set of commands per histogram, not per value: a dispatch job observes each task's drift.
        by_name: dict[str, list[float]] = defaultdict(list)
        for name, value in observations:
            by_name[name].append(value)
        for name, values in by_name.items():
            buckets = Counter(next(b for b in BUCKETS_S if value <= b) for value in values)
            for bucket, n in buckets.items():
                pipe.hincrby(keys.metric_histogram(name), str(bucket), n)
            pipe.hincrbyfloat(keys.metric_histogram(name), "sum", sum(values))
            pipe.hincrby(keys.metric_histogram(name), "count", len(values))
            pipe.lpush(keys.metric_window(name), *values)
            pipe.ltrim(keys.metric_window(name), 0, WINDOW - 1)
        # Losing a sample must never fail a claim or a push.
        with contextlib.suppress(redis.RedisError):
            pipe.execute()

    def claim_succeeded(self, now: datetime) -> None:
        """Remember when a claim cycle last ran to its end."""
        with contextlib.suppress(redis.RedisError):
            self.client.set(LAST_CLAIM, epoch_ms(now))


class MetricsReader:
    """Read side, for /metrics and /health."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def counters(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(COUNTERS))
        return {k.decode(): int(v) for k, v in raw.items()}

    def histogram(self, name: str) -> tuple[list[tuple[float, int]], float, int]:
        """Cumulative (bound, count) pairs, the sum and the count."""
        stored = cast(dict[bytes, bytes], self.client.hgetall(keys.metric_histogram(name)))
        raw = {k.decode(): v.decode() for k, v in stored.items()}
        cumulative, running = [], 0
        for bound in BUCKETS_S:
            running += int(raw.get(str(bound), 0))
            cumulative.append((bound, running))
        return cumulative, float(raw.get("sum", 0.0)), int(raw.get("count", 0))

    def window(self, name: str) -> list[float]:
        """The most recent samples (seconds)."""
        return [float(v) for v in cast(list[bytes], self.client.lrange(keys.metric_window(name), 0, WINDOW - 1))]

    def last_claim_ms(self) -> int | None:
        value = self.client.get(LAST_CLAIM)
        return int(cast(bytes, value)) if value else None


def summary_counts(summary: Any) -> dict[str, int]:
    """Counter increments of one claim cycle summary."""
    return {
        "elastask_claim_cycles_total": 1,
        "elastask_claimed_total": summary.claimed,
        "elastask_claim_conflicts_total": summary.conflicts,
        "elastask_claim_stale_total": summary.stale,
        "elastask_released_total": summary.released,
        "elastask_malformed_total": summary.skipped,
        "elastask_too_costly_total": summary.too_costly,
    }

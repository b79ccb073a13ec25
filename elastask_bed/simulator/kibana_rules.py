"""Kibana task manager's own rules, as the pull baseline follows them. Pure: time passed in.

Each function names the Kibana file it follows (paths under
``x-pack/platform/plugins/shared/task_manager/server/``); the unit tests pin them to worked examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: config.ts: the mget claimer's poll interval, and the one it stretches to while load is low.
MGET_POLL_INTERVAL_MS = 500
DEFAULT_POLL_INTERVAL_MS = 3000
#: lib/create_managed_configuration.ts
ADJUST_THROUGHPUT_INTERVAL_MS = 10_000
PREFERRED_MAX_POLL_INTERVAL_MS = 60_000
CAPACITY_DECREASE = 0.8
CAPACITY_INCREASE = 1.05
POLL_INTERVAL_INCREASE = 1.2
POLL_INTERVAL_DECREASE = 0.95
LOW_UTILIZATION_PERCENT = 25
#: config.ts: WORKER_UTILIZATION_RUNNING_AVERAGE_WINDOW_SIZE_MS
UTILIZATION_WINDOW_MS = 15_000
#: MIN_COST = TaskCost.ExtraLarge / TaskCost.Normal: capacity never drops below one extra-large task.
MIN_CAPACITY = 5
#: config.ts: DEFAULT_KIBANAS_PER_PARTITION; task_partitioner.ts: 256 partitions.
KIBANAS_PER_PARTITION = 2
PARTITIONS = 256
#: kibana_discovery_service.ts: heartbeat and active-node lookup every 10 s.
DISCOVERY_INTERVAL_MS = 10_000


def next_run_at(run_at: datetime, started_at: datetime, interval_ms: int, now: datetime, threshold_ms: int) -> datetime:
    """lib/get_next_run_at.ts: from runAt when the run started within ``threshold_ms`` of it (on time),
    else from startedAt; never before now. task_runner.ts passes the poll interval as the threshold."""
    delay_ms = (started_at - run_at).total_seconds() * 1000
    base = run_at if delay_ms < threshold_ms else started_at
    return max(base + timedelta(milliseconds=interval_ms), now)


def retry_delay_ms(attempts: int) -> int:
    """task_runner.ts calculateDelay: 30 s after the first attempt, then 5 m x 2^(attempts-2)."""
    return 30_000 if attempts == 1 else 5 * 60_000 * 2 ** (attempts - 2)


def claim_retry_at(now: datetime, attempts_after_claim: int, timeout_ms: int, interval_ms: int | None) -> datetime:
    """lib/get_retry_at.ts: a recurring task's lease is max(interval, timeout); a one-shot task's is the
    retry delay of the attempt it is on plus the timeout (now + 30 s + timeout on its first run)."""
    if interval_ms is not None:
        return now + timedelta(milliseconds=max(interval_ms, timeout_ms))
    return now + timedelta(milliseconds=retry_delay_ms(attempts_after_claim) + timeout_ms)


def partition_map(pod_names: Sequence[str], partitions: Sequence[int] = range(PARTITIONS)) -> dict[int, list[str]]:
    """lib/assign_pod_partitions.ts getPartitionMap: sorted pod names, dealt round robin, 2 per partition."""
    pods = sorted(pod_names)
    result: dict[int, list[str]] = {}
    counter = 0
    for partition in partitions:
        result[partition] = []
        for _ in range(KIBANAS_PER_PARTITION):
            result[partition].append(pods[counter % len(pods)])
            counter += 1
    return result


def assigned_partitions(pod_name: str, pod_names: Sequence[str]) -> list[int]:
    """lib/assign_pod_partitions.ts assignPodPartitions: the partitions a pod searches."""
    return [p for p, pods in partition_map(pod_names).items() if pod_name in pods]


@dataclass
class ManagedConfiguration:
    """lib/create_managed_configuration.ts: the poll interval and capacity, re-decided every 10 s.

    Errors (429, 5xx, a cluster block) in a window: capacity x 0.8 (not below one extra-large task),
    interval x 1.2 (up to 60 s). A window without errors: back toward the configured values (x 1.05,
    x 0.95); then, for the mget claimer, 3000 ms while the mean utilisation of the last 15 s is
    under 25 %, else the configured 500 ms.
    """

    starting_capacity: int = 10
    starting_poll_interval_ms: int = MGET_POLL_INTERVAL_MS
    capacity: int = 0
    poll_interval_ms: int = 0
    errors: int = 0
    #: (when, utilisation percent) samples of the last UTILIZATION_WINDOW_MS.
    utilization: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.capacity = self.capacity or self.starting_capacity
        self.poll_interval_ms = self.poll_interval_ms or self.starting_poll_interval_ms

    def record_utilization(self, at_ms: float, percent: float) -> None:
        """One sample of the task pool's used capacity (every poll)."""
        self.utilization.append((at_ms, percent))
        self.utilization = [(t, p) for t, p in self.utilization if at_ms - t <= UTILIZATION_WINDOW_MS]

    def record_error(self) -> None:
        """A 429, 5xx or cluster block answer from the engine (counted until the next adjustment)."""
        self.errors += 1

    def adjust(self) -> None:
        """The every-10-s decision."""
        if self.errors:
            self.capacity = max(math.floor(self.capacity * CAPACITY_DECREASE), MIN_CAPACITY)
            ceiling = max(PREFERRED_MAX_POLL_INTERVAL_MS, self.starting_poll_interval_ms)
            self.poll_interval_ms = min(math.ceil(self.poll_interval_ms * POLL_INTERVAL_INCREASE), ceiling)
        else:
            self.capacity = min(self.starting_capacity, math.ceil(self.capacity * CAPACITY_INCREASE))
            decreased = math.floor(self.poll_interval_ms * POLL_INTERVAL_DECREASE)
            self.poll_interval_ms = max(self.starting_poll_interval_ms, decreased)
            if self.poll_interval_ms < DEFAULT_POLL_INTERVAL_MS:
                samples = [p for _, p in self.utilization] or [0.0]
                mean = sum(samples) / len(samples)
                low = mean < LOW_UTILIZATION_PERCENT
                self.poll_interval_ms = DEFAULT_POLL_INTERVAL_MS if low else self.starting_poll_interval_ms
        self.errors = 0

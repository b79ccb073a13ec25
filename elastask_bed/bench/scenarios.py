"""The benchmark scenarios and their sizes (each overridable from the command line). Pure."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from elastask.core.documents import TaskDocument, new_task
from elastask.core.intervals import parse_interval_ms


@dataclass(frozen=True)
class Scenario:
    """One workload, run the same way in every mode."""

    name: str
    nodes: int
    capacity: int = 10
    one_shot_tasks: int = 0
    recurring_tasks: int = 0
    interval: str = "10s"
    run_ms: int = 1000
    duration_s: float = 0.0  # 0: until every one-shot task is done
    idle_docs: int = 0  # documents not due (runAt far in the future): index size for the scale run
    #: What the scenario measures (the sizes are described from the fields, as configured).
    purpose: str = ""
    #: The realistic mix (see MIX): its own documents, run times per task type and priorities.
    mix: bool = False
    #: The tasks are due before the dispatcher starts (push: its worker and beat; pull: the nodes'
    #: claimers): the run measures the start-up too, from the processes' start to the last run's end.
    cold_start: bool = False

    @property
    def description(self) -> str:
        """The run as configured: nodes, capacity, tasks, run time, purpose."""
        parts = [f"{self.nodes} node{'s' if self.nodes != 1 else ''} x capacity {self.capacity}"]
        if self.mix:
            return ", ".join([*parts, MIX_DESCRIPTION, f"{self.duration_s:g} s"]) + f": {self.purpose}"
        if self.one_shot_tasks:
            parts.append(f"{self.one_shot_tasks:,} one-shot tasks of {self.run_ms:,} ms due at once")
        if self.recurring_tasks:
            parts.append(f"{self.recurring_tasks:,} recurring tasks of {self.run_ms:,} ms every {self.interval}")
        if self.idle_docs:
            parts.append(f"{self.one_shot_tasks + self.recurring_tasks + self.idle_docs:,} documents in the index")
        if self.duration_s:
            parts.append(f"{self.duration_s:g} s")
        if self.cold_start:
            parts.append("the dispatcher started with the burst")
        return ", ".join(parts) + (f": {self.purpose}" if self.purpose else "")

    @property
    def ceiling_per_s(self) -> float:
        """The physical ceiling: nodes x capacity / run time of a task."""
        return self.nodes * self.capacity / (self.run_ms / 1000)

    def sized(self, **changes: Any) -> Scenario:
        """A copy with some sizes changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


SCENARIOS: dict[str, Scenario] = {
    "backlog": Scenario(
        "backlog",
        nodes=10,
        one_shot_tasks=5000,
        run_ms=1000,
        purpose="throughput",
    ),
    "steady": Scenario(
        "steady",
        nodes=10,
        recurring_tasks=550,
        interval="10s",
        run_ms=1000,
        duration_s=120,
        purpose="start drift",
    ),
    "idle": Scenario(
        "idle",
        nodes=1,
        duration_s=20,
        purpose="no due tasks: engine requests per second",
    ),
    "mix": Scenario(
        "mix",
        nodes=10,
        duration_s=60,
        mix=True,
        purpose="start drift of a realistic workload",
    ),
    "burst": Scenario(
        "burst",
        nodes=3,
        one_shot_tasks=300,
        run_ms=200,
        cold_start=True,
        purpose="a burst of short tasks, from a cold start",
    ),
    "scale": Scenario(
        "scale",
        nodes=100,
        one_shot_tasks=10_000,
        idle_docs=90_000,
        run_ms=1000,
        purpose="claim cycle time and drift",
    ),
}

#: The fleet scenario's sizes (nodes x capacity 10), its backlog's run time, and the share of the
#: fleet's ceiling its steady recurring load asks for.
FLEET_SIZES = (10, 30, 50)
FLEET_RUN_MS = 100
FLEET_STEADY_LOAD = 0.7
FLEET_STEADY_S = 60.0


def fleet(
    sizes: tuple[int, ...] = FLEET_SIZES,
    *,
    tasks: int | None = None,
    run_ms: int | None = None,
    duration_s: float | None = None,
    load: float = FLEET_STEADY_LOAD,
) -> list[Scenario]:
    """Per fleet size, a backlog of short one-shot tasks (3,000 + 100 per node: 4,000 at 10 nodes, 8,000
    at 50) and a steady recurring load at ``load`` of the fleet's ceiling (1 s runs every 10 s)."""
    runs = []
    for nodes in sizes:
        runs.append(
            Scenario(
                "fleet-backlog",
                nodes=nodes,
                one_shot_tasks=tasks if tasks is not None else 3000 + 100 * nodes,
                run_ms=run_ms or FLEET_RUN_MS,
                purpose="throughput as the fleet grows",
            )
        )
        steady = Scenario(
            "fleet-steady", nodes=nodes, interval="10s", run_ms=1000, duration_s=duration_s or FLEET_STEADY_S
        )
        recurring = round(load * steady.ceiling_per_s * parse_interval_ms(steady.interval) / 1000)
        runs.append(
            steady.sized(recurring_tasks=max(1, recurring), purpose=f"start drift at {load:.0%} of the ceiling")
        )
    return runs


#: Kibana's number of task partitions.
PARTITIONS = 256

#: The idle scenario runs once per fleet size.
IDLE_FLEETS = (1, 10, 50)


def partition_of(task_id: str) -> int:
    """A task's partition, 0-255, from a hash of its id (Kibana uses murmur3; any uniform hash will do)."""
    return zlib.crc32(task_id.encode()) % PARTITIONS


def task(task_id: str, task_type: str, now: datetime, **options: Any) -> TaskDocument:
    """A new task with its partition, as Kibana 8.16+ schedules it."""
    return new_task(task_id, task_type, now=now, partition=partition_of(f"task:{task_id}"), **options)


#: The realistic mix, per task type: (recurring tasks by interval, one-shot tasks per burst, run time,
#: priority). Run times as Kibana's own workloads have them: most alerting rules and actions run well
#: under a second with a long tail (p50 150 ms, p99 5 s); a few tiny and a few extra-large types.
MIX: dict[str, tuple[dict[str, int], int, str, int]] = {
    "mix:rule": ({"10s": 300, "30s": 600, "1m": 900, "5m": 1200}, 0, "logn:150:5000", 50),
    "mix:action": ({}, 60, "logn:150:5000", 80),  # one-shot bursts, higher priority
    "mix:tiny": ({"10s": 150}, 0, "10-30", 50),
    "mix:report": ({"1m": 20}, 0, "4000-9000", 20),  # extra-large, low priority
}
#: A burst of one-shot actions falls due every this many seconds.
MIX_BURST_EVERY_S = 10
MIX_DESCRIPTION = (
    "3,170 recurring tasks every 10 s to 5 m and a burst of 60 one-shot actions every 10 s; run times "
    "p50 150 ms / p99 5 s, plus tiny (10-30 ms) and extra-large (4-9 s) types; three priorities"
)


def run_times(scenario: Scenario) -> tuple[str, list[str]]:
    """The simulator's default run time and its ``--run-ms-by-type`` items."""
    if not scenario.mix:
        return str(scenario.run_ms), []
    return "200", [f"{name}={spec}" for name, (_r, _b, spec, _p) in MIX.items()]


def priorities(scenario: Scenario) -> list[str]:
    """The pull model's ``--type-priority`` items (elastask reads each document's ``task.priority``)."""
    return [f"{name}={priority}" for name, (_r, _b, _s, priority) in MIX.items()] if scenario.mix else []


def mix_documents(scenario: Scenario, now: datetime) -> list[TaskDocument]:
    """Recurring tasks spread over their interval, and bursts of one-shot tasks over the run."""
    docs = []
    for name, (recurring, burst, _spec, priority) in MIX.items():
        short = name.split(":", 1)[1]
        for interval, count in recurring.items():
            interval_ms = parse_interval_ms(interval)
            for i in range(count):
                offset = timedelta(milliseconds=interval_ms * i / count)
                docs.append(
                    task(
                        f"mix-{short}-{interval}-{i:05d}",
                        name,
                        now,
                        run_at=now + offset,
                        interval=interval,
                        priority=priority,
                    )
                )
        bursts = int(scenario.duration_s // MIX_BURST_EVERY_S) + 1 if burst else 0
        for b in range(bursts):
            at = now + timedelta(seconds=b * MIX_BURST_EVERY_S)
            docs += [task(f"mix-{short}-b{b}-{i:04d}", name, now, run_at=at, priority=priority) for i in range(burst)]
    return docs


def documents(scenario: Scenario, now: datetime) -> list[TaskDocument]:
    """The task documents of a scenario: due one-shot and recurring tasks, plus far-future idle ones."""
    if scenario.mix:
        return mix_documents(scenario, now)
    docs = [task(f"bench-once-{i:06d}", "bench:one-shot", now) for i in range(scenario.one_shot_tasks)]
    # Recurring tasks start spread over one interval, as a steady state would have them.
    interval_ms = parse_interval_ms(scenario.interval)
    for i in range(scenario.recurring_tasks):
        offset = timedelta(milliseconds=interval_ms * i / max(1, scenario.recurring_tasks))
        docs.append(task(f"bench-rec-{i:06d}", "bench:recurring", now, run_at=now + offset, interval=scenario.interval))
    later = now + timedelta(days=30)
    docs += [task(f"bench-later-{i:06d}", "bench:later", now, run_at=later) for i in range(scenario.idle_docs)]
    return docs

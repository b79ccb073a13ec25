"""The shipped defaults on real processes: no interval configured, a plain worker and beat.

Given/When/Then in each name. No wall-clock speed is asserted (the machine is shared): the
tests check that every due run happens, the invariants hold and the loop rests when nothing is due.
The figures at full size are in BENCHMARKS.md (``elastask bench steady``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.fleet import CeleryFleet
from tests.integration.harness import assert_no_violations, drifts_ms, now, seed, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240), pytest.mark.slow]

SimulatorFactory = Callable[..., SimulatorProcess]
CYCLE = re.compile(r"claim cycle: found=(\d+)")


@pytest.fixture
def plain_fleet(testbed: Testbed, tmp_path: Path) -> Iterator[Callable[[SimulatorProcess], CeleryFleet]]:
    """A fleet with nothing but the addresses of the parts: every interval at its shipped default."""
    made: list[CeleryFleet] = []

    def make(sim: SimulatorProcess) -> CeleryFleet:
        fleet = CeleryFleet(tmp_path / f"fleet{len(made)}", testbed, sim)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.stop()


def test_given_no_interval_configured_when_recurring_tasks_fall_due_then_every_due_run_happens_under_the_cap(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, plain_fleet: Callable[..., CeleryFleet]
) -> None:
    sim = simulator(nodes=3, run_ms="200")
    fleet = plain_fleet(sim)
    fleet.worker(concurrency=2)  # a plain worker on this 2-core machine
    fleet.beat()
    time.sleep(4)  # the loop finds an empty index and rests
    first_due = now() + timedelta(seconds=3)
    at = now()
    # 60 tasks every 2 s, 200 ms each: 30 runs/s on a 150 runs/s ceiling (20 %), as in the issue.
    es = store.client
    seed(es, [new_task(f"rec-{i}", "sample", now=at, run_at=first_due, interval="2s") for i in range(60)])
    wait_for(lambda: now() > first_due + timedelta(seconds=12), 30, "12 s of recurring runs")
    stats = sim.stats(drifts=True)
    end = now()
    assert_no_violations(stats)
    # Kibana reschedules a run at its start + 2 s, so a run that waited for a slot (half of them:
    # 60 due at once on 30 slots, 200 ms each) moves that task's later runs: "every due run happens"
    # is that no task is left waiting past its runAt, and that each ran about every 2 s.
    overdue = [
        doc.id
        for doc in (store.get(f"task:rec-{i}") for i in range(60))
        if doc.status == "idle" and doc.run_at < end - timedelta(seconds=1.5)
    ]
    assert overdue == [], _why_overdue(overdue, store, stats, fleet)
    # At least a run every 3 s each (12 s / (2 s + a wait for a slot and a refill), plus the first).
    # Measured in 11 runs: 270-360 runs; drift p50 37-450 ms, max 0.5-1.1 s (runs that waited for a
    # slot). 300 (5 each) failed 3 times in 11, with the code of 0.7.1 too, so it was the threshold.
    assert stats["totals"]["runs_started"] >= 60 * 4, stats["totals"]
    assert min(drifts_ms(stats)) >= 0  # never pushed before its runAt
    assert es.count(index=store.index)["count"] == 60


def _why_overdue(overdue: list[str], store: TaskStore, stats: dict[str, Any], fleet: CeleryFleet) -> str:
    """What a person needs to find out why tasks waited: their runAt, the runs and drifts, the last claim cycles."""
    run_ats = {task_id: store.get(task_id).run_at.isoformat() for task_id in overdue}
    drifts = sorted(drifts_ms(stats))
    quantiles = {q: round(drifts[int(q * (len(drifts) - 1))]) for q in (0.5, 0.9, 1.0)} if drifts else {}
    cycles = [line for line in fleet.logs().splitlines() if "claim cycle:" in line][-15:]
    return (
        f"left waiting past their runAt: {run_ats}; runs started {stats['totals']['runs_started']}, "
        f"drift ms by quantile {quantiles}; the last claim cycles:\n" + "\n".join(cycles)
    )


def test_given_an_empty_index_when_beat_fires_every_polling_interval_then_the_claim_loop_rests(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, plain_fleet: Callable[..., CeleryFleet]
) -> None:
    sim = simulator(nodes=2)
    fleet = plain_fleet(sim)
    fleet.worker(concurrency=2)
    fleet.beat()
    time.sleep(3)  # start-up: nodes resolved, the first cycles ran
    before = len(CYCLE.findall(fleet.logs()))
    time.sleep(9)  # beat fires 18 claim jobs at 500 ms
    cycles = len(CYCLE.findall(fleet.logs())) - before
    # Resting for the idle interval (3 s): about 3 full cycles, never one per beat tick.
    assert 1 <= cycles <= 6, f"{cycles} claim cycles in 9 s on an empty index"

    # When a task is created for a moment inside the rest, it is still pushed at its runAt.
    due = now() + timedelta(milliseconds=1800)
    seed(store.client, [new_task("soon", "sample", now=now(), run_at=due)])
    wait_for(lambda: sim.stats()["totals"]["runs_finished"] == 1, 20, "the task to run")
    assert min(drifts_ms(sim.stats(drifts=True))) >= 0

"""Claim lanes (``claim_lanes``, core/lanes.py) on real processes: two workers claiming in parallel over
disjoint shares of the due tasks, one ledger; a lane's holder killed, and one frozen past its lock.

Checked with the simulator's own counts: every task run once, no overlap, the cap held. Reported, not
asserted as a timing: how long the work took after the fault.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime

import pytest
import redis

from elastask.parts.store import TaskStore
from elastask_bed.bench.scenarios import task as partitioned_task
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.process import ManagedProcess
from tests.integration.harness import Dispatcher, assert_no_violations, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]
LANES = {"claim_lanes": 2}


def backlog(count: int, prefix: str, at: datetime) -> list:
    """One-shot tasks with Kibana's partitions (as 8.16+ writes them), due now."""
    return [partitioned_task(f"{prefix}-{i:04d}", "lanes", at) for i in range(count)]


def lanes_seen(logs: str) -> set[str]:
    return set(re.findall(r"claim cycle \((lane \d+ of \d+)\)", logs))


def test_two_workers_claim_in_two_lanes_and_every_task_runs_once_within_the_cap(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=4, run_ms="100")
    es = store.client
    dispatcher = dispatcher_factory(sim, config=LANES)
    dispatcher.worker("first")
    dispatcher.worker("second")
    time.sleep(2)  # both workers beat: two lanes
    seed(es, backlog(800, "l", now()))
    dispatcher.beat()
    wait_for(lambda: task_count(es) == 0, 120, "every task run")
    stats = sim.stats()
    assert_no_violations(stats)
    assert stats["totals"]["runs_started"] == 800  # once each: the lanes' shares are disjoint
    assert lanes_seen(dispatcher.logs()) == {"lane 1 of 2", "lane 2 of 2"}


def test_with_no_backlog_every_lane_is_served_and_every_recurring_task_keeps_running(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    # A steady load, no backlog: no lane holds a refill session, so each claim job must serve every lane
    # (the chaos run found lane 2 starved when a job took only the first free lane).
    sim = simulator(nodes=2, run_ms="50")
    es = store.client
    dispatcher = dispatcher_factory(sim, config=LANES)
    dispatcher.worker("first")
    dispatcher.worker("second")
    time.sleep(2)
    at = now()
    seed(es, [partitioned_task(f"r-{i:02d}", "lanes", at, interval="1s", state={"runs": 0}) for i in range(40)])
    dispatcher.beat()

    def runs_each() -> list[int]:
        store.refresh()
        hits = store.search_hits({"query": {"term": {"task.taskType": "lanes"}}, "size": 100}, "runs")
        return [int(json.loads(h["_source"]["task"].get("state") or "{}").get("runs", 0)) for h in hits]

    wait_for(lambda: min(runs_each()) >= 5, 60, "every recurring task run 5 times")
    assert lanes_seen(dispatcher.logs()) == {"lane 1 of 2", "lane 2 of 2"}
    assert_no_violations(sim.stats())


@pytest.mark.parametrize("fault", ["killed", "frozen past its lock"])
def test_a_lane_holder_killed_or_frozen_costs_no_task_and_no_overlap(
    fault: str,
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
) -> None:
    sim = simulator(nodes=3, run_ms="200")
    es = store.client
    dispatcher = dispatcher_factory(sim, config=LANES)
    survivor = dispatcher.worker("survivor")
    doomed: ManagedProcess = dispatcher.worker("doomed")
    time.sleep(2)
    seed(es, backlog(600, "f", now()))
    dispatcher.beat()
    wait_for(lambda: len(lanes_seen(dispatcher.logs())) == 2, 60, "both lanes claiming")
    assert doomed.pid is not None and survivor.pid is not None
    group = os.getpgid(doomed.pid)
    faulted = time.monotonic()
    if fault == "killed":
        doomed.kill()
    else:
        os.killpg(group, signal.SIGSTOP)  # past its claim lock's TTL: another lane holder takes over
        time.sleep(12)
        os.killpg(group, signal.SIGCONT)
    wait_for(lambda: task_count(es) == 0, 150, f"every task run after a lane holder was {fault}")
    print(f"lane holder {fault}: the backlog was done {time.monotonic() - faulted:.1f} s after the fault")
    stats = sim.stats()
    assert_no_violations(stats)
    assert task_count(es, status="failed") == 0
    assert stats["totals"]["runs_started"] >= 600

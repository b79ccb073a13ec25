"""Kibana nodes not set up for push, on real processes: elastask check names them, and the dispatcher survives them.

Given/When/Then in each name. The simulator can leave task claiming on for a node (it then also pulls
with Kibana's mget model) and give a node a smaller ephemeral queue (pushes over it: 204, dropped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import SimulatorProcess
from tests.integration.harness import Dispatcher, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]


def check(testbed: Testbed, urls: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **testbed.env(), "ELASTASK_KIBANA_HOSTS": ",".join(urls), "ELASTASK_CONFIG": ""}
    return subprocess.run(
        [sys.executable, "-m", "elastask", "check"], capture_output=True, text=True, timeout=120, env=env
    )


def test_check_flags_a_node_still_claiming_and_one_with_a_small_ephemeral_queue_and_passes_a_correct_one(
    testbed: Testbed, store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory
) -> None:
    claiming = simulator(nodes=1, extra_args=["--claiming-nodes", "1"])
    small = simulator(nodes=1, extra_args=["--ephemeral-capacity", "4"])
    correct = simulator(nodes=1)
    result = check(testbed, [*claiming.urls, *small.urls, *correct.urls])
    assert result.returncode == 1, result.stdout
    rows = result.stdout.splitlines()

    def row(url: str) -> str:
        lines = [i for i, line in enumerate(rows) if f"kibana {url} setup" in line]
        assert lines, result.stdout
        return "\n".join(rows[lines[0] : lines[0] + 2])

    assert "PROBLEM" in row(claiming.urls[0]) and "xpack.task_manager.unsafe.disable_task_claiming: true" in row(
        claiming.urls[0]
    )
    assert "PROBLEM" in row(small.urls[0])
    assert "xpack.task_manager.ephemeral_tasks.request_capacity: 10" in row(small.urls[0])
    assert row(correct.urls[0]).startswith("ok")


def test_given_a_node_still_claiming_on_its_own_then_no_task_runs_twice_and_its_extra_load_is_reported(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=3, run_ms="100", extra_args=["--claiming-nodes", "1"])
    at = now()
    seed(store.client, [new_task(f"race-{i:03d}", "sample", now=at) for i in range(200)])
    # Pushes that find the racing node's queue full are dropped: short leases bring them back.
    dispatcher = dispatcher_factory(sim, env={"ELASTASK_TASK_TIMEOUT": "5s", "ELASTASK_RETRY_DELAY": "1s"})
    dispatcher.worker(concurrency=4)
    dispatcher.beat()
    wait_for(lambda: task_count(store.client) == 0, 180, "all 200 one-shot tasks done")
    stats = sim.stats()
    totals = stats["totals"]
    assert totals["overlapping_runs"] == 0  # conditional writes: never two runs of one task at once
    assert totals["runs_finished"] == 200  # each task finished once
    racing = stats["nodes"][sim.nodes[0]["owner_id"]]
    print(
        f"\nnode left claiming: claimed {racing['self_claimed']} task(s) itself in "
        f"{racing['claim_cycle_ms']['count']} poll(s), {racing['claim_conflicts']} claim conflict(s); "
        f"pushes dropped on a full queue: {totals['rejected_over_capacity']}"
    )
    assert racing["claim_cycle_ms"]["count"] > 0  # it did poll the engine: load elastask would have spared
    assert "still claims tasks on its own" in dispatcher.logs()  # the worker warned at start


@pytest.mark.slow
def test_given_a_node_queue_smaller_than_elastasks_capacity_then_dropped_runs_come_back_after_their_lease(
    testbed: Testbed,
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
) -> None:
    sim = simulator(nodes=1, run_ms="1000", extra_args=["--ephemeral-capacity", "3"])
    assert "request_capacity: 10" in check(testbed, sim.urls).stdout  # check warned before the run
    at = now()
    seed(store.client, [new_task(f"small-{i:02d}", "sample", now=at) for i in range(8)])
    # Each dropped push costs its task an attempt (the run never happened, but nobody can know):
    # enough attempts for the rounds a queue of 3 needs.
    env = {"ELASTASK_TASK_TIMEOUT": "3s", "ELASTASK_RETRY_DELAY": "1s", "ELASTASK_MAX_ATTEMPTS": "10"}
    dispatcher = dispatcher_factory(sim, env=env)
    dispatcher.worker(concurrency=2)
    dispatcher.beat()
    wait_for(lambda: task_count(store.client) == 0, 200, "all 8 tasks done despite the dropped pushes")
    totals = sim.stats()["totals"]
    assert totals["rejected_over_capacity"] > 0  # pushes were dropped by the small queue...
    assert totals["runs_finished"] == 8 and totals["overlapping_runs"] == 0  # ...and ran later, once each
    assert "xpack.task_manager.ephemeral_tasks.request_capacity: 10" in dispatcher.logs()

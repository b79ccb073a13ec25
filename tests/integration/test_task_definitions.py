"""Kibana's task definitions on real processes: concurrency limits per node, cost units, priority,
rrule tasks and removed statuses (worker, beat, engine, Redis, simulated Kibana counting runs per type
and units per node)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import SimulatorProcess
from tests.integration.harness import Dispatcher, assert_no_violations, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]
REPORTING = {
    "report:execute": {"max_concurrency": 1, "concurrency_group": "reporting", "timeout": "30s"},
    "report:execute-scheduled": {"max_concurrency": 1, "concurrency_group": "reporting", "timeout": "30s"},
}


@pytest.mark.slow
def test_given_30_reports_limited_to_one_per_node_and_300_normal_tasks_then_the_limit_holds_and_nothing_starves(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(
        nodes=3,
        run_ms="100",
        extra_args=[
            "--run-ms-by-type", "report:execute=1000",
            "--run-ms-by-type", "report:execute-scheduled=1000",
            "--type-concurrency", "report:execute=1:reporting",
            "--type-concurrency", "report:execute-scheduled=1:reporting",
        ],
    )  # fmt: skip
    es = store.client
    at = now() - timedelta(seconds=30)
    reports = [new_task(f"report-{i:02d}", "report:execute", now=at) for i in range(20)]
    reports += [new_task(f"sched-{i:02d}", "report:execute-scheduled", now=at) for i in range(10)]
    normal = [new_task(f"n-{i:03d}", "sample", now=now()) for i in range(300)]
    seed(es, [*reports, *normal])  # the reports are older: first in the claim order
    dispatcher = dispatcher_factory(sim, config={"task_types": REPORTING})
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: task_count(es, taskType="sample") == 0, 120, "every normal task done while reports wait")
    assert task_count(es, taskType="report:execute") + task_count(es, taskType="report:execute-scheduled") > 0
    wait_for(lambda: task_count(es) == 0, 180, "every report done too")
    stats = sim.stats()
    assert_no_violations(stats)
    for owner, node in stats["nodes"].items():
        assert node["max_by_type"].get("reporting", 0) <= 1, f"{owner} ran {node['max_by_type']} reports at once"
    assert stats["totals"]["runs_started"] == 330


def test_given_large_and_tiny_tasks_then_the_cap_holds_in_cost_units(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(
        nodes=2,
        run_ms="300",
        capacity=20,  # Kibana's ephemeral queue: room for every tiny run elastask may push
        extra_args=["--type-cost", "big=4", "--type-cost", "small=1"],
    )
    es = store.client
    at = now()
    seed(
        es,
        [new_task(f"big-{i:03d}", "big", now=at) for i in range(40)]
        + [new_task(f"small-{i:03d}", "small", now=at) for i in range(80)],
    )
    config = {"task_types": {"big": {"cost": "large"}, "small": {"cost": "tiny"}}}
    dispatcher = dispatcher_factory(sim, config=config)
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: task_count(es) == 0, 120, "every task done")
    stats = sim.stats()
    assert_no_violations(stats, capacity=20)
    for owner, node in stats["nodes"].items():
        assert node["max_units"] <= 20, f"{owner} had {node['max_units']} units at once (capacity 20)"
    assert any(node["max_units"] > 10 for node in stats["nodes"].values())  # the cap was reached, not avoided


def test_an_rrule_task_at_its_maximum_attempts_keeps_running_and_an_unrecognized_task_is_never_pushed(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=1, run_ms="50")
    es = store.client
    at = now()
    rrule = new_task("daily", "sample", now=at).to_source()
    rrule["task"].update({"schedule": {"rrule": {"freq": 3, "interval": 1, "tzid": "UTC"}}, "attempts": 3})
    gone = new_task("gone", "removed-type", now=at).to_source()
    gone["task"]["status"] = "unrecognized"
    es.index(index=".kibana_task_manager", id="task:daily", document=rrule, refresh=True)
    es.index(index=".kibana_task_manager", id="task:gone", document=gone, refresh=True)
    dispatcher = dispatcher_factory(sim, env={"ELASTASK_RETRY_INTERVAL": "500"})
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["runs_started"] >= 1, 120, "the rrule task ran (its attempts reset)")
    assert es.get(index=".kibana_task_manager", id="task:daily")["_source"]["task"]["status"] != "failed"
    assert es.get(index=".kibana_task_manager", id="task:gone")["_source"]["task"]["status"] == "unrecognized"
    assert sim.stats()["totals"]["runs_started"] >= 1 and "task:gone" not in dispatcher.logs()


def test_on_the_real_engine_the_claim_order_is_the_documents_priority_else_its_types_else_runat(
    store: TaskStore,
) -> None:
    from elastask.core import queries

    es = store.client
    at = now() - timedelta(seconds=30)
    urgent = new_task("urgent", "cleanup", now=at + timedelta(seconds=5), priority=90)
    seed(es, [
        new_task("low-old", "cleanup", now=at),
        new_task("normal-new", "sample", now=at + timedelta(seconds=10)),
        new_task("by-prefix", "alerting:.es-query", now=at + timedelta(seconds=1)),
        urgent,
    ])  # fmt: skip
    body = queries.due_tasks(
        now(),
        size=10,
        default_max_attempts=3,
        max_attempts_by_type={},
        priority_by_type={"cleanup": 1, "alerting:*": 60},
    )
    order = [hit["_id"] for hit in store.search_hits(body, "the claim order")]
    assert order == ["task:urgent", "task:by-prefix", "task:normal-new", "task:low-old"]

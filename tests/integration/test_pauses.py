"""elastask pause / resume on real processes: a worker, a beat, the engine, Redis and simulated Kibana.

Only the documented interface: the ``elastask`` command with the ``ELASTASK_*`` variables, and what the
simulated nodes and the engine record. Reported, not asserted as a timing: how long after the pause
the last run of the paused type started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import SimulatorProcess
from tests.integration.harness import Dispatcher, assert_no_violations, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]


def elastask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "elastask", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result


def runs_of(store: TaskStore, task_type: str) -> int:
    """Runs the recurring tasks of a type have had: each run Kibana finished moved runAt on (state.runs)."""
    hits = store.search_hits(
        {"query": {"term": {"task.taskType": task_type}}, "size": 100, "_source": ["task.state"]}, "runs"
    )
    return sum(int(json.loads(hit["_source"]["task"].get("state") or "{}").get("runs", 0)) for hit in hits)


def test_a_paused_type_stops_being_pushed_the_others_go_on_and_resume_runs_its_due_tasks_with_their_attempts(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    es = store.client
    seed(es, [new_task(f"alpha-{i}", "alpha", now=now(), interval="1s", state={"runs": 0}) for i in range(10)])
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: runs_of(store, "alpha") >= 10, 60, "the alpha tasks running")

    paused = elastask(dispatcher.env, "pause", "--type", "beta")
    assert "paused: type:beta" in paused.stdout
    store.refresh()
    seed(es, [new_task(f"beta-{i:02d}", "beta", now=now()) for i in range(20)])
    alpha_before = runs_of(store, "alpha")
    time.sleep(4)  # several claim cycles on every worker process
    store.refresh()
    assert task_count(es, taskType="beta") == 20  # none ran
    assert task_count(es, taskType="beta", status="idle") == 20 and task_count(es, taskType="beta", attempts=0) == 20
    assert runs_of(store, "alpha") > alpha_before  # the other type went on
    status = json.loads(elastask(dispatcher.env, "status", "--json").stdout)
    assert [p["pause"] for p in status["paused"]] == ["type:beta"]

    resumed = elastask(dispatcher.env, "resume", "--type", "beta")
    assert "resumed: type:beta" in resumed.stdout and "nothing is paused" in resumed.stdout
    wait_for(lambda: task_count(es, taskType="beta") == 0, 60, "every beta task run after the resume")
    assert task_count(es, status="failed") == 0
    stats: dict[str, Any] = sim.stats()
    assert_no_violations(stats)


def test_everything_paused_pushes_nothing_until_resumed_and_the_pause_survives_a_worker_restart(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=1, run_ms="50")
    dispatcher = dispatcher_factory(sim)
    worker = dispatcher.worker()
    dispatcher.beat()
    elastask(dispatcher.env, "pause")
    seed(store.client, [new_task(f"held-{i}", "sample", now=now()) for i in range(10)])
    time.sleep(3)
    worker.stop()  # a restart: the pause is in Redis, not in the worker
    dispatcher.worker("worker2")
    time.sleep(3)
    assert sim.stats()["totals"]["pushes"] == 0
    elastask(dispatcher.env, "resume")
    wait_for(lambda: task_count(store.client, taskType="sample") == 0, 60, "every task run after the resume")
    assert_no_violations(sim.stats())


def kibana_execution(sim: SimulatorProcess, action: str, task_types: list[str] | None = None) -> dict[str, Any]:
    """Kibana's own execution pause, as an operator sets it on one node (the state is Kibana-wide)."""
    body = json.dumps({"task_types": task_types} if task_types else {}).encode()
    request = urllib.request.Request(
        f"{sim.urls[0]}/internal/task_manager/execution/_{action}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "kbn-xsrf": "t", "x-elastic-internal-origin": "kibana"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.load(answer))


def test_kibanas_own_execution_pause_of_a_type_stops_its_pushes_and_lifting_it_in_kibana_runs_them(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    es = store.client
    seed(es, [new_task(f"alpha-{i}", "alpha", now=now(), interval="1s", state={"runs": 0}) for i in range(10)])
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: runs_of(store, "alpha") >= 10, 60, "the alpha tasks running")

    assert kibana_execution(sim, "pause", ["beta"])["paused_task_types"] == ["beta"]
    paused_at = time.monotonic()

    def kibana_pause_seen() -> bool:
        status = json.loads(elastask(dispatcher.env, "status", "--json").stdout)
        return [(p["pause"], p["source"]) for p in status["paused"]] == [("type:beta", "kibana")]

    wait_for(kibana_pause_seen, 30, "elastask seeing Kibana's pause of beta")
    print(f"Kibana's pause seen by elastask after {time.monotonic() - paused_at:.1f} s (asked every 5 s)")
    seed(es, [new_task(f"beta-{i:02d}", "beta", now=now()) for i in range(20)])
    alpha_before = runs_of(store, "alpha")
    time.sleep(4)  # several claim cycles on every worker process
    assert task_count(es, taskType="beta", status="idle") == 20 and task_count(es, taskType="beta", attempts=0) == 20
    assert runs_of(store, "alpha") > alpha_before  # the other type went on
    checked = subprocess.run(
        [sys.executable, "-m", "elastask", "check"], env=dispatcher.env, capture_output=True, text=True, timeout=60
    )
    assert "kibana execution pause" in checked.stdout and "paused: type beta" in checked.stdout, checked.stdout
    resumed = elastask(dispatcher.env, "resume")  # elastask's own resume does not lift Kibana's
    assert "type:beta (Kibana's execution pause" in resumed.stdout

    kibana_execution(sim, "resume", ["beta"])
    wait_for(lambda: task_count(es, taskType="beta") == 0, 60, "every beta task run after Kibana's resume")
    assert task_count(es, status="failed") == 0
    assert_no_violations(sim.stats())

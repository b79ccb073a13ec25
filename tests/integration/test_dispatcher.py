"""The dispatcher on real processes: celery worker and beat subprocesses, OpenSearch, Redis, simulated Kibana.

Every test checks the invariants the simulator measures (cap, no overlapping run) besides its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis
from elasticsearch import Elasticsearch

from elastask import keys
from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import INDEX, SimulatorProcess
from tests.integration.harness import (
    Dispatcher,
    assert_no_violations,
    drifts_ms,
    now,
    seed,
    seed_due_later,
    task_count,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]


def one_shots(count: int, task_type: str = "sample", prefix: str = "t") -> list:
    at = now()
    return [new_task(f"{prefix}-{i:05d}", task_type, now=at) for i in range(count)]


def test_given_500_one_shot_tasks_on_3_nodes_then_each_runs_once_under_the_cap(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=3, run_ms="200")
    es = store.client
    seed(es, one_shots(500))
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker(concurrency=4)
    dispatcher.beat()
    wait_for(lambda: task_count(es) == 0, 150, "all 500 one-shot documents deleted by Kibana")
    stats = sim.stats()
    assert stats["totals"]["runs_started"] == 500, stats["totals"]  # each exactly once
    assert stats["totals"]["runs_finished"] == 500
    assert_no_violations(stats)
    assert all(node["runs_started"] > 0 for node in stats["nodes"].values())
    assert "claim cycle: found=" in dispatcher.logs()


@pytest.mark.slow
def test_recurring_tasks_keep_running_with_their_state_carried(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="100")
    es = store.client
    at = now()
    seed(es, [new_task(f"rec-{i}", "recurring", now=at, interval="1s", state={"runs": 0}) for i in range(5)])
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker()
    dispatcher.beat()
    time.sleep(20)
    runs = [store.get(f"task:rec-{i}").state.get("runs", 0) for i in range(5)]
    # One run per ~1.1-1.5 s (interval + run time + claim interval) over 20 s.
    assert all(r >= 8 for r in runs), runs
    assert sum(runs) <= sim.stats()["totals"]["runs_finished"]
    assert_no_violations(sim.stats())
    assert task_count(es, status="failed") == 0


@pytest.mark.slow
def test_a_hung_node_makes_leases_expire_one_shot_fails_after_max_recurring_does_not(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    sim.set_mode(0, "hang")
    sim.set_mode(1, "hang")
    es = store.client
    at = now()
    seed(
        es,
        [
            new_task("hung-once", "hangs", now=at),
            new_task("hung-rec", "hangs", now=at, interval="2s"),
        ],
    )
    config = {"task_types": {"hangs": {"timeout": "2s", "max_attempts": 2}}}
    dispatcher = dispatcher_factory(sim, config=config)
    dispatcher.worker()
    dispatcher.beat()
    seen_attempts: set[int] = set()

    def one_shot_failed() -> bool:
        doc = store.get("task:hung-once")
        if doc.status == "idle":
            seen_attempts.add(doc.attempts)
        return doc.status == "failed"

    wait_for(one_shot_failed, 60, "the one-shot task to fail after 2 expired runs", interval_s=0.1)
    failed = store.get("task:hung-once")
    assert failed.attempts == 2
    assert 1 in seen_attempts  # after its first expired run, attempts was 1
    # The retry loop records the reason right after its write: it may land a moment after the status.
    wait_for(lambda: redis_client.hget(keys.FAILED_REASONS, "task:hung-once") is not None, 10, "the failure reason")
    reason = json.loads(redis_client.hget(keys.FAILED_REASONS, "task:hung-once") or b"{}")
    assert "without an outcome" in reason["reason"]
    # The recurring task is pushed a 3rd time instead of failing: moved to its next interval.
    wait_for(lambda: sim.stats()["totals"]["pushes"] >= 5, 60, "the recurring task pushed again after the maximum")
    assert store.get("task:hung-rec").status != "failed"
    assert "failed for good" in dispatcher.logs()


def test_idle_tasks_at_their_maximum_attempts_recurring_ones_still_run_one_shot_ones_fail_with_a_reason(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    # Given: max_attempts lowered to 2 while tasks sat idle with 3 attempts (as Kibana's claimer ignores
    # attempts for recurring tasks, so must elastask); when the dispatcher runs; then the recurring task
    # runs and the one-shot one ends failed, its reason kept, instead of sitting idle for ever.
    sim = simulator(nodes=1, run_ms="50")
    at = now()
    seed(
        store.client,
        [
            new_task("worn-rec", "sample", now=at, interval="1h").with_changes(attempts=3),
            new_task("worn-once", "sample", now=at).with_changes(attempts=3),
        ],
    )
    dispatcher = dispatcher_factory(sim, env={"ELASTASK_MAX_ATTEMPTS": "2"})
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["runs_finished"] >= 1, 30, "the recurring task to run")
    wait_for(lambda: store.get("task:worn-once").status == "failed", 30, "the one-shot task to be failed")
    wait_for(lambda: redis_client.hget(keys.FAILED_REASONS, "task:worn-once") is not None, 10, "the failure reason")
    reason = json.loads(redis_client.hget(keys.FAILED_REASONS, "task:worn-once") or b"{}")
    assert "at or over the maximum of 2" in reason["reason"]
    assert sim.stats()["totals"]["runs_started"] == 1  # the recurring one ran, the one-shot one never did
    # Kibana's outcome: rescheduled an hour on (written through its buffered store, up to 50 ms after the run)
    wait_for(lambda: store.get("task:worn-rec").status == "idle", 10, "the recurring task's outcome")


def test_an_expired_task_is_retried_on_another_node(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    sim.set_mode(0, "hang")
    es = store.client
    seed(es, [new_task("moves", "hangs", now=now())])
    dispatcher = dispatcher_factory(sim, config={"task_types": {"hangs": {"timeout": "2s"}}})
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: task_count(es) == 0, 60, "the task to finish on the healthy node")
    nodes = sim.stats()["nodes"]
    hung, healthy = (nodes[n["owner_id"]] for n in sim.nodes)
    assert hung["pushes"] == 1 and healthy["pushes"] == 1 and healthy["runs_finished"] == 1


def test_two_beats_and_three_workers_race_without_violations(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=3, run_ms="100-300")
    es = store.client
    seed(es, one_shots(300))
    dispatcher = dispatcher_factory(sim)
    for name in ("w1", "w2", "w3"):
        dispatcher.worker(name, concurrency=2)
    dispatcher.beat("beat1")
    dispatcher.beat("beat2")
    wait_for(lambda: task_count(es) == 0, 150, "all 300 tasks done")
    stats = sim.stats()
    assert stats["totals"]["runs_started"] == 300, stats["totals"]
    assert_no_violations(stats)


def test_a_refusing_node_gets_no_work_loses_no_attempt_and_gets_work_when_back(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=3, run_ms="100")
    es = store.client
    # max_attempts 1: a refused push that burned an attempt would leave the task unclaimable forever.
    dispatcher = dispatcher_factory(sim, config={"task_types": {"once": {"max_attempts": 1}}})
    dispatcher.worker()  # learns every node's ownerId while all are up
    sim.set_mode(0, "refuse")
    seed(es, one_shots(90, "once", "a"))
    dispatcher.beat()
    wait_for(lambda: task_count(es) == 0, 90, "all tasks done on the two healthy nodes")
    down = sim.nodes[0]["owner_id"]
    stats = sim.stats()
    assert stats["nodes"][down]["pushes"] == 0
    assert stats["totals"]["runs_started"] == 90
    assert "taken out of rotation" in dispatcher.logs()
    sim.set_mode(0, "ok")
    wait_for(lambda: "back in rotation" in dispatcher.logs(), 70, "the breaker's probe to find the node back")
    seed(es, one_shots(90, "once", "b"))
    wait_for(lambda: task_count(es) == 0, 90, "the second batch done")
    assert sim.stats()["nodes"][down]["runs_finished"] > 0
    assert_no_violations(sim.stats())


def test_malformed_documents_are_skipped_and_reported_by_id(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    es = store.client
    seed(es, one_shots(20, prefix="good"))
    good = new_task("x", "sample", now=now()).to_source()

    def bad(doc_id: str, **task_changes: object) -> None:
        source = json.loads(json.dumps(good))
        for key, value in task_changes.items():
            if value is None:
                source["task"].pop(key, None)
            else:
                source["task"][key] = value
        es.index(index=INDEX, id=doc_id, document=source, refresh=True)

    # Values the engine stores (the index maps dynamic: false); the dates sort first in every search.
    year_one = "0001-01-01T00:00:00+01:00"
    reported = {
        "task:no-run-at": {"runAt": None},
        "task:bad-date": {"startedAt": "last tuesday"},
        "task:bad-params": {"params": "{oops"},
        "task:bad-status": {"status": "paused"},
        "task:year-one": {"runAt": year_one},
        "task:cost-list": {"cost": ["large"]},
        "task:cost-object": {"cost": {"units": 4}},
        "task:timeout-list": {"timeoutOverride": ["5m"]},
        "task:scope-number": {"scope": [1]},
        "task:lease-year-one": {"status": "running", "retryAt": year_one, "ownerId": "kibana:gone", "attempts": 1},
    }
    for doc_id, changes in reported.items():
        bad(doc_id, **changes)
    bad("task:far-future", runAt="9999-12-31T23:59:59-01:00")  # never due: neither claimed nor reported
    # A lease orphaned by a dispatcher that died: taken back and run, whatever sorts before it.
    bad("task:orphan", status="running", retryAt="2020-01-01T00:00:00.000Z", ownerId="kibana:gone", attempts=1)
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker()
    dispatcher.beat()
    left = len(reported) + 1
    wait_for(lambda: task_count(es) == left, 90, f"the 20 good tasks and the orphan done, the {left} bad ones left")
    wait_for(lambda: all(i in dispatcher.logs() for i in reported), 30, "each bad document reported")
    logs = dispatcher.logs()
    for field in ("params", "startedAt", "status", "runAt", "cost", "timeoutOverride", "scope", "retryAt"):
        assert f"'task.{field}'" in logs, field
    assert "OverflowError" not in logs and "TypeError" not in logs
    assert sim.stats()["totals"]["runs_started"] == 21


def test_redis_flushed_mid_run_keeps_the_cap_and_loses_nothing(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=3, run_ms="1000")
    es: Elasticsearch = store.client
    seed(es, one_shots(150, "flushed"))
    dispatcher = dispatcher_factory(sim, config={"task_types": {"flushed": {"timeout": "4s"}}})
    dispatcher.worker(concurrency=4)
    dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["runs_finished"] >= 30, 60, "the run under way")
    redis_client.flushall()
    wait_for(lambda: task_count(es) == 0, 150, "every task done after the flush")
    stats = sim.stats()
    assert_no_violations(stats)
    assert stats["totals"]["runs_finished"] >= 150
    assert "rebuilt" in dispatcher.logs()


def test_a_worker_started_with_q_consumes_only_the_queues_given(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    sim = simulator(nodes=2, run_ms="50")
    pinned_to, other = (f"elastask.dispatch.{node['owner_id']}" for node in sim.nodes)
    dispatcher = dispatcher_factory(sim)
    worker = dispatcher.worker("pinned", queues=f"elastask.claim,elastask.retry,{pinned_to}")
    dispatcher.beat()
    seed(store.client, one_shots(40))
    wait_for(
        lambda: sim.stats()["nodes"][sim.nodes[0]["owner_id"]]["runs_finished"] >= 10, 60, "the pinned node's tasks run"
    )
    time.sleep(3)
    assert sim.stats()["nodes"][sim.nodes[1]["owner_id"]]["pushes"] == 0  # nobody consumes its queue
    log = worker.log_path.read_text()
    assert pinned_to in log and other not in log


def test_tasks_claimed_ahead_of_their_run_at_are_never_pushed_before_it(
    store: TaskStore, redis_client: redis.Redis, simulator: SimulatorFactory, dispatcher_factory: DispatcherFactory
) -> None:
    # A 1 s polling interval: tasks due within the next second are claimed ahead, pushed at runAt.
    sim = simulator(nodes=2, run_ms="50")
    es = store.client
    dispatcher = dispatcher_factory(sim, env={"ELASTASK_POLLING_INTERVAL": "1000"})
    dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: "claim cycle" in dispatcher.logs(), 60, "the claim loop running")
    # About 10 tasks fall due per second (the nodes have room for 20): each cycle claims ahead.
    seed_due_later(es, "later", "sample", 40, step_ms=97)
    wait_for(lambda: task_count(es) == 0, 90, "all 40 tasks run")
    stats = sim.stats(drifts=True)
    drifts = drifts_ms(stats)
    assert len(drifts) == 40 == stats["totals"]["runs_finished"]
    assert min(drifts) >= 0, f"a task was pushed {-min(drifts):.0f} ms before its runAt"
    assert_no_violations(stats)

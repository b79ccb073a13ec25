"""The test bed's real parts: engine through the official client, conditional writes, Redis, Kibana."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests
from elasticsearch import Elasticsearch

from elastask.core.documents import new_task
from elastask.core.messages import run_now_body
from elastask.errors import ConflictError, DocumentMissingError
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import INDEX, SimulatorProcess

pytestmark = pytest.mark.integration

RUN_NOW = "/api/task_manager/_run_now"


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_engine_is_opensearch_behind_an_elasticsearch_compatible_proxy(es: Elasticsearch) -> None:
    info = es.info()
    assert info["version"]["distribution"] == "opensearch"
    assert es.indices.exists_alias(name=INDEX)


def test_a_kibana_shaped_task_is_indexed_and_read_back_with_its_version(store: TaskStore) -> None:
    now = datetime.now(UTC)
    created = store.create(
        new_task(
            "rt-1",
            "alerting:.index-threshold",
            now=now,
            params={"spaceId": "default"},
            interval="1m",
            scope=("alerting",),
        )
    )
    read = store.get("task:rt-1")
    assert read.seq_no == created.seq_no and read.primary_term == created.primary_term
    assert read.seq_no is not None and read.primary_term is not None
    assert read.params == {"spaceId": "default"} and read.schedule is not None
    assert read.to_source() == created.to_source()
    raw = store.client.get(index=INDEX, id="task:rt-1")["_source"]["task"]
    assert isinstance(raw["params"], str)  # stored as Kibana stores it


def test_a_conditional_update_with_a_stale_version_is_rejected_with_409(store: TaskStore) -> None:
    doc = store.create(new_task("occ-1", "sample", now=datetime.now(UTC)))
    updated = store.update_task(doc, {"status": "claiming", "ownerId": "kibana:a"})
    assert updated.seq_no is not None and doc.seq_no is not None and updated.seq_no > doc.seq_no
    with pytest.raises(ConflictError) as caught:
        store.update_task(doc, {"status": "claiming", "ownerId": "kibana:b"})  # doc is stale now
    assert caught.value.doc_id == "task:occ-1"
    assert store.get("task:occ-1").owner_id == "kibana:a"
    with pytest.raises(DocumentMissingError):
        store.get("task:nope")


def test_a_one_shot_task_pushed_to_a_simulated_node_is_deleted(
    store: TaskStore, simulator: Callable[..., SimulatorProcess]
) -> None:
    sim = simulator(nodes=1, run_ms="50")
    doc = store.create(new_task("one-shot-1", "actions:.server-log", now=datetime.now(UTC)), refresh=True)
    answer = requests.post(sim.urls[0] + RUN_NOW, json=run_now_body(doc), headers={"kbn-xsrf": "elastask"}, timeout=5)
    assert answer.status_code == 204
    wait_for(lambda: not store.client.exists(index=INDEX, id=doc.id))
    stats = sim.stats()["totals"]
    assert stats["runs_finished"] == 1 and stats["overlapping_runs"] == 0


def test_a_recurring_task_comes_back_idle_with_runat_advanced_and_new_state(
    store: TaskStore, simulator: Callable[..., SimulatorProcess]
) -> None:
    sim = simulator(nodes=1, run_ms="50")
    now = datetime.now(UTC)
    doc = store.create(new_task("recurring-1", "alerting:.index-threshold", now=now, interval="10s", state={"runs": 4}))
    claimed = store.update_task(
        doc,
        {
            "status": "running",
            "attempts": 1,
            "ownerId": sim.nodes[0]["owner_id"],
            "startedAt": now.isoformat(),
            "retryAt": (now + timedelta(minutes=5)).isoformat(),
        },
    )
    sent = datetime.now(UTC)
    requests.post(sim.urls[0] + RUN_NOW, json=run_now_body(claimed), headers={"kbn-xsrf": "x"}, timeout=5)
    wait_for(lambda: store.get(doc.id).status == "idle")
    after = store.get(doc.id)
    assert after.attempts == 0 and after.retry_at is None and after.started_at is None
    assert after.state == {"runs": 5}
    assert timedelta(seconds=9) < after.run_at - sent < timedelta(seconds=11)


def test_the_simulator_counts_a_deliberately_overlapping_run(
    store: TaskStore, simulator: Callable[..., SimulatorProcess]
) -> None:
    sim = simulator(nodes=2, run_ms="1000")
    doc = store.create(new_task("twice", "sample", now=datetime.now(UTC)))
    body = run_now_body(doc)
    for url in sim.urls:  # the same task on two nodes at once
        assert requests.post(url + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5).status_code == 204
    stats = sim.stats(drifts=True)
    assert stats["totals"]["overlapping_runs"] == 1
    assert stats["totals"]["runs_started"] == 2
    assert all(len(node["drifts"]) == 1 and node["drifts"][0] >= 0 for node in stats["nodes"].values())


def test_simulated_failure_modes(store: TaskStore, simulator: Callable[..., SimulatorProcess]) -> None:
    sim = simulator(nodes=2, run_ms="50")
    doc = store.create(new_task("modes", "sample", now=datetime.now(UTC)))
    body, url = run_now_body(doc), sim.urls[0]
    sim.set_mode(0, "5xx")
    assert requests.post(url + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5).status_code == 500
    sim.set_mode(0, "refuse")
    with pytest.raises(requests.ConnectionError):
        requests.post(url + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5)
    sim.set_mode(0, "error")
    assert requests.post(url + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5).status_code == 204
    wait_for(lambda: sim.stats()["totals"]["runs_failed"] == 1)
    assert store.get(doc.id).status == "idle"  # a failed run writes nothing
    sim.set_mode(0, "slow", delay_s=1.5)
    started = time.monotonic()
    requests.post(url + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5)
    assert time.monotonic() - started >= 1.4
    sim.set_mode(1, "hang")
    requests.post(sim.urls[1] + RUN_NOW, json=body, headers={"kbn-xsrf": "x"}, timeout=5)
    time.sleep(0.5)
    hung = sim.stats()["nodes"][sim.nodes[1]["owner_id"]]
    assert hung["current"] == 1 and hung["runs_finished"] == 0
    status = requests.get(sim.urls[1] + "/api/status", timeout=5).json()
    assert status["uuid"] == sim.nodes[1]["uuid"] and status["status"]["overall"]["level"] == "available"


def test_a_value_round_trips_through_the_real_redis(redis_client: redis.Redis) -> None:
    redis_client.set("elastask:test", "value")
    assert redis_client.get("elastask:test") == b"value"
    assert redis_client.info("server")["redis_version"]


@pytest.mark.slow
def test_testbed_run_exports_the_settings_and_returns_the_command_status() -> None:
    script = (
        "import os, sys, json, urllib.request;"
        "from elastask.config import load_settings;"
        "s = load_settings();"
        "info = json.load(urllib.request.urlopen(s.elasticsearch.host + '/'));"
        "print(json.dumps({'hosts': [n.url for n in s.kibana.hosts], 'redis': s.redis_url.reveal(),"
        " 'engine': info['version']['distribution']}));"
        "sys.exit(7)"
    )
    result = subprocess.run(
        [sys.executable, "-m", "elastask", "testbed", "run", "--kibana-nodes", "2", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ELASTASK_CONFIG": ""},
    )
    assert result.returncode == 7, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(seen["hosts"]) == 2 and seen["redis"].startswith("redis://127.0.0.1:")
    assert seen["engine"] == "opensearch"

"""/metrics and /health scraped while tasks run; their numbers agree with the simulator's and the engine's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
import redis

from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.process import free_port, port_open
from tests.integration.harness import Dispatcher, seed, task_count, wait_for
from tests.integration.test_dispatcher import one_shots

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        with e:  # closes the response's socket
            return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def test_metrics_and_health_agree_with_the_simulator_while_tasks_run(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: Callable[..., SimulatorProcess],
    dispatcher_factory: Callable[..., Dispatcher],
) -> None:
    sim = simulator(nodes=3, run_ms="300")
    es = store.client
    dispatcher = dispatcher_factory(sim)
    port = free_port()
    dispatcher.exporter(port)
    base = f"http://127.0.0.1:{port}"
    dispatcher.worker()
    dispatcher.beat()
    seed(es, one_shots(150, "observed"))
    # While the tasks run: in-flight gauges within capacity, health reports the load per node.
    wait_for(lambda: sim.stats()["totals"]["runs_started"] >= 30, 60, "runs under way")
    _, during = scrape(base + "/metrics")
    in_flight = metric(during, "elastask_node_in_flight_units")
    assert 0 < in_flight <= 3 * 20
    assert metric(during, "elastask_node_capacity_units") == 60
    status, body = scrape(base + "/health")
    report = json.loads(body)
    assert status == 200 and report["status"] in ("OK", "warn"), report
    assert set(report["load_percent"]) == {n["owner_id"] for n in sim.nodes}
    assert all(0 <= load <= 100 for load in report["load_percent"].values())
    wait_for(lambda: task_count(es) == 0, 120, "all tasks done")
    time.sleep(1)
    _, after = scrape(base + "/metrics")
    pushes = sim.stats()["totals"]["pushes"]
    assert metric(after, "elastask_dispatched_total", outcome="accepted") == pushes == 150
    assert metric(after, "elastask_claimed_total") == 150
    assert metric(after, "elastask_start_drift_seconds_count") == 150
    assert metric(after, "elastask_claim_duration_seconds_count") >= 1
    assert metric(after, "elastask_node_in_rotation") == 3
    report = json.loads(scrape(base + "/health")[1])
    assert report["claimed_total"] == 150 and report["drift_ms"]["p50"] is not None
    assert report["overdue"] == 0 and report["seconds_since_last_claim"] < 10
    # elastask status --health prints the same report.
    cli = subprocess.run(
        [sys.executable, "-m", "elastask", "status", "--health"],
        capture_output=True,
        text=True,
        env=dispatcher.env,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["claimed_total"] == 150
    # The capacity estimation read the window the loops recorded: every node ran, slots held for about
    # a run (300 ms) plus the time until the outcome is seen, one node of 20 units would have done.
    estimate = report["capacity_estimation"]
    assert estimate["estimate"] is True and estimate["window_seconds"] > 0, estimate
    assert all(row["throughput_per_minute"] > 0 for row in estimate["observed"]["by_node"].values()), estimate
    assert 0.25 < estimate["observed"]["mean_hold_seconds"] < 5, estimate
    runs_seen = estimate["observed"]["throughput_per_minute"] * estimate["window_seconds"] / 60
    assert 120 <= runs_seen <= 180, estimate  # the 150 runs (the window is rounded to the second)
    assert estimate["proposed"]["nodes_needed"] >= 1 and estimate["proposed"]["minutes_to_drain_overdue"] == 0
    text = subprocess.run(
        [sys.executable, "-m", "elastask", "status"], capture_output=True, text=True, env=dispatcher.env, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert "capacity estimation (last" in text.stdout and "nodes needed:" in text.stdout, text.stdout
    assert "None" not in text.stdout, text.stdout


def test_secrets_never_appear_in_logs_metrics_or_job_arguments(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: Callable[..., SimulatorProcess],
    dispatcher_factory: Callable[..., Dispatcher],
) -> None:
    es_secret, kibana_secret = "es-secret-5f2a9c", "kibana-secret-8d1e3b"
    sim = simulator(nodes=2, run_ms="100", extra_args=["--basic-auth", f"elastic:{kibana_secret}"])
    dispatcher = dispatcher_factory(
        sim,
        env={
            "ELASTASK_ELASTICSEARCH_USERNAME": "elastic",
            "ELASTASK_ELASTICSEARCH_PASSWORD": es_secret,  # the test engine ignores it; elastask still sends it
            "ELASTASK_KIBANA_USERNAME": "elastic",
            "ELASTASK_KIBANA_PASSWORD": kibana_secret,
        },
    )
    port = free_port()
    dispatcher.exporter(port)
    dispatcher.worker()
    dispatcher.beat()
    seed(store.client, one_shots(30, "secretive"))
    wait_for(lambda: task_count(store.client) == 0, 90, "all tasks done (so Kibana accepted the credentials)")
    assert sim.stats()["totals"]["runs_finished"] == 30
    _, metrics_text = scrape(f"http://127.0.0.1:{port}/metrics")
    _, health_text = scrape(f"http://127.0.0.1:{port}/health")
    shown = subprocess.run(
        [sys.executable, "-m", "elastask", "config", "show"],
        capture_output=True,
        text=True,
        env=dispatcher.env,
        timeout=60,
    ).stdout
    # Every message the broker carried (job arguments as Flower would show them) is gone by now, but
    # the events are not: the worker logs every received job with its argsrepr.
    everything = dispatcher.logs() + metrics_text + health_text + shown
    assert "elastask.dispatch[" in dispatcher.logs()
    for secret in (es_secret, kibana_secret):
        assert secret not in everything
    assert "********" in shown


def test_flower_lists_the_per_node_queues_and_shows_the_jobs_though_task_events_are_off_by_default(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: Callable[..., SimulatorProcess],
    dispatcher_factory: Callable[..., Dispatcher],
) -> None:
    import base64

    sim = simulator(nodes=2)
    dispatcher = dispatcher_factory(sim)
    dispatcher.worker()
    dispatcher.beat()
    port = free_port()
    flower = dispatcher._celery(
        "flower", "flower", f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:flower-test-password"
    )
    flower.wait_until(lambda: port_open(port), 60)
    auth = "Basic " + base64.b64encode(b"ops:flower-test-password").decode()

    def worker_queues() -> set[str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/workers?refresh=1", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(request, timeout=20) as answer:
            workers = json.load(answer)
        return {q["name"] for info in workers.values() for q in info.get("active_queues") or []}

    expected = {f"elastask.dispatch.{node['owner_id']}" for node in sim.nodes} | {"elastask.claim", "elastask.retry"}
    wait_for(lambda: expected <= worker_queues(), 60, "Flower to list the claim, retry and per-node queues")

    def dispatch_jobs_shown() -> set[str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/tasks?taskname=elastask.dispatch", headers={"Authorization": auth}
        )
        with urllib.request.urlopen(request, timeout=20) as answer:
            return {str(job.get("args")) for job in json.load(answer).values()}

    # The worker sends no task events of its own (celery_defaults.py): Flower turns them on, so the
    # jobs of tasks that fall due while it runs show in its task view, with their task ids.
    # Flower turns them on every few seconds: a round of tasks may come before its first time.
    for watched in range(8):
        seed(store.client, one_shots(2, prefix=f"watched{watched}"))
        wait_for(lambda: task_count(store.client) == 0, 60, "the watched tasks done")
        time.sleep(1)
        if any("watched" in args for args in dispatch_jobs_shown()):
            break
    else:
        pytest.fail("Flower showed no dispatch job in 8 rounds of tasks (are task events turned on?)")
    unauthorised = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unauthorised, timeout=20)
    assert refused.value.code == 401
    refused.value.close()

"""The elastask commands operators use, against the real test bed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml

from elastask.parts.store import TaskStore
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.process import free_port

pytestmark = pytest.mark.integration


def elastask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elastask", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_check_names_a_stopped_node_a_wrong_password_and_a_missing_index(
    testbed: Testbed, simulator: Callable[..., SimulatorProcess], tmp_path: Path
) -> None:
    sim = simulator(nodes=2, extra_args=["--basic-auth", "elastic:right-password"])
    stopped = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "elastask.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "index": "no-such-index",
                "kibana": {
                    "hosts": [
                        {"url": sim.urls[0], "username": "elastic", "password": "wrong-password"},
                        {"url": sim.urls[1], "username": "elastic", "password": "right-password"},
                        stopped,
                    ]
                },
            }
        )
    )
    env = {
        "ELASTASK_CONFIG": str(config),
        "ELASTASK_ELASTICSEARCH_HOST": testbed.es_url,
        "ELASTASK_REDIS_URL": testbed.redis.url,
    }
    result = elastask(env, "check")
    assert result.returncode == 1
    lines = result.stdout.splitlines()

    def row(name: str) -> str:
        return next(line for line in lines if name in line and not line.strip().startswith("fix:"))

    assert row("search engine").startswith("ok")
    assert row("redis").startswith("ok")
    assert row("index no-such-index").startswith("PROBLEM") and "does not exist" in row("index no-such-index")
    assert row(f"kibana {sim.urls[0]}").startswith("PROBLEM") and "authentication failed" in row(
        f"kibana {sim.urls[0]}"
    )
    assert row(f"kibana {sim.urls[1]}").startswith("ok")
    assert row(f"kibana {stopped}").startswith("PROBLEM") and "refused" in row(f"kibana {stopped}")
    assert "wrong-password" not in result.stdout + result.stderr and "right-password" not in result.stdout
    assert result.stdout.count("fix:") == 3


def test_schedule_status_failed_show_and_requeue(
    testbed: Testbed, store: TaskStore, redis_client: redis.Redis, simulator: Callable[..., SimulatorProcess]
) -> None:
    sim = simulator(nodes=2)
    env = {**testbed.env(), "ELASTASK_KIBANA_HOSTS": ",".join(sim.urls), "ELASTASK_CONFIG": ""}
    created = elastask(env, "schedule", "--type", "actions:.server-log", "--id", "cli-1", "--params", '{"a": 1}')
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "task:cli-1"
    doc = store.get("task:cli-1")
    assert doc.params == {"a": 1} and doc.status == "idle"
    status = elastask(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["tasks_by_status"] == {"idle": 1} and data["due_now"] == 1
    assert {n["owner_id"] for n in data["nodes"]} == {n["owner_id"] for n in sim.nodes}
    assert all(n["in_rotation"] and n["capacity_units"] == 20 for n in data["nodes"])
    lease = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    doc = store.update_task(doc, {"status": "running", "ownerId": "kibana:x", "retryAt": lease}, refresh=True)
    refused = elastask(env, "tasks", "requeue", "cli-1")  # Kibana may still run it: no second run
    assert refused.returncode != 0 and "--force" in refused.stderr and "kibana:x" in refused.stderr
    assert store.get("task:cli-1").status == "running"
    doc = store.get("task:cli-1")
    store.update_task(doc, {"status": "failed", "attempts": 3}, refresh=True)
    failed = elastask(env, "tasks", "failed", "--json")
    assert [row["id"] for row in json.loads(failed.stdout)] == ["task:cli-1"]
    shown = json.loads(elastask(env, "tasks", "show", "cli-1").stdout)
    assert shown["source"]["task"]["status"] == "failed" and shown["seq_no"] >= 1
    requeued = elastask(env, "tasks", "requeue", "cli-1")
    assert requeued.returncode == 0, requeued.stderr
    after = store.get("task:cli-1")
    assert after.status == "idle" and after.attempts == 0
    missing = elastask(env, "tasks", "show", "nope")
    assert missing.returncode != 0 and "'nope' not found" in missing.stderr

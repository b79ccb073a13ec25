"""What operators see never carries a task's credentials or data, and what Redis keeps is bounded."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import fakeredis
import pytest

from elastask import keys
from elastask.errors import DocumentError
from elastask.ops.admin import show
from elastask.parts.failures import record_failure
from elastask.parts.quarantine import report_malformed
from elastask.runtime import Runtime
from tests.unit.helpers import NOW
from tests.unit.stubs import StubEngine


def test_tasks_show_masks_the_api_key_kibana_runs_the_task_with(engine: StubEngine, rt: Runtime) -> None:
    engine.put("task:user", {"type": "task", "task": {"taskType": "x", "status": "idle", "apiKey": "c2VjcmV0"}})
    shown = show(rt, "task:user")
    assert shown["source"]["task"]["apiKey"] == "***" and "c2VjcmV0" not in json.dumps(shown)


def test_a_malformed_params_field_is_reported_without_its_value(caplog: pytest.LogCaptureFixture) -> None:
    client = fakeredis.FakeRedis()
    with caplog.at_level(logging.WARNING):
        report_malformed(client, DocumentError("task:p", "task.params", "not valid JSON", '{"password": "hunter2'), NOW)
    assert "task:p" in caplog.text and "task.params" in caplog.text and "hunter2" not in caplog.text


def test_failure_reasons_are_bounded_by_count_and_age() -> None:
    client = fakeredis.FakeRedis()
    for i in range(5):
        at = NOW + timedelta(seconds=i)
        record_failure(client, f"task:{i}", at, "lease expired", owner_id=None, task_type="x", max_reasons=3)
    assert sorted(k.decode() for k in client.hkeys(keys.FAILED_REASONS)) == ["task:2", "task:3", "task:4"]
    later = NOW + timedelta(days=31)
    record_failure(client, "task:new", later, "lease expired", owner_id=None, task_type="x", max_reasons=3)
    assert [k.decode() for k in client.hkeys(keys.FAILED_REASONS)] == ["task:new"]
    assert client.zcard(keys.FAILED_REASONS_BY_TIME) == 1


def test_a_nodes_breaker_key_expires_so_a_removed_node_leaves_nothing_behind(rt: Runtime) -> None:
    [node] = rt.nodes.resolve()[0]
    rt.nodes.record_failure(node, "answered 503", hard=False)
    assert 0 < rt.redis.pttl(keys.health(node.owner_id)) <= 86_400_000

"""Query bodies: what the claim and retry loops ask the engine."""

from __future__ import annotations

from datetime import UTC, datetime

from elastask.core import mapping, queries
from elastask_bed.testbed.proxy import plain_media_type, request_kind

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_due_tasks_asks_for_idle_due_enabled_tasks_in_kibanas_order() -> None:
    body = queries.due_tasks(
        NOW, size=40, default_max_attempts=3, max_attempts_by_type={"x": 5, "y": 3}, exclude_ids=["task:bad"]
    )
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"type": "task"}} in filters
    assert {"term": {"task.status": "idle"}} in filters
    assert {"range": {"task.runAt": {"lte": "2024-05-01T12:00:00.000Z"}}} in filters
    must_not = body["query"]["bool"]["must_not"]
    assert {"term": {"task.enabled": False}} in must_not
    assert {"ids": {"values": ["task:bad"]}} in must_not
    assert body["seq_no_primary_term"] is True and body["size"] == 40
    assert body["_source"] is False  # ids and versions only: the claim loop mgets what it may claim
    assert list(body["sort"][0]) == ["task.priority"] and body["sort"][0]["task.priority"]["order"] == "desc"
    assert body["sort"][1] == {"task.runAt": {"order": "asc"}}
    recurring, below_max = filters[3]["bool"]["should"]
    assert recurring == {"exists": {"field": "task.schedule.interval"}}  # Kibana claims these whatever attempts
    attempts = below_max["bool"]["should"]
    assert {"terms": {"task.taskType": ["x"]}} in attempts[0]["bool"]["filter"]  # x has its own maximum (5)
    assert attempts[1]["bool"]["must_not"] == [{"terms": {"task.taskType": ["x"]}}]  # y uses the default


def test_expired_leases_and_in_flight() -> None:
    expired = queries.expired_leases(grace_s=2, size=100)["query"]["bool"]["filter"]
    assert {"terms": {"task.status": ["claiming", "running"]}} in expired
    assert {"range": {"task.retryAt": {"lte": "now-2s"}}} in expired  # the engine's clock decides
    live = queries.in_flight(NOW, ["kibana:b", "kibana:a"], size=10)["query"]["bool"]["filter"]
    assert {"terms": {"task.ownerId": ["kibana:a", "kibana:b"]}} in live


def test_kibana_mapping_indexes_every_queried_field() -> None:
    assert mapping.missing_fields(mapping.MAPPINGS) == []
    partial = {"properties": {"type": {"type": "keyword"}, "task": {"properties": {"status": {"type": "keyword"}}}}}
    assert "task.runAt" in mapping.missing_fields(partial)


def test_proxy_rewrites_compatibility_media_types() -> None:
    assert plain_media_type("application/vnd.elasticsearch+json; compatible-with=8") == "application/json"
    assert plain_media_type("application/vnd.elasticsearch+x-ndjson;compatible-with=8") == "application/x-ndjson"
    assert request_kind("POST", "/.kibana_task_manager/_search") == "search"
    assert request_kind("DELETE", "/idx/_doc/task:1") == "delete"
    assert request_kind("POST", "/_bulk") == "bulk"

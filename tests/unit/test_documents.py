"""Task documents shaped like Kibana's, parsed and serialized without loss."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from elastask.core.documents import TaskDocument, new_task, parse_hit, parse_source
from elastask.core.messages import run_now_body
from elastask.errors import DocumentError

FIXTURES = json.loads((Path(__file__).parent.parent / "fixtures" / "kibana_documents.json").read_text())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_given_a_kibana_document_when_round_tripped_then_the_source_is_unchanged(name: str) -> None:
    hit = FIXTURES[name]
    doc = parse_hit(hit)
    assert doc.to_source() == hit["_source"]
    assert (doc.seq_no, doc.primary_term) == (hit["_seq_no"], hit["_primary_term"])


def test_alerting_rule_fields_are_decoded() -> None:
    doc = parse_hit(FIXTURES["alerting_rule"])
    assert doc.task_type == "alerting:.index-threshold"
    assert doc.run_at == datetime(2024, 5, 1, 10, 1, tzinfo=UTC)
    assert doc.retry_at is None and doc.started_at is None and doc.owner_id is None
    assert doc.params["spaceId"] == "default"
    assert doc.state["alertInstances"] == {}
    assert doc.schedule is not None and doc.schedule.interval_ms == 60_000
    assert doc.is_recurring and doc.enabled and doc.priority == 50
    assert doc.scope == ("alerting",)


def test_action_is_one_shot_with_traceparent() -> None:
    doc = parse_hit(FIXTURES["action"])
    assert not doc.is_recurring
    assert doc.trace_parent and doc.trace_parent.startswith("00-")


def test_rrule_schedule_is_kept() -> None:
    doc = parse_hit(FIXTURES["one_shot_failed_rrule"])
    assert doc.schedule is not None and doc.schedule.rrule is not None and doc.schedule.interval_ms is None
    assert doc.status == "failed" and doc.attempts == 3


def test_changed_fields_are_written_as_kibana_writes_them() -> None:
    doc = parse_hit(FIXTURES["recurring_running"])
    changed = doc.with_changes(
        status="idle",
        retry_at=None,
        started_at=None,
        attempts=0,
        state={"runs": 42},
        run_at=datetime(2024, 5, 1, 11, 0, 0, 123456, tzinfo=UTC),
    )
    task = changed.to_source()["task"]
    assert task["status"] == "idle" and task["retryAt"] is None and task["startedAt"] is None
    assert task["runAt"] == "2024-05-01T11:00:00.123Z"
    assert json.loads(task["state"]) == {"runs": 42} and isinstance(task["state"], str)
    assert task["stateVersion"] == 1  # unmodelled field preserved


def _broken(name: str, field: str, value: Any) -> dict[str, Any]:
    hit = copy.deepcopy(FIXTURES[name])
    if value is _DELETE:
        del hit["_source"]["task"][field]
    else:
        hit["_source"]["task"][field] = value
    return hit


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runAt", _DELETE),
        ("runAt", "yesterday"),
        ("runAt", 1714557600000),
        ("retryAt", "2024-13-45T00:00:00Z"),
        ("params", "{not json"),
        ("params", {"already": "an object"}),
        ("state", "[1, 2]"),
        ("status", "paused"),
        ("attempts", -1),
        ("attempts", 2**40),
        ("attempts", "3"),
        ("taskType", ""),
        ("schedule", {"interval": "every minute"}),
        ("enabled", "yes"),
        ("ownerId", 42),
        # Dates the engine stores but no lease or interval can be added to (the first stopped every loop).
        ("runAt", "0001-01-01T00:00:00+01:00"),
        ("runAt", "9999-12-31T23:59:59-01:00"),
        ("retryAt", "0999-12-31T23:00:00Z"),
        ("startedAt", "2024-05-01T10:00:00+99:00"),
        # Kept as written (the index maps dynamic: false): any JSON value.
        ("cost", ["large"]),
        ("cost", {"units": 4}),
        ("cost", "huge"),
        ("priority", 2**80),
        ("priority", "high"),
        ("timeoutOverride", ["5m"]),
        ("scope", [1]),
        pytest.param("params", "[" * 100_000 + "]" * 100_000, id="params-nested-too-deep"),
    ],
)
def test_given_a_malformed_field_when_parsed_then_the_error_names_id_and_field(field: str, value: Any) -> None:
    hit = _broken("alerting_rule", field, value)
    with pytest.raises(DocumentError) as caught:
        parse_hit(hit)
    assert caught.value.doc_id == hit["_id"]
    assert caught.value.field.startswith(f"task.{field}")
    assert hit["_id"] in str(caught.value) and field in str(caught.value)


def test_a_document_of_another_type_is_rejected() -> None:
    with pytest.raises(DocumentError) as caught:
        parse_source("background-task-node:abc", {"type": "background-task-node", "background-task-node": {}})
    assert caught.value.field == "type"


def test_new_task_is_what_kibana_schedules() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    doc = new_task("abc", "sample:task", now=now, params={"a": 1}, interval="10s")
    source = doc.to_source()
    assert doc.id == "task:abc"
    assert source["type"] == "task" and source["references"] == []
    task = source["task"]
    assert task["status"] == "idle" and task["attempts"] == 0
    assert task["runAt"] == task["scheduledAt"] == "2024-05-01T12:00:00.000Z"
    assert task["params"] == '{"a":1}' and task["schedule"] == {"interval": "10s"}
    assert parse_source(doc.id, source).to_source() == source


def test_run_now_body_carries_the_reference_fields() -> None:
    doc: TaskDocument = parse_hit(FIXTURES["recurring_running"])
    body = run_now_body(doc)
    assert body["id"] == "task:Fleet-Usage-Sender-1.1.6"
    assert body["params"] == {} and body["state"] == {"runs": 41}
    assert body["schedule"] == {"interval": "1h"}
    assert body["ownerId"] == "kibana:5b2de169-2785-441b-ae8c-186a1936b17d"
    for key in (
        "taskType",
        "scope",
        "runAt",
        "retryAt",
        "startedAt",
        "scheduledAt",
        "attempts",
        "status",
        "traceparent",
    ):
        assert key in body

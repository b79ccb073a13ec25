"""Property-based: random task documents through parsing and the claim decision.

Nothing crashes (a bad document raises DocumentError naming its id and field, nothing else), and
nothing valid is dropped (every valid document parses, and with room for all, all are assigned).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from elastask.core import policy
from elastask.core.documents import STATUSES, TaskDocument, parse_hit
from elastask.core.intervals import MAX_INTERVAL_MS, format_date
from elastask.errors import DocumentError

BASE = datetime(2024, 5, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# Dates as any writer may have put them: years 1 to 9999, any offset, with or without one.
odd_dates = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:00:00{}".format,
    st.integers(1, 9999),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.sampled_from(["", "Z", "+01:00", "-01:00", "+23:59", "-23:59", ".999999+14:00"]),
)
dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
good_task = st.fixed_dictionaries(
    {
        "taskType": st.text(min_size=1, max_size=30),
        "status": st.sampled_from(sorted(STATUSES)),
        "runAt": dates.map(format_date),
        "attempts": st.integers(min_value=0, max_value=2**31 - 1),
        "params": st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(json.dumps),
        "state": st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(json.dumps),
    },
    optional={
        "retryAt": st.none() | dates.map(format_date),
        "startedAt": st.none() | dates.map(format_date),
        "scheduledAt": st.none() | dates.map(format_date),
        "ownerId": st.none() | st.text(min_size=1, max_size=20),
        "schedule": st.sampled_from([{"interval": "10s"}, {"interval": "5m"}, {"rrule": {"freq": 3}}]),
        "enabled": st.booleans(),
        "priority": st.integers(min_value=0, max_value=100),
        "scope": st.lists(st.text(max_size=10), max_size=3),
        "partition": st.integers(0, 255),
    },
)
FIELDS = [
    "taskType",
    "status",
    "runAt",
    "retryAt",
    "startedAt",
    "scheduledAt",
    "attempts",
    "params",
    "state",
    "schedule",
    "enabled",
    "priority",
    "scope",
    "ownerId",
    "traceparent",
    "timeoutOverride",
    "cost",
    "partition",
]
anything = (
    json_values | odd_dates | st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from(["tiny", "5m", "1d"])
)
# Anything at all in any field: the parser must reject it cleanly or accept it. A good task with a
# few fields replaced reaches every field's reader (a wholly random one mostly stops at taskType).
any_task = st.dictionaries(st.sampled_from(FIELDS), anything, max_size=len(FIELDS)) | st.builds(
    lambda good, changes: {**good, **changes},
    good_task,
    st.dictionaries(st.sampled_from(FIELDS), anything, min_size=1, max_size=3),
)


def hit(doc_id: str, task: dict[str, Any]) -> dict[str, Any]:
    return {"_id": doc_id, "_seq_no": 1, "_primary_term": 1, "_source": {"type": "task", "task": task}}


@settings(max_examples=1000, deadline=None)
@given(any_task, st.text(min_size=1, max_size=20))
def test_any_document_parses_or_raises_a_document_error_naming_id_and_field(task: dict[str, Any], doc_id: str) -> None:
    try:
        doc = parse_hit(hit(doc_id, task))
    except DocumentError as e:
        assert e.doc_id == doc_id
        assert e.field.startswith("task.")
        return
    assert doc.id == doc_id
    assert doc.to_source()["task"]["taskType"] == task["taskType"]
    # Every date a parsed document holds takes any lease or interval either way.
    for moment in (doc.run_at, doc.retry_at, doc.started_at, doc.scheduled_at):
        if moment is not None:
            assert moment - timedelta(milliseconds=MAX_INTERVAL_MS) < moment + timedelta(milliseconds=MAX_INTERVAL_MS)


@settings(max_examples=200, deadline=None)
@given(st.lists(good_task, min_size=1, max_size=30))
def test_every_valid_document_is_parsed_round_tripped_and_assigned_when_there_is_room(
    tasks: list[dict[str, Any]],
) -> None:
    docs: list[TaskDocument] = []
    for index, task in enumerate(tasks):
        source = {"type": "task", "task": task}
        doc = parse_hit({"_id": f"task:{index}", "_seq_no": index, "_primary_term": 1, "_source": source})
        assert doc.to_source() == source  # nothing added, nothing lost
        docs.append(doc)
    free = {"kibana:a": 2 * len(docs), "kibana:b": 2 * len(docs)}
    assignments = policy.assign(docs, free, lambda _t: 2)
    assert [a.task.id for a in assignments] == [d.id for d in docs]
    for owner in free:
        assert sum(a.cost for a in assignments if a.owner_id == owner) <= free[owner]
    for a in assignments:
        fields = policy.claim_fields(a.task, a.owner_id, BASE, 300_000)
        assert fields["attempts"] == a.task.attempts + 1
        assert fields["retryAt"] >= format_date(BASE + timedelta(minutes=5))


@settings(max_examples=100, deadline=None)
@given(st.lists(good_task, max_size=40), st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 25), min_size=1))
def test_assignment_never_exceeds_any_nodes_free_units(tasks: list[dict[str, Any]], free: dict[str, int]) -> None:
    docs = [parse_hit(hit(f"task:{i}", t)) for i, t in enumerate(tasks)]
    costs = {0: 1, 1: 2, 2: 10}
    assignments = policy.assign(docs, free, lambda t: costs[len(t) % 3])
    for owner, units in free.items():
        assert sum(a.cost for a in assignments if a.owner_id == owner) <= units

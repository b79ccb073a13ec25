"""The claim rules' searches, on the unit tests' stub engine and on the real engine: the same answers.

The unit tests run the loops on a stub engine that re-implements the part of the query language
they use (tests/unit/stubs.py). Each test here runs one of the loops' searches on both, over the
same documents, and asserts the same expected ids: the stub cannot drift from the engine unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from elasticsearch import Elasticsearch

from elastask.core import queries
from elastask.core.documents import TaskDocument, new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import INDEX
from tests.integration.harness import seed
from tests.unit.stubs import StubEngine

pytestmark = pytest.mark.integration


def _task(name: str, now: datetime, task_type: str = "sample", *, run_at_s: float, **changes: object) -> TaskDocument:
    interval = changes.pop("interval", None)
    priority = changes.pop("priority", 50)
    doc = new_task(
        name,
        task_type,
        now=now - timedelta(minutes=5),
        run_at=now + timedelta(seconds=run_at_s),
        interval=interval if isinstance(interval, str) else None,
        priority=priority if isinstance(priority, int) else 50,
    )
    return doc.with_changes(**changes)


def documents(now: datetime) -> list[TaskDocument]:
    """Due, future, disabled, exhausted, removed-type and leased tasks (times relative to ``now``)."""
    leased = {"status": "running", "attempts": 1}
    return [
        _task("old", now, run_at_s=-40),
        _task("newer", now, run_at_s=-5),
        _task("urgent", now, run_at_s=-1, priority=80),
        _task("report", now, "report:generate", run_at_s=-10),
        _task("later", now, run_at_s=600),
        _task("disabled", now, run_at_s=-30, enabled=False),
        _task("exhausted", now, run_at_s=-35, attempts=3),
        _task("recurring-exhausted", now, run_at_s=-20, attempts=5, interval="1m"),
        _task("removed", now, "actions:removed-type", run_at_s=-25),
        _task("expired", now, run_at_s=-120, **leased, retry_at=now - timedelta(seconds=30), owner_id="kibana:a"),
        _task("live", now, run_at_s=-60, **leased, retry_at=now + timedelta(seconds=600), owner_id="kibana:b"),
        _task(
            "claiming", now, run_at_s=-60, status="claiming", retry_at=now - timedelta(seconds=300), owner_id="kibana:a"
        ),
    ]


@pytest.fixture(params=["stub", "real"])
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[TaskStore, datetime]]:
    """The same documents in the stub engine or the real one (through the compatibility proxy)."""
    now = datetime.now(UTC).replace(microsecond=0)
    if request.param == "stub":
        stub = StubEngine()
        for doc in documents(now):
            stub.put(doc.id, doc.to_source())
        yield TaskStore(stub, INDEX), now  # type: ignore[arg-type]
        return
    store: TaskStore = request.getfixturevalue("store")
    es: Elasticsearch = request.getfixturevalue("es")
    seed(es, documents(now))
    yield store, now


def ids(hits: list[dict[str, object]]) -> list[str]:
    return [str(hit["_id"]).removeprefix("task:") for hit in hits]


def test_due_tasks_come_highest_priority_first_then_oldest_leaving_out_what_may_not_be_claimed(
    engine: tuple[TaskStore, datetime],
) -> None:
    store, now = engine
    body = queries.due_tasks(
        now,
        size=100,
        default_max_attempts=3,
        max_attempts_by_type={},
        priority_by_type={"report:*": 70},
        exclude_types={"actions:removed-type"},
        exclude_ids={"task:newer"},
    )
    assert ids(store.search_hits(body, "due")) == ["urgent", "report", "old", "recurring-exhausted"]


def test_a_type_of_its_own_maximum_attempts_and_a_group_search(engine: tuple[TaskStore, datetime]) -> None:
    store, now = engine
    body = queries.due_tasks(
        now, size=100, default_max_attempts=3, max_attempts_by_type={"sample": 4}, only_types={"sample"}
    )
    # exhausted (attempts 3) is claimable under a maximum of 4; only the sample type is searched.
    assert set(ids(store.search_hits(body, "due"))) == {
        "old",
        "newer",
        "urgent",
        "exhausted",
        "recurring-exhausted",
    }


def test_idle_one_shot_tasks_at_their_maximum_are_found_for_failing(engine: tuple[TaskStore, datetime]) -> None:
    store, _ = engine
    body = queries.exhausted_one_shots(size=100, default_max_attempts=3, max_attempts_by_type={})
    assert ids(store.search_hits(body, "exhausted")) == ["exhausted"]


def test_expired_leases_are_found_oldest_first_after_the_grace(engine: tuple[TaskStore, datetime]) -> None:
    store, _ = engine
    assert ids(store.search_hits(queries.expired_leases(grace_s=2, size=100), "expired")) == ["claiming", "expired"]
    assert ids(store.search_hits(queries.expired_leases(grace_s=60, size=100), "expired")) == ["claiming"]
    body = queries.expired_leases(grace_s=2, size=100, exclude_ids={"task:claiming"})
    assert ids(store.search_hits(body, "expired")) == ["expired"]


def test_leases_still_running_are_found_per_node_or_for_every_node(engine: tuple[TaskStore, datetime]) -> None:
    store, now = engine
    assert ids(store.search_hits(queries.in_flight(now, {"kibana:b"}, size=100), "in flight")) == ["live"]
    assert ids(store.search_hits(queries.in_flight(now, {"kibana:a"}, size=100), "in flight")) == []
    assert ids(store.search_hits(queries.in_flight(now, None, size=100), "in flight")) == ["live"]

"""What several unit test modules build their cases from: the moment they happen at, tasks claimed or due
on the stub engine (stubs.py), the scripted node's answers, and what the ledger holds."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from elastask.core.documents import new_task
from elastask.core.intervals import format_date
from elastask.core.messages import ClaimedTask
from elastask.parts.kibana import PushResult, classify_status
from elastask.parts.nodes import Node
from elastask.runtime import Runtime
from tests.unit.stubs import OWNER, URL, Answerer, StubEngine

#: When the tests happen (the claim cycle's, the dispatch job's "now").
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def seeded(engine: StubEngine, count: int) -> None:
    """``count`` one-shot tasks ``task:t<i>`` of the type sample, due since NOW - 10 s, oldest first."""
    for i in range(count):
        doc = new_task(f"t{i}", "sample", now=NOW - timedelta(seconds=10 - i))
        engine.put(doc.id, doc.to_source())


def seeded_two_types(engine: StubEngine) -> None:
    """Three one-shot tasks of each of the types sample and report (``task:sample-<i>``, ``task:report-<i>``)."""
    for i in range(3):
        for task_type in ("sample", "report"):
            doc = new_task(f"{task_type}-{i}", task_type, now=NOW - timedelta(seconds=10 - i))
            engine.put(doc.id, doc.to_source())


def running(engine: StubEngine) -> set[str]:
    """The ids of the tasks running (claimed) on the engine."""
    return {d for d, doc in engine.docs.items() if doc["_source"]["task"]["status"] == "running"}


def claimed(engine: StubEngine, rt: Runtime, doc_id: str, attempts: int, schedule: Any = None) -> ClaimedTask:
    """A task as the claim loop leaves it: running on kibana:a, its slot held in the ledger."""
    retry_at = NOW + timedelta(minutes=5)
    task = {
        "taskType": "sample",
        "status": "running",
        "ownerId": OWNER,
        "attempts": attempts,
        "runAt": format_date(NOW),
        "startedAt": format_date(NOW),
        "retryAt": format_date(retry_at),
        "params": "{}",
        "state": "{}",
        **({"schedule": schedule} if schedule else {}),
    }
    seq_no = engine.put(doc_id, {"type": "task", "task": task})
    rt.ledger.reserve(OWNER, 20, [(doc_id, 2, retry_at)], NOW)
    rt.ledger.confirm(OWNER, 20, [(doc_id, 2, retry_at)], NOW, versions={doc_id: seq_no})  # the slot is this claim's
    body = {
        "id": doc_id,
        "taskType": "sample",
        "runAt": format_date(NOW),
        **({"schedule": schedule} if schedule else {}),
    }
    return ClaimedTask(doc_id, OWNER, URL, seq_no, 1, format_date(retry_at), attempts, 300_000, body, slack_ms=5000)


def answering(status: int) -> Answerer:
    """The scripted node answers every push with this HTTP status."""

    def answer(_body: Mapping[str, Any]) -> PushResult:
        return PushResult(classify_status(status), f"{URL}/api/task_manager/_run_now: answered {status}", status)

    return answer


def held(rt: Runtime) -> set[str]:
    """The tasks whose slots the ledger holds on kibana:a."""
    return {lease.task_id for lease in rt.ledger.leases([OWNER])}


def node_of(rt: Runtime) -> Node:
    """The stub runtime's node, resolved (ownerId kibana:a)."""
    config = rt.settings.kibana.hosts[0]
    return Node(config, OWNER, rt.settings.capacity_units(config))


def running_source(started: datetime, retry_at: datetime, attempts: int = 1, owner: str = OWNER) -> dict[str, Any]:
    """A task document claimed for ``owner`` at ``started`` (due then), leased until ``retry_at``."""
    task = {
        "taskType": "sample",
        "status": "running",
        "ownerId": owner,
        "attempts": attempts,
        "runAt": format_date(started),
        "startedAt": format_date(started),
        "retryAt": format_date(retry_at),
        "params": "{}",
        "state": "{}",
    }
    return {"type": "task", "task": task}

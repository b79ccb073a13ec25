"""Real ``celery -A elastask worker|beat`` processes against the test bed, and helpers to watch them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from elasticsearch import Elasticsearch

from elastask.core.documents import TaskDocument, new_task
from elastask_bed.testbed.bed import INDEX
from elastask_bed.testbed.fleet import CeleryFleet

#: The workers and beats of a test are an ordinary fleet...
Dispatcher = CeleryFleet

#: ...with the fast intervals the tests use (a test's own ``env`` overrides them).
FAST_ENV = {
    "ELASTASK_POLLING_INTERVAL": "200",
    "ELASTASK_IDLE_POLLING_INTERVAL": "1000",
    "ELASTASK_RETRY_INTERVAL": "500",
    "ELASTASK_RETRY_DELAY": "1s",
    "ELASTASK_NODE_PROBE_INTERVAL": "1000",
}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll until ``predicate`` holds; fail naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for: {what}")


def task_count(es: Elasticsearch, **terms: Any) -> int:
    """Task documents (real-time after a refresh) matching ``task.<field>: value`` terms."""
    es.indices.refresh(index=INDEX)
    filters = [{"term": {"type": "task"}}] + [{"term": {f"task.{k}": v}} for k, v in terms.items()]
    return int(es.count(index=INDEX, query={"bool": {"filter": filters}})["count"])


def seed(es: Elasticsearch, docs: list[TaskDocument]) -> None:
    """Index task documents in bulk, as Kibana would have scheduled them."""
    operations: list[dict[str, Any]] = []
    for doc in docs:
        operations += [{"create": {"_index": INDEX, "_id": doc.id}}, doc.to_source()]
    for start in range(0, len(operations), 1000):
        answer = es.bulk(operations=operations[start : start + 1000], refresh=True)
        assert not answer["errors"], answer
    return None


def now() -> datetime:
    return datetime.now(UTC)


def seed_due_later(es: Elasticsearch, prefix: str, task_type: str, count: int, step_ms: int) -> None:
    """One-shot tasks falling due one every ``step_ms``, the first 3 s from now (to be claimed ahead)."""
    start, at = now() + timedelta(seconds=3), now()
    step = timedelta(milliseconds=step_ms)
    seed(es, [new_task(f"{prefix}-{i}", task_type, now=at, run_at=start + i * step) for i in range(count)])


def drifts_ms(stats: dict[str, Any]) -> list[float]:
    """Every start drift (received - runAt) the simulator recorded (``stats(drifts=True)``)."""
    return [d for node in stats["nodes"].values() for d in node["drifts"]]


def assert_no_violations(stats: dict[str, Any], capacity: int = 10) -> None:
    """The invariants the simulator sees: cap, no overlapping run, nothing rejected over capacity."""
    for owner, node in stats["nodes"].items():
        assert node["max_concurrency"] <= capacity, f"{owner} ran {node['max_concurrency']} at once"
        assert node["overlapping_runs"] == 0, f"{owner} saw an overlapping run"
        assert node["rejected_over_capacity"] == 0, f"{owner} was pushed beyond its capacity"


def console_login(session: requests.Session, base: str, username: str, password: str) -> tuple[requests.Response, str]:
    """Post the console's login form as its page does (the CSRF token from the cookie the form sets):
    the answer (302 when admitted) and the token, which every control then sends as ``X-XSRFToken``."""
    session.get(base + "/console/login")
    token = session.cookies["_xsrf"]
    credentials = {"username": username, "password": password, "_xsrf": token}
    return session.post(base + "/console/login", data=credentials, allow_redirects=False), token

"""The retry loop's rules on a stub engine and fakeredis: expired leases retried, failed or moved on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from elastask import keys
from elastask.core.intervals import format_date
from elastask.loops.cadence import Cadence
from elastask.loops.retry import retry_expired_leases
from tests.unit.stubs import StubEngine, stub_runtime


def leased(engine: StubEngine, doc_id: str, *, attempts: int, retry_at: datetime, schedule: str | None = None) -> None:
    now = datetime.now(UTC)
    task = {
        "taskType": "sample",
        "status": "running",
        "ownerId": "kibana:a",
        "attempts": attempts,
        "runAt": format_date(now - timedelta(minutes=10)),
        "retryAt": format_date(retry_at),
        "startedAt": format_date(now - timedelta(minutes=6)),
        "params": "{}",
        "state": "{}",
    }
    if schedule:
        task["schedule"] = {"interval": schedule}
    engine.put(doc_id, {"type": "task", "task": task})


def status(engine: StubEngine, doc_id: str) -> dict[str, object]:
    return dict(engine.docs[doc_id]["_source"]["task"])


def test_given_expired_leases_then_one_shots_retry_after_kibanas_delay_or_fail_and_recurring_ones_run_again() -> None:
    now = datetime.now(UTC)  # the stub engine's "now" is the real clock, as the engine's is
    engine = StubEngine()
    expired = now - timedelta(seconds=10)
    leased(engine, "task:first-try", attempts=1, retry_at=expired)
    leased(engine, "task:last-try", attempts=3, retry_at=expired)
    leased(engine, "task:recurring", attempts=1, retry_at=expired, schedule="1m")
    leased(engine, "task:still-running", attempts=1, retry_at=now + timedelta(minutes=1))
    leased(engine, "task:within-grace", attempts=1, retry_at=now - timedelta(milliseconds=500))
    rt = stub_runtime(engine)
    Cadence(rt.redis).rest(now, now + timedelta(minutes=1))

    summary = retry_expired_leases(rt, now)

    assert summary.expired == 3 and summary.outcomes == {"retry": 2, "failed": 1}
    first = status(engine, "task:first-try")
    assert first["status"] == "idle" and first["attempts"] == 1 and first["retryAt"] is None
    assert str(first["runAt"]) > format_date(now + timedelta(seconds=29))  # Kibana's 30 s before the first retry
    assert status(engine, "task:last-try")["status"] == "failed"
    assert "without an outcome" in json.loads(rt.redis.hget(keys.FAILED_REASONS, "task:last-try"))["reason"]
    assert status(engine, "task:recurring")["status"] == "idle"
    assert status(engine, "task:still-running")["status"] == "running"  # its lease has not run out
    assert status(engine, "task:within-grace")["status"] == "running"  # Kibana may still be running it
    assert not Cadence(rt.redis).resting()  # tasks are due again: the claim loop is woken


def test_given_a_cycle_already_running_elsewhere_then_this_one_does_nothing() -> None:
    now = datetime.now(UTC)
    engine = StubEngine()
    leased(engine, "task:x", attempts=1, retry_at=now - timedelta(minutes=1))
    rt = stub_runtime(engine)
    rt.redis.set(keys.RETRY_LOCK, "another worker")
    assert not retry_expired_leases(rt, now).ran
    assert status(engine, "task:x")["status"] == "running"

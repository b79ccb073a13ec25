"""The retry loop's rules on a stub engine and fakeredis: expired leases retried, failed or moved on."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from elastask import keys
from elastask.core.documents import new_task
from elastask.core.intervals import format_date
from elastask.core.messages import DispatchJob
from elastask.errors import LedgerError
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.retry.loop import retry_expired_leases
from elastask.parts.cadence import Cadence
from elastask.runtime import Runtime
from tests.unit.stubs import MakeRuntime, StubEngine


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


def test_given_expired_leases_then_one_shots_retry_after_kibanas_delay_or_fail_and_recurring_ones_run_again(
    engine: StubEngine, rt: Runtime
) -> None:
    now = datetime.now(UTC)  # the stub engine's "now" is the real clock, as the engine's is
    expired = now - timedelta(seconds=10)
    leased(engine, "task:first-try", attempts=1, retry_at=expired)
    leased(engine, "task:last-try", attempts=3, retry_at=expired)
    leased(engine, "task:recurring", attempts=1, retry_at=expired, schedule="1m")
    leased(engine, "task:still-running", attempts=1, retry_at=now + timedelta(minutes=1))
    leased(engine, "task:within-grace", attempts=1, retry_at=now - timedelta(milliseconds=500))
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


def test_given_a_cycle_already_running_elsewhere_then_this_one_does_nothing(engine: StubEngine, rt: Runtime) -> None:
    now = datetime.now(UTC)
    leased(engine, "task:x", attempts=1, retry_at=now - timedelta(minutes=1))
    rt.redis.set(keys.RETRY_LOCK, "another worker")
    assert not retry_expired_leases(rt, now).ran
    assert status(engine, "task:x")["status"] == "running"


def test_given_an_rrule_task_idle_at_its_maximum_attempts_then_it_is_made_claimable_again_never_failed(
    engine: StubEngine, rt: Runtime
) -> None:
    # The engine cannot tell an rrule task from a one-shot one (schedule.rrule is not indexed).
    from elastask.loops.retry.loop import fail_exhausted_one_shots

    now = datetime.now(UTC)
    base = {"taskType": "sample", "status": "idle", "attempts": 3, "runAt": format_date(now), "params": "{}"}
    engine.put("task:rrule", {"type": "task", "task": {**base, "schedule": {"rrule": {"freq": 3, "interval": 1}}}})
    engine.put("task:once", {"type": "task", "task": dict(base)})
    assert fail_exhausted_one_shots(rt, now) == 1
    assert status(engine, "task:rrule")["status"] == "idle" and status(engine, "task:rrule")["attempts"] == 0
    assert status(engine, "task:once")["status"] == "failed"
    assert not rt.redis.hexists(keys.FAILED_REASONS, "task:rrule")


def test_given_an_interval_of_millions_of_days_or_a_date_near_9999_then_the_cycles_skip_it_and_go_on(
    engine: StubEngine, rt: Runtime
) -> None:
    from elastask.loops.claim.loop import claim_available_tasks

    now = datetime.now(UTC)
    expired = now - timedelta(seconds=10)
    leased(engine, "task:huge", attempts=3, retry_at=expired, schedule="2900000d")
    leased(engine, "task:ok", attempts=1, retry_at=expired)
    engine.put(
        "task:far",
        {
            "type": "task",
            "task": {
                "taskType": "sample",
                "status": "running",
                "attempts": 1,
                "ownerId": "kibana:a",
                "runAt": format_date(now),
                "retryAt": "9999-12-31T23:59:59.000Z",
                "params": "{}",
            },
        },
    )
    summary = retry_expired_leases(rt, now)  # raised OverflowError on every cycle in 0.5.1
    assert summary.skipped == 1 and status(engine, "task:ok")["status"] == "idle"
    from elastask.core.documents import new_task
    from elastask.loops.claim.reconcile import rebuild_ledger

    rebuild_ledger(rt, rt.nodes.resolve()[0], now)  # the retryAt near 9999 is skipped, not an OverflowError
    huge = new_task("huge-due", "sample", now=now - timedelta(seconds=2)).to_source()
    huge["task"]["schedule"] = {"interval": "2900000d"}
    engine.put("task:huge-due", huge)
    fresh = new_task("fresh", "sample", now=now - timedelta(seconds=1))
    engine.put(fresh.id, fresh.to_source())
    claimed = claim_available_tasks(rt, now, lambda _job: None, sessions=False)
    assert claimed.skipped == 1 and status(engine, "task:fresh")["status"] == "running"


def test_given_more_malformed_expired_leases_than_a_batch_then_the_good_ones_are_still_taken_back(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    now = datetime.now(UTC)
    rt = make_runtime(claim_batch_size=2)
    for i in range(3):
        leased(engine, f"task:bad{i}", attempts=1, retry_at=now - timedelta(minutes=5 - i))
        engine.docs[f"task:bad{i}"]["_source"]["task"]["params"] = "{not json"
    leased(engine, "task:good", attempts=1, retry_at=now - timedelta(seconds=10))
    for _ in range(3):
        retry_expired_leases(rt, now)
        rt.redis.delete(keys.RETRY_LOCK) if hasattr(keys, "RETRY_LOCK") else None
    assert status(engine, "task:good")["status"] == "idle"


def claimed_by_a_cycle(rt: Runtime, engine: StubEngine, count: int) -> list[DispatchJob]:
    """One-shot tasks claimed by a real claim cycle (claim markers set), their dispatch jobs returned
    unsent; then their leases are made to have run out (the documents' retryAt moved into the past,
    their versions kept)."""
    now = datetime.now(UTC)
    for i in range(count):
        doc = new_task(f"lost-{i}", "sample", now=now - timedelta(seconds=5))
        engine.put(doc.id, doc.to_source())
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, now, jobs.append, sessions=False)
    assert sum(len(job.tasks) for job in jobs) == count
    for doc in engine.docs.values():
        doc["_source"]["task"]["retryAt"] = format_date(now - timedelta(minutes=1))
    return jobs


def test_given_a_claim_whose_dispatch_job_was_lost_before_any_push_then_its_lease_expiry_returns_the_attempt(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Defect 10 (0.5.1): ETA jobs a worker drops when its broker connection resets (or a worker killed
    # while holding them) burned an attempt: a one-shot task with max_attempts 1 ended failed, never run.
    rt = make_runtime(max_attempts=1)
    claimed_by_a_cycle(rt, engine, 2)

    summary = retry_expired_leases(rt, datetime.now(UTC))

    assert {k: n for k, n in summary.outcomes.items() if n} == {"returned": 2}
    for doc_id in ("task:lost-0", "task:lost-1"):
        task = status(engine, doc_id)
        assert task["status"] == "idle" and task["attempts"] == 0 and task["retryAt"] is None
    assert not rt.redis.hexists(keys.FAILED_REASONS, "task:lost-0")
    assert not Cadence(rt.redis).resting()


def test_given_a_claim_that_was_pushed_then_its_lease_expiry_counts_the_attempt(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    rt = make_runtime(max_attempts=1)
    jobs = claimed_by_a_cycle(rt, engine, 1)
    for doc in engine.docs.values():  # the push leaves while the lease still runs
        doc["_source"]["task"]["retryAt"] = format_date(datetime.now(UTC) + timedelta(minutes=5))
    with ThreadPoolExecutor(max_workers=2) as pool:
        report = push_claimed_tasks(rt, jobs[0], datetime.now(UTC), pool)
    assert report.outcomes == {"task:lost-0": "accepted"}
    engine.docs["task:lost-0"]["_source"]["task"]["retryAt"] = format_date(datetime.now(UTC) - timedelta(minutes=1))

    summary = retry_expired_leases(rt, datetime.now(UTC))

    # Kibana had it: the run was lost, its attempt counts.
    assert {k: n for k, n in summary.outcomes.items() if n} == {"failed": 1}
    assert status(engine, "task:lost-0")["status"] == "failed"


def test_given_redis_lost_its_data_since_the_claim_then_a_lease_expiry_counts_the_attempt(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Without the claim marker nothing proves the claim was never pushed (its push marker may be gone too).
    rt = make_runtime(max_attempts=1)
    claimed_by_a_cycle(rt, engine, 1)
    rt.redis.flushall()

    summary = retry_expired_leases(rt, datetime.now(UTC))

    assert {k: n for k, n in summary.outcomes.items() if n} == {"failed": 1}
    assert status(engine, "task:lost-0")["status"] == "failed"


def test_given_redis_failing_while_the_markers_are_read_then_a_never_pushed_claim_waits_for_the_next_cycle(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An expired lease elastask claimed and never pushed (its claim marker, no push marker), and the
    # reply to the markers' read lost: ended now, it would count an attempt never made (the simulation's
    # seed 180047 found it at a node restart, which shares this read; tests/unit/test_node_restarts.py).
    now = datetime.now(UTC)
    leased(engine, "task:never-pushed", attempts=1, retry_at=now - timedelta(seconds=10))
    rt.ledger.mark_built(now)
    rt.ledger.mark_claims([("task:never-pushed", engine.docs["task:never-pushed"]["_seq_no"], 60_000)])
    current = rt.ledger.claims_current
    monkeypatch.setattr(rt.ledger, "claims_current", lambda: _raise(LedgerError("Redis, reading the epoch: lost")))

    with pytest.raises(LedgerError):
        retry_expired_leases(rt, now)
    assert status(engine, "task:never-pushed")["status"] == "running"
    assert status(engine, "task:never-pushed")["attempts"] == 1

    monkeypatch.setattr(rt.ledger, "claims_current", current)  # Redis answers again
    summary = retry_expired_leases(rt, now)  # the next cycle: the lock was let go
    assert summary.outcomes["returned"] == 1
    assert status(engine, "task:never-pushed")["status"] == "idle"
    assert status(engine, "task:never-pushed")["attempts"] == 0


def _raise(error: Exception) -> bool:
    raise error

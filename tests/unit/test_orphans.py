"""A dead worker's claims: the unpushed ones back to idle at once, the pushed ones keep their leases
(stub engine, fakeredis; the same on real processes in tests/integration/test_faults.py).

Given/When/Then in each name.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from elastask import keys
from elastask.core.messages import DispatchJob
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.outcomes import give_back_unsent
from elastask.loops.dispatch.push_markers import ANSWERED, PUSHED, pushed_unanswered
from elastask.loops.retry.loop import retry_expired_leases, unpushed_claims
from elastask.loops.retry.orphans import take_back_orphans
from elastask.parts import ledger as ledger_module
from elastask.parts.push_outcome import PushOutcome, PushResult
from elastask.parts.store import TaskStore
from elastask.parts.worker_claims import WorkerClaims
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, claimed, seeded
from tests.unit.stubs import INDEX, OWNER, URL, MakeRuntime, StubEngine


def claimed_by(engine: StubEngine, rt: Runtime, worker_id: str, count: int) -> list[DispatchJob]:
    """``count`` one-shot tasks claimed by a claim cycle of the worker ``worker_id``, its jobs not yet pushed."""
    seeded(engine, count)
    rt.worker_id = worker_id
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    assert sum(len(job.tasks) for job in jobs) == count
    return jobs


def status_of(engine: StubEngine, doc_id: str) -> tuple[str, int]:
    task = engine.docs[doc_id]["_source"]["task"]
    return task["status"], task["attempts"]


def test_given_a_worker_that_stopped_beating_then_its_unpushed_claims_go_back_and_its_pushed_ones_stay(
    engine: StubEngine, rt: Runtime
) -> None:
    jobs = claimed_by(engine, rt, "dead-worker", 3)
    [job] = jobs
    pushed = job.tasks[0]
    rt.redis.set(keys.push_marker(pushed.doc_id, pushed.claim), 1)  # its process pushed this one before it died
    taken = take_back_orphans(rt, NOW + timedelta(seconds=6))
    assert taken.returned == 2
    assert status_of(engine, pushed.doc_id) == ("running", 1)
    for task in job.tasks[1:]:
        assert status_of(engine, task.doc_id) == ("idle", 0)  # attempt returned
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {pushed.doc_id}
    assert WorkerClaims(rt.redis).dead() == []  # handled once, forgotten


def test_a_push_kibana_answered_is_marked_answered_and_an_ambiguous_one_stays_only_pushed(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    def answer(body: Mapping[str, Any]) -> PushResult:
        if body["id"] == "task:t0":
            return PushResult(PushOutcome.AMBIGUOUS, "connection lost after sending")
        return PushResult(PushOutcome.ACCEPTED, "204", 204)

    rt = make_runtime(answer)
    [job] = claimed_by(engine, rt, "worker", 3)
    with ThreadPoolExecutor(max_workers=3) as pool:
        push_claimed_tasks(rt, job, NOW, pool)
    markers = {t.doc_id: rt.redis.get(keys.push_marker(t.doc_id, t.claim)) for t in job.tasks}
    assert pushed_unanswered(markers.pop("task:t0"))
    assert markers == {"task:t1": ANSWERED, "task:t2": ANSWERED}


def test_given_a_worker_that_died_with_a_push_in_flight_then_it_keeps_its_lease_and_is_named(
    engine: StubEngine, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    [job] = claimed_by(engine, rt, "dead-worker", 3)
    answered, in_flight, _unpushed = job.tasks
    rt.redis.set(keys.push_marker(answered.doc_id, answered.claim), ANSWERED)  # Kibana answered it
    rt.redis.set(keys.push_marker(in_flight.doc_id, in_flight.claim), PUSHED)  # the death came first
    taken = take_back_orphans(rt, NOW + timedelta(seconds=6))
    assert (taken.returned, taken.in_flight) == (1, 1)
    assert status_of(engine, in_flight.doc_id) == ("running", 1)  # never pushed twice: its lease decides
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {answered.doc_id, in_flight.doc_id}
    [line] = [r.getMessage() for r in caplog.records if "in flight" in r.getMessage()]
    assert repr(in_flight.doc_id) in line and repr(answered.doc_id) not in line
    assert retry_expired_leases(rt, NOW + timedelta(seconds=7)).orphans_in_flight == 0  # reported once


def test_given_a_live_worker_then_its_claims_are_left_alone(engine: StubEngine, rt: Runtime) -> None:
    jobs = claimed_by(engine, rt, "live-worker", 2)
    WorkerClaims(rt.redis).beat("live-worker", 0)
    assert take_back_orphans(rt, NOW).returned == 0
    assert all(status_of(engine, task.doc_id) == ("running", 1) for task in jobs[0].tasks)


def test_given_a_frozen_worker_that_wakes_after_the_give_back_then_it_pushes_nothing(
    engine: StubEngine, rt: Runtime
) -> None:
    jobs = claimed_by(engine, rt, "frozen-worker", 2)
    take_back_orphans(rt, NOW + timedelta(seconds=6))
    with ThreadPoolExecutor(max_workers=2) as pool:
        report = push_claimed_tasks(rt, jobs[0], NOW, pool)  # its clock stood still while it was frozen
    assert set(report.outcomes.values()) <= {"moved-on", "duplicate"}  # the read before the push, or the switch
    assert rt.kibana.pushed == []  # type: ignore[attr-defined]
    assert all(status_of(engine, task.doc_id) == ("idle", 0) for task in jobs[0].tasks)


def test_given_a_give_back_that_failed_then_the_next_retry_cycle_gives_them_back(
    engine: StubEngine, rt: Runtime
) -> None:
    jobs = claimed_by(engine, rt, "dead-worker", 2)
    healthy = rt.store
    rt.store = TaskStore(_Down(), INDEX)  # type: ignore[arg-type]
    assert take_back_orphans(rt, NOW + timedelta(seconds=6)).returned == 0
    rt.store = healthy
    assert take_back_orphans(rt, NOW + timedelta(seconds=11)).returned == 2
    assert all(status_of(engine, task.doc_id) == ("idle", 0) for task in jobs[0].tasks)


def test_a_claim_given_back_but_still_running_when_its_lease_ends_counts_no_attempt(
    engine: StubEngine, rt: Runtime
) -> None:
    # The give-back write lost to a lease renewal (a new version); the lease ran out without a push.
    jobs = claimed_by(engine, rt, "dead-worker", 1)
    task = jobs[0].tasks[0]
    rt.redis.set(keys.push_marker(task.doc_id, task.claim), b"given-back")
    doc = rt.store.get(task.doc_id)
    assert unpushed_claims(rt, [doc]) == {task.doc_id}


def test_the_retry_loop_runs_the_take_back_first(engine: StubEngine, rt: Runtime) -> None:
    jobs = claimed_by(engine, rt, "dead-worker", 2)
    summary = retry_expired_leases(rt, NOW + timedelta(seconds=6))
    assert summary.orphans == 2
    assert all(status_of(engine, task.doc_id) == ("idle", 0) for task in jobs[0].tasks)


class _Down:
    """An engine that does not answer."""

    def __getattr__(self, name: str) -> object:
        from elastic_transport import ConnectionError as TransportConnectionError

        def fail(*_args: object, **_kwargs: object) -> object:
            raise TransportConnectionError("engine down")

        return fail


def test_given_a_job_reported_unsent_that_the_broker_took_after_all_then_it_pushes_nothing(
    engine: StubEngine, rt: Runtime
) -> None:
    # The send raised after Redis applied the LPUSH (defect 3): the claim loop gives the tasks back, and
    # the job is delivered all the same. It must not push tasks now idle with their slots freed.
    jobs = claimed_by(engine, rt, "claimer", 2)
    give_back_unsent(rt, jobs[0])
    assert all(status_of(engine, task.doc_id) == ("idle", 0) for task in jobs[0].tasks)
    with ThreadPoolExecutor(max_workers=2) as pool:
        report = push_claimed_tasks(rt, jobs[0], NOW, pool)
    assert set(report.outcomes.values()) <= {"moved-on", "duplicate"}
    assert rt.kibana.pushed == []  # type: ignore[attr-defined]


def test_a_job_reported_unsent_after_redis_lost_its_data_is_left_to_its_lease_not_given_back(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a claim its job already pushed (Kibana runs it), and then Redis restarted empty: the push
    # marker is gone with the claim marker (found by the simulation: seed 113 of `elastask simulate`).
    task = claimed(engine, rt, "task:pushed", attempts=1)
    rt.redis.set(keys.push_marker(task.doc_id, task.claim), 1)
    rt.redis.flushall()
    # When the publisher reports the job unsent after all.
    give_back_unsent(rt, DispatchJob(OWNER, URL, (task,)))
    # Then nothing proves it was never pushed: it stays claimed (its lease decides), never claimed twice.
    assert engine.docs["task:pushed"]["_source"]["task"]["status"] == "running"


def failed_over(monkeypatch: pytest.MonkeyPatch, rt: Runtime, missed: list[str], *, rebuilt: bool) -> None:
    """Redis failed over to a replica that missed the writes of ``missed``: the promoted server has
    another ``run_id`` (fakeredis has none: patched), and the ledger is rebuilt on it or not yet."""
    monkeypatch.setattr(ledger_module, "_run_id", lambda _info: "promoted-replica")
    rt.redis.delete(*missed)
    if rebuilt:
        rt.ledger.mark_built(NOW)


@pytest.mark.parametrize("rebuilt", [False, True], ids=["before-the-rebuild", "after-the-rebuild"])
def test_a_job_reported_unsent_after_a_failover_lost_its_push_marker_is_left_to_its_lease(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, rebuilt: bool
) -> None:
    # Given a claim cycle's claims (their claim markers hold the ledger's epoch), one of them pushed,
    # then Redis failed over to a replica that had the claim markers but missed the push marker
    # (found by the simulation: `elastask simulate --seed 5000 --seeds 1 --steps 3000`, a second run).
    [job] = claimed_by(engine, rt, "claimer", 1)
    [task] = job.tasks
    pushed = keys.push_marker(task.doc_id, task.claim)
    rt.redis.set(pushed, 1)
    assert rt.redis.exists(keys.claim_marker(task.doc_id, task.claim))
    failed_over(monkeypatch, rt, [pushed], rebuilt=rebuilt)
    # When the publisher reports the job unsent after all.
    give_back_unsent(rt, job)
    # Then the missing push marker proves nothing: the claim stays (its lease decides), never run twice.
    assert status_of(engine, task.doc_id) == ("running", 1)


def test_a_lease_that_ran_out_after_a_failover_lost_its_push_marker_counts_its_attempt(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    [job] = claimed_by(engine, rt, "claimer", 1)
    [task] = job.tasks
    doc = rt.store.get(task.doc_id)
    assert unpushed_claims(rt, [doc]) == {task.doc_id}  # claimed here and never pushed: attempt returned
    pushed = keys.push_marker(task.doc_id, task.claim)
    rt.redis.set(pushed, 1)
    failed_over(monkeypatch, rt, [pushed], rebuilt=False)
    assert unpushed_claims(rt, [doc]) == set()  # not rebuilt: no marker is trusted
    rt.ledger.mark_built(NOW)
    assert unpushed_claims(rt, [doc]) == set()  # rebuilt: the marker is of the old epoch

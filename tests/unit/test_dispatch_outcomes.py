"""What a dispatch job writes for each way a push ends, on a stub engine and fakeredis (the rules, fast).

Given/When/Then in each name. The same paths run on real processes in tests/integration.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest

from elastask import keys
from elastask.core.intervals import format_date
from elastask.core.messages import DispatchJob
from elastask.errors import LedgerError
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.outcomes import DispatchReport
from elastask.loops.dispatch.renewal import renew_waited_leases
from elastask.loops.retry.loop import unpushed_claims
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, answering, claimed, held
from tests.unit.stubs import OWNER, URL, MakeRuntime, StubEngine


def test_given_a_push_kibana_rejects_with_413_then_the_attempt_is_burned_and_the_task_waits_kibanas_delay(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(413))
    job = claimed(engine, rt, "task:big", attempts=1)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    assert report.outcomes == {"task:big": "rejected"}
    task = engine.docs["task:big"]["_source"]["task"]
    assert task["status"] == "idle" and task["attempts"] == 1  # not given back: it would be refused again
    assert task["runAt"] == format_date(NOW + timedelta(seconds=30))  # Kibana's first retry delay
    assert held(rt) == set()
    # The node answered: it stays in rotation however many tasks it rejects.
    assert not rt.redis.hget(keys.health(OWNER), "failures")


def test_given_a_one_shot_task_rejected_at_its_last_attempt_then_it_fails_with_the_reason_kept(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(400))
    job = claimed(engine, rt, "task:bad", attempts=3)
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    assert engine.docs["task:bad"]["_source"]["task"]["status"] == "failed"
    reason = json.loads(rt.redis.hget(keys.FAILED_REASONS, "task:bad"))
    assert "Kibana rejected the push" in reason["reason"] and "answered 400" in reason["reason"]


def test_given_a_recurring_task_rejected_at_its_last_attempt_then_it_moves_to_its_next_interval(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(422))
    job = claimed(engine, rt, "task:rec", attempts=3, schedule={"interval": "1m"})
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    task = engine.docs["task:rec"]["_source"]["task"]
    assert task["status"] == "idle" and task["attempts"] == 0
    assert task["runAt"] == format_date(NOW + timedelta(minutes=1))


def test_given_a_push_refused_by_the_node_then_the_attempt_is_returned_and_the_breaker_counts_it(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(503))
    job = claimed(engine, rt, "task:x", attempts=1)
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    task = engine.docs["task:x"]["_source"]["task"]
    assert task["status"] == "idle" and task["attempts"] == 0
    assert held(rt) == set()
    assert int(rt.redis.hget(keys.health(OWNER), "failures") or 0) == 1


def test_given_a_stale_job_whose_give_back_loses_its_write_then_the_newer_lease_keeps_its_slot(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(503))
    stale = claimed(engine, rt, "task:rec", attempts=1, schedule={"interval": "10s"})
    # Kibana finished that run, the task was claimed again for the same node: a newer version, the same id.
    claimed(engine, rt, "task:rec", attempts=1, schedule={"interval": "10s"})
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, (stale,)), NOW, pool)
    assert engine.docs["task:rec"]["_source"]["task"]["status"] == "running"  # the 409 changed nothing
    assert held(rt) == {"task:rec"}  # and the slot of the newer lease is still held


def test_given_an_expired_job_whose_give_back_loses_its_write_then_the_slot_stays_held(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    stale = claimed(engine, rt, "task:rec", attempts=1)
    claimed(engine, rt, "task:rec", attempts=1)
    late = NOW + timedelta(minutes=6)  # the stale job's lease ran out while it waited
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (stale,)), late, pool)
    assert report.outcomes == {"task:rec": "expired"}
    assert held(rt) == {"task:rec"}


def test_given_a_renewal_slower_than_the_slack_then_the_push_does_not_leave_on_a_lease_too_short(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    # A job that waited past its slack (1 s) renews its lease; the renewal's _bulk takes 1.2 s. The
    # job's clock ran meanwhile, so the renewed lease no longer covers a whole run: no push.
    task = replace(claimed(engine, rt, "task:slow-renewal", attempts=1), slack_ms=1000)
    engine.before_bulk = lambda: time.sleep(1.2)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW + timedelta(seconds=1.5), pool)
    assert rt.kibana.pushed == []  # type: ignore[attr-defined]
    assert report.outcomes["task:slow-renewal"] != "accepted"
    assert engine.docs["task:slow-renewal"]["_source"]["task"]["attempts"] == 0  # never reached Kibana


def test_given_redis_failing_when_a_job_counts_its_failed_pushes_then_the_job_does_not_raise(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its pushes left: a job retried for this would push them again where Redis lost their markers.
    rt = make_runtime(answering(503))
    job = claimed(engine, rt, "task:x", attempts=1)

    def redis_down(*_args: object, **_kwargs: object) -> None:
        raise LedgerError("Redis, recording a node failure: ConnectionError")

    monkeypatch.setattr(rt.nodes, "record_failure", redis_down)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    assert report.outcomes == {"task:x": "refused"}


def test_given_a_renewed_lease_never_pushed_when_it_runs_out_then_its_attempt_comes_back(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    # The job renewed its lease (a new version), then its process died before the push.
    task = claimed(engine, rt, "task:renewed", attempts=1)
    rt.ledger.mark_claims([(task.doc_id, task.seq_no, 60_000)])  # as confirm.lua marks the claim
    [renewed] = renew_waited_leases(rt, OWNER, [task], NOW + timedelta(seconds=6), DispatchReport())
    assert renewed.seq_no != task.seq_no
    assert unpushed_claims(rt, [rt.store.get(task.doc_id)]) == {task.doc_id}


def test_given_a_renewed_lease_that_was_pushed_when_it_runs_out_then_the_attempt_counts(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = claimed(engine, rt, "task:renewed", attempts=1)
    rt.ledger.mark_claims([(task.doc_id, task.seq_no, 60_000)])
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW + timedelta(seconds=6), pool)
    assert report.outcomes == {"task:renewed": "accepted"}
    doc = rt.store.get(task.doc_id)
    assert doc.seq_no != task.seq_no  # renewed before the push
    assert unpushed_claims(rt, [doc]) == set()


def test_given_a_task_that_moved_on_since_its_claim_then_the_job_neither_pushes_it_nor_frees_its_slot(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    # An operator requeued task:moved (--force) and it was claimed again for this node: a newer version.
    # The job still carries the old claim; pushing it would start a second run beside the new one.
    stale = claimed(engine, rt, "task:moved", attempts=1)
    kept = claimed(engine, rt, "task:kept", attempts=1)
    engine.put("task:moved", engine.docs["task:moved"]["_source"])  # written again since the claim
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (stale, kept)), NOW, pool)
    assert report.outcomes == {"task:moved": "moved-on", "task:kept": "accepted"}
    assert [body["id"] for body in rt.kibana.pushed] == ["task:kept"]  # type: ignore[attr-defined]
    assert held(rt) == {"task:moved", "task:kept"}  # the moved-on task's slot is not this job's to free

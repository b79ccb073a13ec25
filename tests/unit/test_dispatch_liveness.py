"""A dispatch job never holds its worker process for a node that does not answer, never pushes past its
lease, and counts a node's failures once per job (fakeredis, stub engine, a scripted Kibana).

Given/When/Then in each name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from elastask import keys
from elastask.core.intervals import format_date, parse_date
from elastask.core.messages import DispatchJob
from elastask.errors import LedgerError
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.outcomes import DispatchReport
from elastask.parts.kibana import PushOutcome, PushResult
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, answering, claimed, held
from tests.unit.stubs import OWNER, URL, Answer, MakeRuntime, StubEngine
from tests.unit.test_claim_write import answered


def test_given_a_hung_node_when_its_job_runs_then_the_job_returns_at_once_and_settles_when_the_node_answers(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    release = threading.Event()

    def hung_then_refused(_body: Mapping[str, Any]) -> PushResult:
        release.wait(10)
        return PushResult(PushOutcome.REFUSED, f"{URL}: answered 503", 503)

    rt = make_runtime(hung_then_refused)
    task = claimed(engine, rt, "task:hung", attempts=1)
    late: list[DispatchReport] = []
    started = time.monotonic()
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW, pool, wait_s=0.05, on_late=late.append)
    assert time.monotonic() - started < 5  # not the node's 10 s: the worker process is free again
    assert report.outcomes == {"task:hung": "late"}
    assert held(rt) == {"task:hung"}  # its lease stands while the push may still arrive
    release.set()
    for _ in range(200):
        if late:
            break
        time.sleep(0.01)
    assert [r.outcomes for r in late] == [{"task:hung": "refused"}]
    doc = engine.docs["task:hung"]["_source"]["task"]
    assert doc["status"] == "idle" and doc["attempts"] == 0  # given back when it answered, attempt returned
    assert held(rt) == set()
    assert int(rt.redis.hget(keys.health(OWNER), "failures") or 0) == 1


def test_given_more_tasks_than_push_threads_and_a_slow_node_then_no_push_leaves_after_its_lease_ran_short(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:

    def slow(_body: Mapping[str, Any]) -> PushResult:
        time.sleep(0.3)
        return PushResult(PushOutcome.ACCEPTED, f"{URL}: 204", 204)

    rt = make_runtime(slow)
    tasks = []
    for i in range(2):
        task = claimed(engine, rt, f"task:{i}", attempts=1)
        # A lease with 0.2 s left beyond what Kibana's run needs: the second push, queued behind the
        # first on the one push thread, would leave after that.
        tasks.append(
            replace(task, retry_at=format_date(NOW + timedelta(milliseconds=1200)), lease_ms=2000, slack_ms=1000)
        )
    with ThreadPoolExecutor(max_workers=1) as one_thread:
        report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, tuple(tasks)), NOW, one_thread, wait_s=5)
    assert report.outcomes == {"task:0": "accepted", "task:1": "expired"}
    assert [body["id"] for body in rt.kibana.pushed] == ["task:0"]  # type: ignore[attr-defined]
    doc = engine.docs["task:1"]["_source"]["task"]
    assert doc["status"] == "idle" and doc["attempts"] == 0  # never reached Kibana: attempt returned
    assert held(rt) == {"task:0"}


def test_given_a_job_whose_every_push_is_refused_then_the_node_counts_one_failure_not_one_per_task(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    rt = make_runtime(answering(503), node_failure_threshold=3)
    tasks = tuple(claimed(engine, rt, f"task:{i}", attempts=1) for i in range(8))
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, tasks), NOW, pool)
    assert int(rt.redis.hget(keys.health(OWNER), "failures") or 0) == 1
    assert rt.nodes.in_rotation([OWNER]) == {OWNER: True}  # one outage-free job short of the threshold


def test_given_redis_fails_after_the_pushes_left_then_the_job_does_not_raise_so_it_is_never_pushed_again(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(answering(503))
    task = claimed(engine, rt, "task:x", attempts=1)

    def failing_release(_owner: str, _ids: object, **_fences: object) -> int:
        raise LedgerError("Redis, releasing slots: connection refused")

    monkeypatch.setattr(rt.ledger, "release", failing_release)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW, pool)
    assert report.outcomes == {"task:x": "refused"}  # its give-back failed: the lease decides
    assert len(rt.kibana.pushed) == 1  # type: ignore[attr-defined]


def test_given_a_job_that_waited_past_its_slack_then_kibana_gets_the_renewed_lease_in_the_body(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = claimed(engine, rt, "task:waited", attempts=1)
    later = NOW + timedelta(seconds=10)  # more than the 5 s slack after the claim
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), later, pool)
    assert report.outcomes == {"task:waited": "accepted"}
    [body] = rt.kibana.pushed  # type: ignore[attr-defined]
    doc = engine.docs["task:waited"]["_source"]["task"]
    assert body["startedAt"] == doc["startedAt"] and body["retryAt"] == doc["retryAt"]
    assert renewed_at(body, later) == parse_date(body["retryAt"]) - timedelta(milliseconds=300_000)


def renewed_at(body: Mapping[str, Any], later: datetime) -> datetime:
    """The renewal's ``startedAt``: the job's clock when it renewed, ``later`` plus the (real) time the job
    took to get there; on a loaded machine that is a few ms, so the exact ``later`` is not asserted."""
    started = parse_date(body["startedAt"])
    assert timedelta(0) <= started - later < timedelta(seconds=2), (started, later)
    return started


def first_bulk(
    engine: StubEngine,
    monkeypatch: pytest.MonkeyPatch,
    instead: Callable[[Callable[..., Answer], dict[str, Any]], Answer],
) -> None:
    """The engine's first ``_bulk`` goes through ``instead`` (given the real one and the call's arguments)."""
    real_bulk, calls = engine.bulk, [0]

    def bulk(**kwargs: Any) -> Answer:
        calls[0] += 1
        return instead(real_bulk, kwargs) if calls[0] == 1 else real_bulk(**kwargs)

    monkeypatch.setattr(engine, "bulk", bulk)


def test_given_a_renewal_the_engine_answers_429_then_the_task_goes_back_at_once_not_after_its_lease(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = claimed(engine, rt, "task:busy", attempts=1)

    def busy(_real_bulk: Callable[..., Answer], kwargs: dict[str, Any]) -> Answer:
        ids = [op["update"]["_id"] for op in kwargs["operations"][::2]]  # every item rejected by a busy engine
        return Answer(items=[{"update": {"_id": i, "status": 429, "error": {"reason": "busy"}}} for i in ids])

    first_bulk(engine, monkeypatch, busy)  # the renewal
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW + timedelta(seconds=10), pool)
    assert report.outcomes == {"task:busy": "expired"} and rt.kibana.pushed == []  # type: ignore[attr-defined]
    doc = engine.docs["task:busy"]["_source"]["task"]
    assert doc["status"] == "idle" and doc["attempts"] == 0  # given back, attempt returned
    assert held(rt) == set()  # its slot freed now, not at the end of its lease


def test_given_a_renewal_that_applied_but_answered_503_then_the_task_is_pushed_under_the_renewed_lease(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the simulation ("write applied, answered 503"): the job failed, its renewal stood in the
    # engine with no claim marker under its version, and the lease ran out counting an attempt unpushed.
    task = claimed(engine, rt, "task:renewed", attempts=1)

    def applied_then_503(real_bulk: Callable[..., Answer], kwargs: dict[str, Any]) -> Answer:
        real_bulk(**kwargs)
        raise answered(503)

    first_bulk(engine, monkeypatch, applied_then_503)  # the renewal
    later = NOW + timedelta(seconds=10)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), later, pool)
    assert report.outcomes == {"task:renewed": "accepted"}
    [body] = rt.kibana.pushed  # type: ignore[attr-defined]
    renewed = engine.docs["task:renewed"]
    assert body["startedAt"] == renewed["_source"]["task"]["startedAt"]
    renewed_at(body, later)
    assert rt.redis.get(keys.claim_marker("task:renewed", renewed["_seq_no"])) is not None  # the renewal is ours

"""Tasks claimed ahead of their runAt: one job per node and cycle, each task pushed at its runAt by the
job's process (never before it), settled when it answers; a pause since the job started still holds
it back (fakeredis, stub engine, a scripted Kibana). Given/When/Then in each name."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

from elastask import keys
from elastask.core.intervals import format_date
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.outcomes import DispatchReport
from elastask.ops import pausing
from elastask.parts.kibana import PushOutcome, PushResult
from elastask.parts.push_schedule import PushSchedule
from elastask.runtime import PUSH_PARALLELISM, Runtime
from tests.unit.helpers import NOW, claimed, held
from tests.unit.stubs import OWNER, URL, MakeRuntime, StubEngine


def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    until = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < until:
        time.sleep(0.005)
    assert condition()


def test_given_actions_out_of_order_then_each_runs_in_deadline_order_never_before_its_deadline() -> None:
    schedule, ran = PushSchedule(), []
    start = time.monotonic()
    for delay in (0.12, 0.03, 0.08, 0.0):
        schedule.at(start + delay, lambda delay=delay: ran.append((delay, time.monotonic() - start)))
    assert schedule.drain(5.0) == 0
    assert [delay for delay, _ in ran] == [0.0, 0.03, 0.08, 0.12]
    assert all(at >= delay for delay, at in ran)


def test_given_a_failing_action_then_the_next_still_runs_and_drain_reports_what_did_not() -> None:
    schedule, ran = PushSchedule(), []

    def fails() -> None:
        raise RuntimeError("boom")

    schedule.at(time.monotonic(), fails)
    schedule.at(time.monotonic() + 0.01, lambda: ran.append("after"))
    schedule.at(time.monotonic() + 30, lambda: ran.append("much later"))
    assert schedule.drain(0.5) == 1  # the one 30 s away
    assert ran == ["after"]


def ahead(engine: StubEngine, rt: Runtime, doc_id: str, by_ms: int) -> ClaimedTask:
    """A task claimed ``by_ms`` ahead of its runAt (NOW is when its job runs)."""
    task = claimed(engine, rt, doc_id, attempts=1)
    return replace(task, body={**task.body, "runAt": format_date(NOW + timedelta(milliseconds=by_ms))})


def test_given_a_job_with_tasks_due_and_ahead_then_the_due_one_is_pushed_at_once_and_the_others_at_their_run_at(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    pushed: dict[str, float] = {}

    def accept(body: Mapping[str, Any]) -> PushResult:
        pushed[str(body["id"])] = time.monotonic()
        return PushResult(PushOutcome.ACCEPTED, f"{URL}: 204", 204)

    rt = make_runtime(accept)
    due = claimed(engine, rt, "task:due", attempts=1)
    soon, later = ahead(engine, rt, "task:soon", 90), ahead(engine, rt, "task:later", 240)
    settled: list[DispatchReport] = []
    started = time.monotonic()
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (due, soon, later)), NOW, pool, on_late=settled.append)
    returned = time.monotonic() - started
    assert report.outcomes == {"task:due": "accepted", "task:soon": "scheduled", "task:later": "scheduled"}
    assert returned < 0.09  # the job does not wait for the tasks ahead: the process is free
    # No push marker before the push: a process that dies first leaves the retry loop a task never pushed.
    assert rt.redis.exists(keys.push_marker("task:due", due.claim))
    assert not rt.redis.exists(keys.push_marker("task:later", later.claim))
    wait_until(lambda: len(settled) == 2)
    assert rt.redis.exists(keys.push_marker("task:later", later.claim))
    assert pushed["task:soon"] - started >= 0.09 and pushed["task:later"] - started >= 0.24  # never before runAt
    assert [r.outcomes for r in settled] == [{"task:soon": "accepted"}, {"task:later": "accepted"}]
    assert all(0 <= drift < 0.025 + 1.0 for r in settled for drift in r.drifts_s)  # measured from runAt
    assert held(rt) == {"task:due", "task:soon", "task:later"}  # accepted: the leases stand for Kibana's outcome


def test_given_tasks_in_one_25ms_step_then_they_are_pushed_together_and_settled_as_one(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    tasks = tuple(ahead(engine, rt, f"task:{i}", 61 + i * 5) for i in range(3))  # all in the step ending at 75 ms
    settled: list[DispatchReport] = []
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, tasks), NOW, pool, on_late=settled.append)
    wait_until(lambda: len(settled) == 1)
    time.sleep(0.05)
    assert [sorted(r.outcomes) for r in settled] == [["task:0", "task:1", "task:2"]]


def test_given_a_pause_after_the_job_started_then_a_task_scheduled_ahead_is_given_back_not_pushed(
    engine: StubEngine, make_runtime: MakeRuntime, pool: ThreadPoolExecutor
) -> None:
    pushed: list[str] = []
    gate = threading.Event()

    def accept(body: Mapping[str, Any]) -> PushResult:
        pushed.append(str(body["id"]))
        return PushResult(PushOutcome.ACCEPTED, f"{URL}: 204", 204)

    rt = make_runtime(accept)
    task = ahead(engine, rt, "task:paused", 250)  # later than a read of the pauses is reused
    settled: list[DispatchReport] = []
    report = push_claimed_tasks(
        rt, DispatchJob(OWNER, URL, (task,)), NOW, pool, on_late=lambda r: (settled.append(r), gate.set())
    )
    assert report.outcomes == {"task:paused": "scheduled"}
    pausing.pause(rt, ["type:sample"])
    assert gate.wait(5)
    assert pushed == [] and settled[0].outcomes == {"task:paused": "paused"}
    doc = engine.docs["task:paused"]["_source"]["task"]
    assert doc["status"] == "idle" and doc["attempts"] == 0  # never reached Kibana: attempt returned
    assert held(rt) == set()


def test_given_a_warm_shutdown_then_the_process_pushes_what_it_scheduled_before_it_exits(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = ahead(engine, rt, "task:last", 200)
    settled: list[DispatchReport] = []
    push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW, pool, on_late=settled.append)
    assert rt.push_schedule.pending() == 1
    assert rt.push_schedule.drain(2.0) == 0  # what the worker_process_shutdown hook waits for
    wait_until(lambda: bool(settled))
    assert settled[0].outcomes == {"task:last": "accepted"}


def test_a_scheduled_step_reuses_a_read_of_the_pauses_only_under_a_tenth_of_a_second_old(rt: Runtime) -> None:
    from elastask.loops.pauses.read import read_pauses, recent_pauses

    assert not read_pauses(rt, NOW)
    pausing.pause(rt, ["all"])
    assert not recent_pauses(rt, NOW)  # the read just now stands in
    assert recent_pauses(rt, NOW, max_age_s=0.0)  # an older one does not
    time.sleep(0.11)
    assert recent_pauses(rt, NOW)


def test_a_process_that_stops_waits_for_the_pushes_queued_on_its_nodes_threads(rt: Runtime) -> None:
    done: list[int] = []
    pool = rt.pushers("kibana:a")
    # More pushes than threads: the last ones wait in the queue, their push markers already set.
    for i in range(PUSH_PARALLELISM + 4):
        pool.submit(lambda i=i: (time.sleep(0.2), done.append(i)))
    assert rt.drain_pushes(5.0) == 0
    assert len(done) == PUSH_PARALLELISM + 4
    pool.submit(time.sleep, 2)
    assert rt.drain_pushes(0.1) == 1  # bounded: a hung node's pushes are left to their leases

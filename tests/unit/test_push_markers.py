"""The push switch when Redis's reply to the push-marker write is lost after the write applied: the job's
own markers are found its own (a second try in place, or the Celery retry that inherits them), so a
claim is neither left marked and never pushed (its lease would count an attempt Kibana never saw) nor
pushed twice by a redelivered job.

Found by the simulation (seeds 20000 and 30005, 0.8.4): a task pushed with attempts 2 after 0 pushes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from elastask import keys
from elastask.core.documents import TaskDocument, parse_hit
from elastask.core.messages import DispatchJob
from elastask.entry.celeryapp import process_of
from elastask.errors import PushMarkersUnknown, StoreError
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.push_markers import PUSHED, pushed_unanswered, pushed_value
from elastask.loops.retry.loop import unpushed_claims
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, claimed
from tests.unit.stubs import OWNER, URL, StubEngine


def losing_marker_replies(rt: Runtime, times: int) -> Callable[[], int]:
    """The next ``times`` push-marker scripts apply, then their reply is lost (the connection drops)."""
    execute = rt.redis.execute_command
    lost = 0

    def execute_command(*args: Any, **options: Any) -> Any:
        nonlocal lost
        answer = execute(*args, **options)
        marks = args[0] in ("EVALSHA", "EVAL") and any(str(a).startswith("elastask:pushed:") for a in args)
        if marks and lost < times:
            lost += 1
            raise redis.ConnectionError("connection lost after the command applied")
        return answer

    rt.redis.execute_command = execute_command  # type: ignore[method-assign]
    return lambda: lost


def pushed_ids(rt: Runtime) -> list[str]:
    return [str(body["id"]) for body in rt.kibana.pushed]  # type: ignore[attr-defined]


def test_given_the_reply_to_a_push_marker_write_lost_then_the_job_tries_once_more_and_pushes_the_task(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = claimed(engine, rt, "task:lost-reply", attempts=1)
    lost = losing_marker_replies(rt, times=1)
    report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (task,)), NOW, pool)
    assert lost() == 1
    assert report.outcomes == {"task:lost-reply": "accepted"}  # its own marker, not a "redelivered job"'s
    assert pushed_ids(rt) == ["task:lost-reply"]


def test_given_a_job_failed_after_its_push_markers_applied_when_it_is_retried_then_the_retry_pushes_its_tasks(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = claimed(engine, rt, "task:retried", attempts=1)
    job = DispatchJob(OWNER, URL, (task,))
    losing_marker_replies(rt, times=2)
    with pytest.raises(PushMarkersUnknown, match="setting push markers") as failed:
        push_claimed_tasks(rt, job, NOW, pool, token="first")
    assert failed.value.token == "first"
    assert pushed_ids(rt) == []
    marker = rt.redis.get(keys.push_marker(task.doc_id, task.claim))
    assert marker == pushed_value("first")  # applied: to anyone else this claim was pushed
    assert unpushed_claims(rt, [_doc(engine, task.doc_id)]) == set()
    report = push_claimed_tasks(rt, job.retried_after(failed.value.token), NOW, pool, token="second")
    assert report.outcomes == {"task:retried": "accepted"} and pushed_ids(rt) == ["task:retried"]
    assert rt.redis.get(keys.push_marker(task.doc_id, task.claim)) == b"answered"


def test_given_a_job_redelivered_after_its_first_delivery_marked_a_push_then_it_is_not_pushed_again(
    engine: StubEngine, rt: Runtime, pool: ThreadPoolExecutor
) -> None:
    task = claimed(engine, rt, "task:redelivered", attempts=1)
    first = DispatchJob(OWNER, URL, (task,), marked_by=("earlier",))
    # The first delivery marked its push under its own token, then its worker died before Kibana answered.
    rt.redis.set(keys.push_marker(task.doc_id, task.claim), pushed_value("died-mid-push"))
    report = push_claimed_tasks(rt, first, NOW, pool, token="redelivery")
    assert report.outcomes == {"task:redelivered": "duplicate"} and pushed_ids(rt) == []


@pytest.mark.parametrize("marker", [PUSHED, pushed_value("0123abcd")])
def test_a_push_marker_of_this_release_or_the_last_one_reads_as_pushed_and_unanswered(marker: bytes) -> None:
    assert pushed_unanswered(marker)
    assert not pushed_unanswered(None) and not pushed_unanswered(b"answered") and not pushed_unanswered(b"given-back")


def test_a_retried_job_carries_the_tokens_of_its_failed_executions_through_the_broker() -> None:
    job = DispatchJob(OWNER, URL, ()).retried_after("a").retried_after("b")
    assert DispatchJob.from_dict(job.as_dict()).marked_by == ("a", "b")
    previous_release = {"owner_id": OWNER, "node_url": URL, "tasks": [], "not_before": None}
    assert DispatchJob.from_dict(previous_release).marked_by == ()


def _doc(engine: StubEngine, doc_id: str) -> TaskDocument:
    stored = engine.docs[doc_id]
    return parse_hit({"_id": doc_id, "_seq_no": stored["_seq_no"], "_primary_term": 1, "_source": stored["_source"]})


def test_given_a_dispatch_job_failed_after_its_push_markers_applied_then_its_celery_retry_pushes_its_tasks(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elastask.entry import tasks  # the Celery task, applied eagerly: its retry runs at once, in this process

    monkeypatch.setattr(rt, "now", lambda: NOW)  # Redis's clock, as the claim saw it

    task = claimed(engine, rt, "task:celery-retry", attempts=1)
    losing_marker_replies(rt, times=2)  # the first execution's write and its second try: it fails
    process = process_of(tasks.app)
    saved, process.runtime = process.runtime, (os.getpid(), rt)
    try:
        result = tasks.dispatch.apply(args=[DispatchJob(OWNER, URL, (task,)).as_dict()])
    finally:
        process.runtime = saved
    assert result.get() == {"accepted": 1}
    assert pushed_ids(rt) == ["task:celery-retry"]


def test_given_a_dispatch_job_failed_before_its_push_markers_then_its_celery_retry_inherits_no_token(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elastask.entry import tasks

    task = claimed(engine, rt, "task:read-failed", attempts=1)
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(rt, "now", lambda: NOW)

    def retry(args: list[dict[str, Any]], **_options: Any) -> Exception:  # Celery's: the message it sends
        messages.extend(args)
        return Exception("retry")

    monkeypatch.setattr(tasks.dispatch, "retry", retry)
    monkeypatch.setattr(rt.store, "mget_sources", _failing_read)
    process = process_of(tasks.app)
    saved, process.runtime = process.runtime, (os.getpid(), rt)
    try:
        with pytest.raises(Exception, match="retry"):
            tasks.dispatch.run(DispatchJob(OWNER, URL, (task,)).as_dict())
    finally:
        process.runtime = saved
    assert [DispatchJob.from_dict(m).marked_by for m in messages] == [()]  # no markers were set: none to inherit


def _failing_read(*_args: Any, **_kwargs: Any) -> Any:
    raise StoreError("the engine did not answer (simulated)")

"""A dispatch job that failed before its pushes left (the engine or Redis down) is retried every second
while its leases stand, then left to the retry loop.

Chaos seed 5402 (0.8.6): a claim cycle claimed 37 tasks just as the engine went down for 7.6 s; Celery
retried their jobs with a countdown that doubled at each failure (1, 2, 4, 8 s), so when the engine came
back they still waited the rest of 8 s and the tasks ran only when their leases ran out (a 5.0 s stall;
with Kibana's 5-minute timeout, up to the countdown's 30 s cap).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from elastask.core.messages import DispatchJob
from elastask.entry.celeryapp import process_of
from elastask.errors import StoreError
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, claimed
from tests.unit.stubs import OWNER, URL, StubEngine


class Retried(Exception):
    """What Celery's ``retry`` raises, with the options it was given."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__("retry")
        self.options = options


@pytest.fixture
def dispatching(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The dispatch task on this runtime, its engine reads failing, its retries caught."""
    from elastask.entry import tasks

    def retry(**options: Any) -> Exception:
        return Retried(options)

    def failing_read(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreError("the search engine could not be reached (simulated)")

    monkeypatch.setattr(tasks.dispatch, "retry", retry)
    for call in ("mget_sources", "bulk_update_tasks", "bulk_update_versions"):  # every engine call fails
        monkeypatch.setattr(rt.store, call, failing_read)
    process = process_of(tasks.app)
    saved, process.runtime = process.runtime, (os.getpid(), rt)
    try:
        yield tasks.dispatch
    finally:
        process.runtime = saved


def run_at(dispatch: Any, rt: Runtime, monkeypatch: pytest.MonkeyPatch, job: DispatchJob, now: datetime) -> Any:
    monkeypatch.setattr(rt, "now", lambda: now)
    return dispatch.run(job.as_dict())


@pytest.mark.parametrize("failures", [0, 3, 12])
def test_given_the_engine_down_then_a_dispatch_job_is_retried_every_second_while_its_leases_stand(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, dispatching: Any, failures: int
) -> None:
    job = DispatchJob(OWNER, URL, (claimed(engine, rt, "task:waiting-for-the-engine", attempts=1),))
    monkeypatch.setattr(dispatching.request, "retries", failures, raising=False)
    with pytest.raises(Retried) as retried:
        run_at(dispatching, rt, monkeypatch, job, NOW + timedelta(seconds=failures))
    assert retried.value.options["countdown"] == 1  # not 2**failures: the outage may end any moment
    assert DispatchJob.from_dict(retried.value.options["args"][0]).tasks == job.tasks


def test_given_its_leases_ran_out_then_a_failing_dispatch_job_is_left_to_the_retry_loop(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, dispatching: Any
) -> None:
    task = claimed(engine, rt, "task:lease-ran-out", attempts=1)  # leased for 5 minutes from NOW
    job = DispatchJob(OWNER, URL, (task,))
    assert run_at(dispatching, rt, monkeypatch, job, NOW + timedelta(minutes=5, seconds=2)) == {"unsent": 1}
    # Just after they ran out it is tried once more: its tasks given back by itself, if the engine is back.
    with pytest.raises(Retried):
        run_at(dispatching, rt, monkeypatch, job, NOW + timedelta(minutes=5, milliseconds=500))


def test_a_dispatch_job_knows_when_its_last_lease_runs_out(engine: StubEngine, rt: Runtime) -> None:
    task = claimed(engine, rt, "task:a", attempts=1)
    assert DispatchJob(OWNER, URL, (task,)).leases_end() == NOW + timedelta(minutes=5)
    assert DispatchJob(OWNER, URL, ()).leases_end() is None

"""``elastask tasks requeue --force`` of a running task: its claim's pushes are switched off first."""

from __future__ import annotations

from datetime import timedelta

from elastask import keys
from elastask.loops.dispatch.push_markers import GIVEN_BACK
from elastask.ops import admin
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, claimed, held
from tests.unit.stubs import StubEngine


def test_a_forced_requeue_of_a_claim_never_pushed_switches_its_push_off_and_frees_its_slot(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a claim whose dispatch job has not pushed it yet (queued behind others).
    task = claimed(engine, rt, "task:stuck", attempts=1)
    # When an operator requeues it with --force.
    admin.requeue(rt, "task:stuck", NOW + timedelta(seconds=5), force=True)
    # Then the job, whenever it runs, pushes nothing (the one switch), and the slot is free for the next claim.
    assert rt.redis.get(keys.push_marker(task.doc_id, task.claim)) == GIVEN_BACK
    assert held(rt) == set()
    assert engine.docs["task:stuck"]["_source"]["task"]["status"] == "idle"


def test_a_forced_requeue_of_a_pushed_claim_keeps_its_slot_until_kibana_is_done(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a claim already pushed (Kibana may be running it).
    task = claimed(engine, rt, "task:running", attempts=1)
    rt.redis.set(keys.push_marker(task.doc_id, task.claim), 1)
    # When it is requeued with --force: the operator accepts a second run, but not one past the cap.
    admin.requeue(rt, "task:running", NOW + timedelta(seconds=5), force=True)
    assert held(rt) == {"task:running"}

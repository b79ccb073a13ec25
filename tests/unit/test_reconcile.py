"""Reconciling the ledger with the engine: which slots the engine's real-time reads free (stub engine, fakeredis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from elastask.core.intervals import format_date
from elastask.loops.ledger_sync import reconcile_ledger
from elastask.runtime import Runtime
from tests.unit.stubs import StubEngine, stub_runtime

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
OWNER = "kibana:a"


def claimed(rt: Runtime, doc_id: str) -> None:
    """A slot reserved and its claim written (confirmed), as a finished claim cycle leaves it."""
    rt.ledger.reserve(OWNER, 20, [(doc_id, 2, NOW + timedelta(minutes=5))], NOW)
    rt.ledger.confirm(OWNER, [doc_id])


def running(engine: StubEngine, doc_id: str) -> None:
    engine.put(doc_id, {"type": "task", "task": {"status": "running", "ownerId": OWNER, "attempts": 1}})


def test_given_an_mget_error_item_for_a_leased_task_then_its_slot_is_kept_not_freed() -> None:
    engine = StubEngine()
    rt = stub_runtime(engine)
    for doc_id in ("task:on-a-relocating-shard", "task:done"):
        claimed(rt, doc_id)
    running(engine, "task:on-a-relocating-shard")
    engine.mget_errors.add("task:on-a-relocating-shard")  # the shard is unavailable: unknown, not deleted
    # task:done is gone from the engine: Kibana deleted the finished one-shot task.
    held, released = reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    assert held == {"task:on-a-relocating-shard"}
    assert released == 1
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {"task:on-a-relocating-shard"}


def test_given_a_recurring_task_kibana_rescheduled_then_its_slot_is_freed() -> None:
    engine = StubEngine()
    rt = stub_runtime(engine)
    claimed(rt, "task:rec")
    engine.put(
        "task:rec",
        {"type": "task", "task": {"status": "idle", "ownerId": OWNER, "attempts": 0, "runAt": format_date(NOW)}},
    )
    held, released = reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    assert held == set() and released == 1


def test_given_a_reservation_whose_claim_is_not_written_yet_then_reconcile_keeps_it_though_it_looks_idle() -> None:
    # Another claim cycle reserved the slot and is still writing its claim: the engine shows the
    # task idle with attempts 0, which is also what a finished recurring run looks like.
    engine = StubEngine()
    rt = stub_runtime(engine)
    rt.ledger.reserve(OWNER, 20, [("task:being-claimed", 2, NOW + timedelta(minutes=5))], NOW)
    engine.put("task:being-claimed", {"type": "task", "task": {"status": "idle", "attempts": 0}})
    view = rt.ledger.view([OWNER])
    held, released = reconcile_ledger(rt, view, 65_000)
    assert held == {"task:being-claimed"} and released == 0
    # A cycle that died before writing: after the lock's TTL and the engine timeout (65 s by default;
    # here a minute has passed on Redis's clock) the engine decides again.
    later = replace(view, now_ms=view.now_ms + 66_000)
    held, released = reconcile_ledger(rt, later, 65_000)
    assert held == set() and released == 1


def test_finished_tasks_stay_out_of_the_search_a_moment_and_a_rescheduled_one_no_later_than_its_next_run() -> None:
    # Given a deleted one-shot task and a recurring one Kibana rescheduled 300 ms ahead.
    engine = StubEngine()
    rt = stub_runtime(engine)
    for doc_id in ("task:once", "task:every-second"):
        claimed(rt, doc_id)
    now_ms = rt.ledger.now_ms()
    next_run = datetime.fromtimestamp((now_ms + 300) / 1000, UTC)
    engine.put(
        "task:every-second",
        {"type": "task", "task": {"status": "idle", "attempts": 0, "ownerId": None, "runAt": format_date(next_run)}},
    )
    # When reconcile frees both slots.
    reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    # Then both are left out of the due search now; the recurring one only until its next runAt.
    assert rt.ledger.view([OWNER]).recently_finished == frozenset({"task:once", "task:every-second"})
    scores = dict(rt.redis.zrange("elastask:ledger:finished", 0, -1, withscores=True))
    assert scores[b"task:every-second"] <= now_ms + 300 < scores[b"task:once"]

"""Reconciling the ledger with the engine: which slots the engine's real-time reads free (stub engine, fakeredis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from elastask.dispatcher.claim import reconcile_ledger
from elastask.intervals import format_date
from tests.unit.stubs import StubEngine, stub_runtime

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
OWNER = "kibana:a"


def running(engine: StubEngine, doc_id: str) -> None:
    engine.put(doc_id, {"type": "task", "task": {"status": "running", "ownerId": OWNER, "attempts": 1}})


def test_given_an_mget_error_item_for_a_leased_task_then_its_slot_is_kept_not_freed() -> None:
    engine = StubEngine()
    rt = stub_runtime(engine)
    for doc_id in ("task:on-a-relocating-shard", "task:done"):
        rt.ledger.reserve(OWNER, 20, [(doc_id, 2, NOW + timedelta(minutes=5))], NOW)
    running(engine, "task:on-a-relocating-shard")
    engine.mget_errors.add("task:on-a-relocating-shard")  # the shard is unavailable: unknown, not deleted
    # task:done is gone from the engine: Kibana deleted the finished one-shot task.
    held, released = reconcile_ledger(rt, rt.ledger.leases([OWNER]), NOW)
    assert held == {"task:on-a-relocating-shard"}
    assert released == 1
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {"task:on-a-relocating-shard"}


def test_given_a_recurring_task_kibana_rescheduled_then_its_slot_is_freed() -> None:
    engine = StubEngine()
    rt = stub_runtime(engine)
    rt.ledger.reserve(OWNER, 20, [("task:rec", 2, NOW + timedelta(minutes=5))], NOW)
    engine.put(
        "task:rec",
        {"type": "task", "task": {"status": "idle", "ownerId": OWNER, "attempts": 0, "runAt": format_date(NOW)}},
    )
    held, released = reconcile_ledger(rt, rt.ledger.leases([OWNER]), NOW)
    assert held == set() and released == 1

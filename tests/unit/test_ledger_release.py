"""The ledger's multi-node release (one Lua call) on fakeredis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis

from elastask.parts.ledger import Ledger

NOW = datetime.now(UTC)


def test_release_many_frees_held_slots_on_every_node_in_one_call_and_counts_only_held_ones() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    until = NOW + timedelta(minutes=5)
    assert ledger.reserve("kibana:a", 20, [("a1", 2, until), ("a2", 2, until)], NOW) == {"a1", "a2"}
    assert ledger.reserve("kibana:b", 20, [("b1", 10, until)], NOW) == {"b1"}
    freed = ledger.release_many({"kibana:a": ["a1", "never-held"], "kibana:b": ["b1"], "kibana:c": []})
    assert freed == 2
    assert ledger.used_units(["kibana:a", "kibana:b"]) == {"kibana:a": 2, "kibana:b": 0}
    assert {lease.task_id for lease in ledger.leases(["kibana:a", "kibana:b"])} == {"a2"}
    assert ledger.release_many({}) == 0


def test_finished_tasks_are_remembered_for_a_while_in_the_lease_view() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    now_ms = ledger.now_ms()
    ledger.mark_finished({"t1": now_ms + 1500, "old": now_ms - 1})
    assert ledger.view(["kibana:a"]).recently_finished == frozenset({"t1"})

"""The claim cycle's rules on a stub engine and fakeredis: interleavings no timing could reproduce reliably.

The same invariants are proven on real processes (several workers and beats racing) in tests/integration.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from elastask import keys
from elastask.core.documents import new_task
from elastask.core.messages import DispatchJob
from elastask.loops.claim.fresh_hits import read_limit
from elastask.loops.claim.loop import claim_available_tasks
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, running, seeded
from tests.unit.stubs import OWNER, MakeRuntime, StubEngine


def running_on_node(engine: StubEngine) -> list[str]:
    return sorted(running(engine))


def test_given_a_cycle_that_outlived_its_lock_when_the_next_cycle_runs_then_the_cap_still_holds(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given a node with room for one task, and three due. Cycle A reserves a slot, then its process
    # stalls in its claim write past the lock's TTL (a pause stops the renewal too); cycle B takes the
    # lock and reconciles while A's write is still in flight.
    seeded(engine, 3)
    rt = make_runtime(kibana_capacity=1)
    sent: list[DispatchJob] = []

    def cycle_b_runs_while_a_is_stalled() -> None:
        rt.redis.delete(keys.CLAIM_LOCK)  # A's lock ran out
        second = claim_available_tasks(rt, NOW + timedelta(seconds=31), sent.append, sessions=False)
        assert second.ran and second.claimed == 0, second  # A's reservation is not B's to free

    engine.before_bulk = cycle_b_runs_while_a_is_stalled
    claim_available_tasks(rt, NOW, sent.append, sessions=False)
    # Then: one task running on the node, never two; and only one dispatch job.
    assert len(running_on_node(engine)) == 1
    assert sum(len(batch.tasks) for batch in sent) == 1


def test_given_a_cycle_that_lost_its_lock_before_writing_then_it_abandons_its_claims(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(engine, 2)
    sent: list[DispatchJob] = []
    real_reserve = rt.ledger.reserve

    def reserve_then_lose_the_lock(*args: object, **kwargs: object) -> set[str]:
        taken = real_reserve(*args, **kwargs)  # type: ignore[arg-type]
        rt.redis.set(keys.CLAIM_LOCK, "another holder")
        return taken

    monkeypatch.setattr(rt.ledger, "reserve", reserve_then_lose_the_lock)
    summary = claim_available_tasks(rt, NOW, sent.append)
    assert summary.claimed == 0 and sent == [] and running_on_node(engine) == []
    assert rt.ledger.leases([OWNER]) == []  # the reservations were given back


def test_given_due_tasks_then_a_cycle_claims_them_and_its_reservations_are_confirmed(
    engine: StubEngine, rt: Runtime
) -> None:
    seeded(engine, 3)
    sent: list[DispatchJob] = []
    summary = claim_available_tasks(rt, NOW, sent.append)
    assert summary.claimed == 3 and running_on_node(engine) == ["task:t0", "task:t1", "task:t2"]
    assert all(lease.pending_since_ms is None for lease in rt.ledger.leases([OWNER]))


def test_a_quiet_cycle_rests_and_the_next_beat_tick_costs_no_engine_call(
    engine: StubEngine, make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(idle_polling_interval_ms=3000)
    first = claim_available_tasks(rt, NOW, lambda _b: None)
    assert first.ran and first.found == 0
    monkeypatch.setattr(engine, "search", None)  # any engine call now would fail
    second = claim_available_tasks(rt, NOW + timedelta(milliseconds=500), lambda _b: None)
    assert not second.ran and second.resting


def test_a_cycle_with_no_node_in_rotation_does_not_rest_it_could_not_look(rt: Runtime) -> None:
    [node] = rt.nodes.resolve()[0]
    rt.nodes.record_failure(node, "connection refused", hard=True)  # out of rotation
    first = claim_available_tasks(rt, NOW, lambda _b: None)
    assert first.ran and first.nodes == 0
    assert not claim_available_tasks(rt, NOW, lambda _b: None).resting


def test_a_cycle_whose_search_came_back_full_reports_a_backlog_even_when_it_claimed_every_hit(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seeded(engine, 5)
    rt = make_runtime(kibana_capacity=1)  # room for one: the search asks for one
    summary = claim_available_tasks(rt, NOW, lambda _b: None, sessions=False)
    assert summary.claimed == 1 and summary.waiting == 1 and summary.backlog  # 4 more are due


def test_given_dispatch_jobs_can_no_longer_be_sent_then_the_cycle_writes_no_claim(
    engine: StubEngine, rt: Runtime
) -> None:
    seeded(engine, 2)
    summary = claim_available_tasks(rt, NOW, lambda _b: None, sending=lambda: False)
    assert summary.claimed == 0 and running_on_node(engine) == []
    assert rt.ledger.leases([OWNER]) == []  # the reservations were given back


def test_a_task_whose_own_cost_is_more_than_any_node_holds_is_failed_with_the_reason(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given nodes of capacity 4 (8 units), one task whose own cost is extralarge (10 units), and two others.
    seeded(engine, 2)
    big = new_task("big", "sample", now=NOW - timedelta(seconds=20))
    engine.put(big.id, {**big.to_source(), "task": {**big.to_source()["task"], "cost": "extralarge"}})
    rt = make_runtime(kibana_capacity=4)
    sent: list[DispatchJob] = []
    summary = claim_available_tasks(rt, NOW, sent.append, sessions=False)
    # Then it is failed, not left idle for ever, and the others are claimed behind it.
    assert engine.docs["task:big"]["_source"]["task"]["status"] == "failed"
    assert summary.too_costly == 1 and running_on_node(engine) == ["task:t0", "task:t1"]
    reasons = rt.redis.hgetall(keys.FAILED_REASONS)
    assert b"task:big" in reasons and b"extralarge" in reasons[b"task:big"]
    assert b"kibana_capacity" in reasons[b"task:big"]


def test_the_real_time_read_takes_only_the_hits_whose_types_fill_the_room() -> None:
    # 40 due hits of a 2-unit type (the search's doc values name it), 20 free units, a 1-unit type known:
    # the room takes 10; with a quarter more for stale ones (25 units: 13 hits) and 2 hits, 15 are read,
    # not the 27 that "every hit the cheapest type" would read (as before 0.8.4).
    hits = [{"_id": f"task:{n}", "fields": {"task.taskType": ["normal"]}} for n in range(40)]
    costs = {"normal": 2, "tiny": 1}
    assert read_limit(hits, set(), 20, costs.__getitem__, 1) == 15
    # Leased hits are passed over, not counted; a hit whose type is not known counts as the cheapest.
    assert read_limit(hits, {"task:0", "task:1"}, 20, costs.__getitem__, 1) == 15
    unknown = [{"_id": f"task:{n}"} for n in range(40)]
    assert read_limit(unknown, set(), 20, costs.__getitem__, 1) == 27
    # A hit carrying its source (a session's search after a claim) is costed by its source's type.
    sourced = [{"_id": f"task:{n}", "_source": {"task": {"taskType": "normal"}}} for n in range(40)]
    assert read_limit(sourced, set(), 20, costs.__getitem__, 1) == 15
    assert read_limit(hits, set(), 0, costs.__getitem__, 1) == 2

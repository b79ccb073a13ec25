"""How a claim write ends leaves the ledger true before the cycle ends (stub engine, fakeredis).

Given/When/Then in each name. A rejected ``_bulk`` frees its reservations at once; one without an
answer is read back; a claim written while Redis lost the ledger never pushes a node over its cap;
releases carry the reserving cycle's token.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import elastic_transport
import elasticsearch
import pytest

from elastask import keys
from elastask.core.messages import DispatchJob
from elastask.errors import LedgerError, StoreError
from elastask.loops.claim.loop import claim_available_tasks
from elastask.parts.ledger import Ledger
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, seeded
from tests.unit.stubs import OWNER, Answer, MakeRuntime, StubEngine


def answered(status: int) -> elasticsearch.ApiError:
    meta = elastic_transport.ApiResponseMeta(
        status, "1.1", elastic_transport.HttpHeaders(), 0.01, elastic_transport.NodeConfig("http", "engine", 9200)
    )
    return elasticsearch.ApiError("rejected", meta, {"error": {"type": "es_rejected_execution_exception"}})


def statuses(engine: StubEngine) -> list[str]:
    return sorted(str(doc["_source"]["task"]["status"]) for doc in engine.docs.values())


def test_given_the_engine_rejects_the_claim_bulk_with_429_then_its_reservations_are_freed_at_once(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(engine, 3)
    real_bulk = engine.bulk

    def rejected(**_kwargs: Any) -> Answer:
        raise answered(429)

    monkeypatch.setattr(engine, "bulk", rejected)
    with pytest.raises(StoreError):
        claim_available_tasks(rt, NOW, lambda _job: None, sessions=False)
    assert rt.ledger.leases([OWNER]) == []  # nothing left reserved: the node is not "full"
    monkeypatch.setattr(engine, "bulk", real_bulk)
    sent: list[DispatchJob] = []
    summary = claim_available_tasks(rt, NOW + timedelta(milliseconds=500), sent.append, sessions=False)
    assert summary.claimed == 3 and sum(len(job.tasks) for job in sent) == 3


@pytest.mark.parametrize(
    "failure",
    [
        lambda: elastic_transport.ConnectionTimeout("timed out after 30s"),
        # A proxy or load balancer in front of the engine answered for a request the engine applied
        # (the simulation's "write applied, answered 503" found a claim left unpushed, its attempt counted).
        lambda: answered(503),
        lambda: answered(429),
    ],
    ids=["timeout", "503", "429"],
)
def test_given_a_claim_bulk_that_applied_but_failed_then_the_claims_read_back_as_written_are_pushed(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, failure: Any
) -> None:
    seeded(engine, 2)
    real_bulk = engine.bulk

    def applied_then_timed_out(**kwargs: Any) -> Answer:
        real_bulk(**kwargs)
        raise failure()

    monkeypatch.setattr(engine, "bulk", applied_then_timed_out)
    sent: list[DispatchJob] = []
    summary = claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert summary.claimed == 2 and sorted(t.doc_id for job in sent for t in job.tasks) == ["task:t0", "task:t1"]
    assert {t.seq_no for job in sent for t in job.tasks} == {
        engine.docs["task:t0"]["_seq_no"],
        engine.docs["task:t1"]["_seq_no"],
    }
    assert all(lease.pending_since_ms is None for lease in rt.ledger.leases([OWNER]))  # confirmed


def test_given_a_claim_bulk_without_an_answer_that_cannot_be_read_back_then_its_reservations_are_freed(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(engine, 2)

    def timed_out(**_kwargs: Any) -> Answer:
        raise elastic_transport.ConnectionTimeout("timed out")

    def unreachable(**_kwargs: Any) -> Answer:
        raise elastic_transport.ConnectionError("connection refused")

    monkeypatch.setattr(engine, "bulk", timed_out)
    real_mget = engine.mget
    calls = [0]

    def mget_fails_after_verify(**kwargs: Any) -> Answer:
        calls[0] += 1
        if calls[0] > 1:  # the cycle's own real-time read works; the read-back after the failed write does not
            return unreachable(**kwargs)
        return real_mget(**kwargs)

    monkeypatch.setattr(engine, "mget", mget_fails_after_verify)
    with pytest.raises(StoreError):
        claim_available_tasks(rt, NOW, lambda _job: None, sessions=False)
    # A claim that applied unseen is never pushed, so it cannot break the cap: its slot is not kept.
    assert rt.ledger.leases([OWNER]) == []


def test_given_redis_lost_the_ledger_during_the_claim_write_and_the_node_filled_then_the_claims_go_back(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    seeded(engine, 2)
    rt = make_runtime(kibana_capacity=2)  # 4 units: two normal tasks

    def ledger_lost_and_refilled() -> None:
        for key in (keys.inflight(OWNER), keys.inflight_costs(OWNER), keys.inflight_pending(OWNER)):
            rt.redis.delete(key)
        # Rebuilt, and another cycle filled the node meanwhile.
        rt.ledger.reserve(OWNER, 4, [("task:other", 4, NOW + timedelta(minutes=5))], NOW, token="other")

    engine.before_bulk = ledger_lost_and_refilled
    sent: list[DispatchJob] = []
    summary = claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert summary.claimed == 0 and sent == []  # never pushed: the node is full
    assert statuses(engine) == ["idle", "idle"]
    assert all(doc["_source"]["task"]["attempts"] == 0 for doc in engine.docs.values())  # attempts returned
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {"task:other"}


def test_given_a_slot_another_cycle_reserved_since_for_the_same_task_then_a_release_by_the_first_cycle_keeps_it() -> (
    None
):
    import fakeredis

    ledger = Ledger(fakeredis.FakeRedis())
    lease = [("task:t", 2, NOW + timedelta(minutes=5))]
    assert ledger.reserve(OWNER, 20, lease, NOW, token="A") == {"task:t"}
    ledger.release_many({OWNER: ["task:t"]})  # reconcile judged A's stale reservation by the engine
    assert ledger.reserve(OWNER, 20, lease, NOW, token="B") == {"task:t"}
    assert ledger.release_many({OWNER: ["task:t"]}, token="A") == 0  # A wakes and abandons: not its slot
    assert [lease.task_id for lease in ledger.leases([OWNER])] == ["task:t"]
    assert ledger.release_many({OWNER: ["task:t"]}, token="B") == 1


def test_a_renewal_moves_only_the_slot_of_the_claim_it_renewed() -> None:
    import fakeredis

    ledger = Ledger(fakeredis.FakeRedis())
    until = NOW + timedelta(minutes=5)
    # The slot is a newer claim's (version 9) of the same task: a late renewal of claim 4 must not move it.
    ledger.reserve(OWNER, 20, [("task:t", 2, until)], NOW)
    ledger.confirm(OWNER, 20, [("task:t", 2, until)], NOW, versions={"task:t": 9})
    later = NOW + timedelta(minutes=20)
    assert ledger.extend(OWNER, {"task:t": later}, NOW, claims={"task:t": 4}) == set()
    assert ledger.extend(OWNER, {"task:t": later}, NOW, claims={"task:t": 9}) == {"task:t"}


def test_a_renewal_never_revives_a_lease_that_already_ran_out() -> None:
    import fakeredis

    client = fakeredis.FakeRedis()
    ledger = Ledger(client)
    ledger.reserve(OWNER, 20, [("task:t", 2, NOW + timedelta(minutes=5))], NOW)
    client.zadd(keys.inflight(OWNER), {"task:t": 1})  # its expiry passed (not yet pruned)
    assert ledger.extend(OWNER, {"task:t": NOW + timedelta(minutes=5)}, NOW) == set()
    assert ledger.used_units([OWNER]) == {OWNER: 0}


def test_given_redis_failing_after_the_claim_write_applied_then_the_claims_go_back_to_idle_with_their_attempt(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claim _bulk applied; Redis failed before the slots were confirmed and the jobs sent (defect 8):
    # nothing would push those claims, and their leases would count an attempt.
    seeded(engine, 2)

    def redis_down(*_args: object, **_kwargs: object) -> set[str]:
        raise LedgerError("Redis, confirming reservations: connection refused")

    monkeypatch.setattr(rt.ledger, "confirm", redis_down)
    sent: list[DispatchJob] = []
    with pytest.raises(LedgerError):
        claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert sent == []
    for doc_id in ("task:t0", "task:t1"):
        task = engine.docs[doc_id]["_source"]["task"]
        assert (task["status"], task["attempts"]) == ("idle", 0)

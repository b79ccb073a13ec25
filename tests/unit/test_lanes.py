"""Claim lanes (core/lanes.py): disjoint shares of the partitions, a lock and a rest per lane, one ledger.

Two workers claiming in lanes on real processes, and a lane holder killed or frozen:
tests/integration/test_lanes.py.
"""

from __future__ import annotations

from datetime import timedelta

import fakeredis
import pytest

from elastask import keys
from elastask.core.documents import new_task
from elastask.core.lanes import MAX_LANES, PARTITIONS, Lane, lane_count
from elastask.core.messages import DispatchJob
from elastask.loops.claim.lease_reads import FOREIGN_READ_MS, ClaimedLease, LeaseReadSchedule
from elastask.loops.claim.loop import claim_available_tasks, claim_every_lane
from elastask.loops.claim.refill import RefillSession
from elastask.parts.cadence import Cadence
from tests.unit.helpers import NOW, running
from tests.unit.stubs import MakeRuntime, StubEngine


@pytest.mark.parametrize("count", [1, 2, 3, 16])
def test_the_lanes_shares_are_disjoint_and_cover_every_partition(count: int) -> None:
    shares = [set(Lane(i, count).partitions) for i in range(count)]
    assert set().union(*shares) == set(range(PARTITIONS))
    assert sum(len(s) for s in shares) == PARTITIONS


def test_one_lane_filters_nothing_and_lane_zero_takes_the_tasks_without_a_partition() -> None:
    assert Lane().query_filter() is None
    first, second = Lane(0, 2).query_filter(), Lane(1, 2).query_filter()
    assert first is not None and second is not None
    assert {"bool": {"must_not": [{"exists": {"field": "task.partition"}}]}} in first["bool"]["should"]
    assert len(second["bool"]["should"]) == 1
    assert str(Lane(1, 2)) == "lane 2 of 2"
    with pytest.raises(ValueError):
        Lane(2, 2)


def test_lanes_run_as_configured_at_most_one_per_live_worker() -> None:
    assert lane_count(1, 5) == 1
    assert lane_count(4, 2) == 2
    assert lane_count(4, 0) == 1  # no beat seen yet: one lane, the one claim path
    assert lane_count(99, 99) == MAX_LANES


def test_each_lane_rests_on_its_own_and_a_wake_wakes_them_all() -> None:
    client = fakeredis.FakeRedis()
    first, second = Cadence(client, 0), Cadence(client, 1)
    second.rest(NOW, NOW + timedelta(seconds=30))
    assert second.resting() and not first.resting()
    assert client.exists(keys.claim_resting(1)) and not client.exists(keys.CLAIM_RESTING)
    first.rest(NOW, NOW + timedelta(seconds=30))
    Cadence(client).wake()
    assert not first.resting() and not second.resting()
    assert first.follow_up(500) and second.follow_up(500) and not second.follow_up(500)


def test_two_lanes_claim_disjoint_shares_at_once_and_share_one_cap(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Twenty due tasks, ten per partition parity, and three without a partition (lane 0's); a node of 16 slots.
    for i in range(20):
        doc = new_task(f"p{i}", "sample", now=NOW - timedelta(seconds=10), partition=i)
        engine.put(doc.id, doc.to_source())
    for i in range(3):
        doc = new_task(f"old{i}", "sample", now=NOW - timedelta(seconds=10))
        engine.put(doc.id, doc.to_source())
    rt = make_runtime(kibana_capacity=16)
    sent: list[DispatchJob] = []
    during_first: list[set[str]] = []

    def second_lane_claims_meanwhile() -> None:
        engine.before_bulk = None
        # Lane 2's cycle runs while lane 1's claim write is in flight: its own lock, the same ledger.
        summary = claim_available_tasks(rt, NOW, sent.append, sessions=False, lane=Lane(1, 2))
        assert summary.ran, summary
        during_first.append(set(running(engine)))

    engine.before_bulk = second_lane_claims_meanwhile
    first = claim_available_tasks(rt, NOW, sent.append, sessions=False, lane=Lane(0, 2))
    assert first.ran
    claimed = running(engine)
    odd = {f"task:p{i}" for i in range(1, 20, 2)}
    # Lane 1 reserved its whole share (13) before its write; lane 2 found the 3 slots left, of odd partitions.
    assert during_first and len(during_first[0]) == 3 and during_first[0] <= odd
    assert claimed - during_first[0] == {f"task:p{i}" for i in range(0, 20, 2)} | {f"task:old{i}" for i in range(3)}
    assert len(claimed) == 16  # one cap for both lanes: 16 slots, never more


def test_with_several_lanes_a_session_reads_another_lanes_leases_only_every_half_second() -> None:
    reads = LeaseReadSchedule(max_wait_ms=100, foreign_wait_ms=FOREIGN_READ_MS)
    reads.add_claims([ClaimedLease("ours", "sample", (1, 1))], now_ms=0)
    assert reads.due(["ours", "theirs"], now_ms=100) == {"ours"}  # theirs: first seen now, read 500 ms later
    reads.record_reads(["ours"], {"ours"}, now_ms=100)
    assert reads.due(["ours", "theirs"], now_ms=600) == {"ours", "theirs"}
    reads.record_reads(["ours", "theirs"], {"ours", "theirs"}, now_ms=600)
    assert reads.next_read["ours"] < 700 <= 1100 <= reads.next_read["theirs"]
    reads.record_reads(["theirs"], set(), now_ms=1100)  # finished: forgotten
    assert "theirs" not in reads.next_read and "theirs" not in reads.foreign
    one_lane = LeaseReadSchedule(max_wait_ms=100)
    assert one_lane.due(["theirs"], now_ms=0) == {"theirs"}  # one lane: every lease is read at once
    assert RefillSession(0, 100, lane=Lane(1, 2)).reads.foreign_wait_ms == FOREIGN_READ_MS
    assert RefillSession(0, 100).reads.foreign_wait_ms == 0


def test_one_claim_job_serves_every_free_lane_while_none_holds_a_session(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # No backlog (room for every due task): no lane keeps the job for a session, so the job's cycles
    # claim both lanes' shares. Taking only the first free lane starved lane 2 for as long as lane 1 was
    # free at each tick (the chaos run with two lanes: half the recurring tasks stopped).
    for i in range(6):
        doc = new_task(f"q{i}", "sample", now=NOW - timedelta(seconds=10), partition=i)
        engine.put(doc.id, doc.to_source())
    rt = make_runtime(kibana_capacity=10)
    sent: list[DispatchJob] = []
    done = claim_every_lane(rt, NOW, sent.append, [Lane(0, 2), Lane(1, 2)], sessions=False)
    assert [(lane.index, summary.ran, summary.claimed) for lane, summary in done] == [(0, True, 3), (1, True, 3)]
    assert running(engine) == {f"task:q{i}" for i in range(6)}
    # A lane whose lock another process holds is skipped; the others still run.
    rt.redis.set(keys.claim_lock(0), "someone else", px=10_000)
    again = claim_every_lane(rt, NOW, sent.append, [Lane(0, 2), Lane(1, 2)], sessions=False)
    assert [(lane.index, summary.ran) for lane, summary in again] == [(0, False), (1, True)]

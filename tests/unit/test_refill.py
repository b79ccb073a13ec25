"""Refill sessions: when to read which leases (pure), and a session on the stub engine and fakeredis."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from elastask.core.documents import new_task
from elastask.core.messages import DispatchJob
from elastask.loops.claim import claim_available_tasks
from elastask.loops.claim_cycle import run_claim_cycle
from elastask.loops.claim_summary import ClaimSummary
from elastask.loops.refill import MAX_READS_PER_LOOK, MIN_RECHECK_MS, MIN_WAIT_MS, RefillSession
from elastask.parts.ready import ReadyTasks
from tests.unit.stubs import StubEngine, stub_runtime

OWNER = "kibana:a"


def test_a_lease_is_first_read_after_the_shortest_hold_seen_for_its_type() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.claimed([("t1", "report")], now_ms=0)
    assert session.due_for_check({"t1"}, now_ms=0) == {"t1"}  # nothing learned yet: read at once
    session.checked({"t1"}, still_held=set(), now_ms=210)  # found finished 210 ms after its claim
    assert session.shortest_hold_ms == {"report": 210}
    session.claimed([("t2", "report"), ("t3", "other")], now_ms=1000)
    assert session.due_for_check({"t2", "t3"}, now_ms=1100) == {"t3"}
    # A little before the shortest hold: a faster run can still teach a shorter one.
    assert session.due_for_check({"t2", "t3"}, now_ms=1000 + 0.75 * 210) == {"t2", "t3"}
    session.checked({"t2"}, still_held=set(), now_ms=1000 + 0.75 * 210)
    assert session.shortest_hold_ms["report"] < 210
    assert session.wait_ms(1100) == MIN_WAIT_MS  # t3 is already worth reading


def test_a_lease_still_running_is_read_again_after_a_share_of_its_age() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.claimed([("long", "export")], now_ms=0)
    session.checked({"long"}, still_held={"long"}, now_ms=5)
    assert session.next_check["long"] == 5 + MIN_RECHECK_MS
    session.checked({"long"}, still_held={"long"}, now_ms=4000)
    assert session.next_check["long"] == 4400  # 10 % of 4 s: few reads for long tasks
    assert session.wait_ms(4000) == 250  # never sleeps past max_wait_ms


def test_a_lease_another_cycle_claimed_counts_its_age_from_when_the_session_first_read_it() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    assert session.due_for_check({"theirs"}, now_ms=100) == {"theirs"}
    session.checked({"theirs"}, still_held={"theirs"}, now_ms=100)
    assert session.next_check["theirs"] == 100 + MIN_RECHECK_MS
    session.forget(set())  # freed elsewhere (a refused push): nothing kept
    assert session.next_check == {} and session.claimed_at == {}


def test_given_a_backlog_a_session_refills_each_freed_slot_within_one_call_and_never_exceeds_the_cap() -> None:
    # Given one slot (capacity 1 = 2 units) and four due tasks; Kibana finishes each run at once.
    engine = StubEngine()
    now = datetime.now(UTC)
    for i in range(4):
        doc = new_task(f"t{i}", "sample", now=now - timedelta(seconds=10 - i))
        engine.put(doc.id, doc.to_source())
    rt = stub_runtime(engine, kibana_capacity=1, busy_polling_interval_ms=50)
    pushed: list[str] = []
    in_flight_at_push: list[int] = []

    def kibana_runs(job: DispatchJob) -> None:
        for task in job.tasks:
            in_flight_at_push.append(rt.ledger.used_units([OWNER])[OWNER])
            pushed.append(task.doc_id)
            del engine.docs[task.doc_id]  # a one-shot task's outcome: the document is deleted

    cycles: list[ClaimSummary] = []
    started = time.monotonic()
    # When one claim job runs.
    last = claim_available_tasks(rt, datetime.now(UTC), kibana_runs, cycles.append)
    # Then every task was pushed, one at a time, by the one job, and the session ended with the backlog.
    assert pushed == ["task:t0", "task:t1", "task:t2", "task:t3"]
    assert max(in_flight_at_push) <= 2  # cost units: one normal task
    assert not last.backlog and time.monotonic() - started < 5
    assert sum(c.claimed for c in cycles) == 4 and all(c.searched for c in cycles if c.claimed)


def test_with_sessions_off_a_backlog_waits_for_the_next_job() -> None:
    engine = StubEngine()
    now = datetime.now(UTC)
    for i in range(3):
        doc = new_task(f"t{i}", "sample", now=now - timedelta(seconds=10 - i))
        engine.put(doc.id, doc.to_source())
    rt = stub_runtime(engine, kibana_capacity=1)
    pushed: list[str] = []
    summary = claim_available_tasks(rt, now, lambda job: pushed.extend(t.doc_id for t in job.tasks), sessions=False)
    assert pushed == ["task:t0"] and summary.backlog


def test_leftover_hits_stand_in_for_a_search_only_while_recent_and_more_than_the_room() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    hits = [{"_id": f"task:{i}", "_seq_no": i, "_primary_term": 1} for i in range(5)]
    session.keep_leftovers(hits, searched_ms=1000)
    assert session.take_leftovers(3, now_ms=1100, exclude=set()) == hits
    assert [h["_id"] for h in session.take_leftovers(3, now_ms=1100, exclude={"task:0"})] == [
        "task:1",
        "task:2",
        "task:3",
        "task:4",
    ]
    assert session.take_leftovers(5, now_ms=1100, exclude=set()) == []  # no more than the room: search
    assert session.take_leftovers(1, now_ms=1000 + 501, exclude=set()) == []  # too old: search


def test_a_session_claims_ready_tasks_beyond_the_free_room_and_pushes_each_into_a_freed_slot() -> None:
    # Given two slots (capacity 2 = 4 units) and ten due tasks; Kibana finishes each run at once.
    engine = StubEngine()
    now = datetime.now(UTC)
    for i in range(10):
        doc = new_task(f"t{i}", "sample", now=now - timedelta(seconds=20 - i))
        engine.put(doc.id, doc.to_source())
    rt = stub_runtime(engine, kibana_capacity=2, busy_polling_interval_ms=50)
    pushed: list[str] = []
    in_flight_at_push: list[int] = []

    def kibana_runs(job: DispatchJob) -> None:
        for task in job.tasks:
            in_flight_at_push.append(rt.ledger.used_units([OWNER])[OWNER])
            pushed.append(task.doc_id)
            del engine.docs[task.doc_id]

    cycles: list[ClaimSummary] = []
    last = claim_available_tasks(rt, datetime.now(UTC), kibana_runs, cycles.append)
    # Then each task was pushed once, never more than two at a time, some of them from the ready tasks.
    assert sorted(pushed) == sorted(f"task:t{i}" for i in range(10)) and len(pushed) == 10
    assert max(in_flight_at_push) <= 4
    assert sum(c.readied for c in cycles) > 0
    assert not last.backlog and ReadyTasks(rt.redis).view([OWNER]) == {OWNER: []}


def test_ready_tasks_of_a_node_out_of_rotation_go_back_to_idle_with_their_attempt_returned() -> None:
    engine = StubEngine()
    now = datetime.now(UTC)
    for i in range(6):
        doc = new_task(f"t{i}", "sample", now=now - timedelta(seconds=20 - i))
        engine.put(doc.id, doc.to_source())
    rt = stub_runtime(engine, kibana_capacity=2, busy_polling_interval_ms=50)
    session = RefillSession(0.0, max_wait_ms=50, refilling=True)
    run_claim_cycle(rt, datetime.now(UTC), lambda _job: None, refill=session)
    run_claim_cycle(rt, datetime.now(UTC), lambda _job: None, refill=session)
    ready = ReadyTasks(rt.redis).view([OWNER])[OWNER]
    assert ready, "the node's slots were full: the session claimed ready tasks"
    assert all(engine.docs[t.doc_id]["_source"]["task"]["status"] == "running" for t in ready)
    # When the node leaves rotation, the next cycle gives its ready tasks back.
    [node] = rt.nodes.resolve()[0]
    rt.nodes.record_failure(node, datetime.now(UTC), "connection refused", hard=True)
    run_claim_cycle(rt, datetime.now(UTC), lambda _job: None, refill=session)
    for task in ready:
        source = engine.docs[task.doc_id]["_source"]["task"]
        assert source["status"] == "idle" and source["attempts"] == 0, source
    assert ReadyTasks(rt.redis).view([OWNER]) == {OWNER: []}


def test_a_look_reads_at_most_a_bounded_number_of_leases_the_longest_due_first() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.claimed([(f"t{i}", "x") for i in range(500)], now_ms=0)
    for i in range(500):
        session.next_check[f"t{i}"] = float(i)
    due = session.due_for_check({f"t{i}" for i in range(500)}, now_ms=1000)
    assert due == {f"t{i}" for i in range(MAX_READS_PER_LOOK)}

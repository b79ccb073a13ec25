"""Refill sessions: when to read which leases (pure), and a session on the stub engine and fakeredis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from elastask import keys
from elastask.core.clock import monotonic_ms
from elastask.core.documents import new_task
from elastask.core.messages import DispatchJob
from elastask.errors import StoreError
from elastask.loops.claim.cycle import run_claim_cycle
from elastask.loops.claim.lease_reads import FIRST_READ_SHARE, MIN_RECHECK_MS, MIN_WAIT_MS, RECHECK_SHARE, ClaimedLease
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.claim.refill import (
    NODES_REUSE_MS,
    PREFETCH_BELOW_SHARE,
    UNREAD_HITS_MAX_AGE_MS,
    RefillSession,
)
from elastask.loops.claim.summary import ClaimSummary
from elastask.parts.ledger import Ledger
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime
from tests.unit.stubs import OWNER, MakeRuntime, StubEngine


def due_tasks(engine: StubEngine, count: int) -> None:
    """``count`` one-shot tasks due now, oldest first."""
    now = datetime.now(UTC)
    for i in range(count):
        doc = new_task(f"t{i}", "sample", now=now - timedelta(seconds=20 - i))
        engine.put(doc.id, doc.to_source())


def kibana_deletes(engine: StubEngine) -> Callable[[DispatchJob], None]:
    """A Kibana node that finishes each pushed one-shot run at once: its document is deleted."""

    def runs(job: DispatchJob) -> None:
        for task in job.tasks:
            del engine.docs[task.doc_id]

    return runs


def test_a_lease_is_first_read_after_the_shortest_run_seen_for_its_type() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.add_claims([ClaimedLease("t1", "report", (1, 1))], now_ms=0)
    assert session.reads.due({"t1"}, now_ms=0) == set()  # nothing learned yet: first read after max_wait
    assert session.reads.due({"t1"}, now_ms=250) == {"t1"}
    session.reads.record_reads({"t1"}, still_leased=set(), now_ms=210)  # found finished 210 ms after its claim
    assert session.reads.shortest_run_ms == {"report": 210}
    session.add_claims([ClaimedLease("t2", "report", (2, 1)), ClaimedLease("t3", "other", (3, 1))], now_ms=1000)
    assert session.reads.due({"t2", "t3"}, now_ms=1100) == set()
    # A little before the shortest run: a faster run can still teach a shorter one.
    assert session.reads.due({"t2", "t3"}, now_ms=1000 + FIRST_READ_SHARE * 210) == {"t2"}
    session.reads.record_reads({"t2"}, still_leased=set(), now_ms=1000 + FIRST_READ_SHARE * 210)
    assert session.reads.shortest_run_ms["report"] < 210
    # A type never seen finishing ("other") is first read after max_wait_ms.
    assert session.reads.due({"t3"}, now_ms=1250) == {"t3"}
    assert session.reads.wait_ms(1300) == MIN_WAIT_MS  # t3 is already worth reading


def test_a_lease_still_running_is_read_again_after_a_share_of_its_age() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.add_claims([ClaimedLease("long", "export", (1, 1))], now_ms=0)
    session.reads.record_reads({"long"}, still_leased={"long"}, now_ms=5)
    assert session.reads.next_read["long"] == 5 + MIN_RECHECK_MS
    session.reads.record_reads({"long"}, still_leased={"long"}, now_ms=10_000)
    assert session.reads.next_read["long"] == 10_000 + RECHECK_SHARE * 10_000  # a share of its age: fewer reads
    assert RECHECK_SHARE * 10_000 > 250
    assert session.reads.wait_ms(10_000) == 250  # never sleeps past max_wait_ms


def test_a_lease_another_cycle_claimed_counts_its_age_from_when_the_session_first_read_it() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    assert session.reads.due({"theirs"}, now_ms=100) == {"theirs"}
    session.reads.record_reads({"theirs"}, still_leased={"theirs"}, now_ms=100)
    assert session.reads.next_read["theirs"] == 100 + MIN_RECHECK_MS
    session.forget(set())  # freed elsewhere (a refused push): nothing kept
    assert session.reads.next_read == {} and session.reads.started_at == {}


def test_given_a_backlog_a_session_refills_each_freed_slot_within_one_call_and_never_exceeds_the_cap(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given one slot (capacity 1 = 2 units) and four due tasks; Kibana finishes each run at once.
    due_tasks(engine, 4)
    rt = make_runtime(kibana_capacity=1, busy_polling_interval_ms=50)
    pushed: list[str] = []
    in_flight_at_push: list[int] = []

    def kibana_runs(job: DispatchJob) -> None:
        for task in job.tasks:
            in_flight_at_push.append(rt.ledger.used_units([OWNER])[OWNER])
            pushed.append(task.doc_id)
            del engine.docs[task.doc_id]  # a one-shot task's outcome: the document is deleted

    cycles: list[ClaimSummary] = []
    # When one claim job runs.
    last = claim_available_tasks(rt, datetime.now(UTC), kibana_runs, cycles.append)
    # Then every task was pushed, one at a time, by the one job, and the session ended with the backlog.
    assert pushed == ["task:t0", "task:t1", "task:t2", "task:t3"]
    assert max(in_flight_at_push) <= 2  # cost units: one normal task
    assert not last.backlog
    assert sum(c.claimed for c in cycles) == 4 and all(c.searched for c in cycles if c.claimed)


def test_with_sessions_off_a_backlog_waits_for_the_next_job(engine: StubEngine, make_runtime: MakeRuntime) -> None:
    due_tasks(engine, 3)
    rt = make_runtime(kibana_capacity=1)
    pushed: list[str] = []
    summary = claim_available_tasks(
        rt, datetime.now(UTC), lambda job: pushed.extend(t.doc_id for t in job.tasks), sessions=False
    )
    assert pushed == ["task:t0"] and summary.backlog


def test_leftover_hits_stand_in_for_a_search_only_while_recent_and_more_than_the_room() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    hits = [{"_id": f"task:{i}", "_seq_no": i, "_primary_term": 1} for i in range(5)]
    session.unread.keep(hits, searched_ms=1000, size=5, full=True)
    assert session.unread.take(3, now_ms=1100, exclude=set()) == hits
    assert [h["_id"] for h in session.unread.take(3, now_ms=1100, exclude={"task:0"})] == [
        "task:1",
        "task:2",
        "task:3",
        "task:4",
    ]
    assert session.unread.take(5, now_ms=1100, exclude=set()) == []  # no more than the room: search
    assert session.unread.take(1, now_ms=1000 + 501, exclude=set()) == []  # too old: search


def test_learned_runs_re_time_the_first_read_of_leases_not_read_yet() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    session.add_claims([ClaimedLease("t1", "report", (1, 1))], now_ms=1000)
    assert session.reads.next_read["t1"] == 1250  # blind: after max_wait_ms
    session.reads.learn({"report": 200.0})
    assert session.reads.next_read["t1"] == 1000 + FIRST_READ_SHARE * 200


def test_a_session_remembers_the_shortest_run_for_the_next_one_in_redis(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    due_tasks(engine, 4)
    rt = make_runtime(kibana_capacity=1, busy_polling_interval_ms=50)
    claim_available_tasks(rt, datetime.now(UTC), kibana_deletes(engine))
    remembered = rt.redis.hgetall(keys.REFILL_SHORTEST_RUNS)
    assert b"sample" in remembered and float(remembered[b"sample"]) >= 0


def test_a_session_out_of_time_with_tasks_still_waiting_says_so_and_one_that_drained_does_not(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given sessions of 300 ms and one slot that never frees (Kibana keeps running the task).
    due_tasks(engine, 3)
    rt = make_runtime(kibana_capacity=1, busy_polling_interval_ms=50)
    # When one claim job runs its session to the end.
    summary = claim_available_tasks(rt, datetime.now(UTC), lambda _job: None, session_max_ms=300)
    # Then it says its time ran out with tasks waiting: the claim task hands over at once.
    assert summary.backlog and summary.session_expired
    # A session that drained the backlog ends early and asks for nothing.
    engine2 = StubEngine()
    due_tasks(engine2, 2)
    rt2 = make_runtime(engine=engine2, kibana_capacity=1, busy_polling_interval_ms=50)
    drained = claim_available_tasks(rt2, datetime.now(UTC), kibana_deletes(engine2), session_max_ms=300)
    assert not drained.backlog and not drained.session_expired


def test_a_task_claimed_ahead_counts_its_run_from_its_run_at_not_from_its_claim() -> None:
    # Given the first task of a backlog, claimed 700 ms ahead of its runAt and finished 260 ms after it.
    session = RefillSession(0.0, max_wait_ms=250)
    session.add_claims([ClaimedLease("t1", "report", (1, 1), ahead_ms=700)], now_ms=1000)
    assert session.reads.due({"t1"}, now_ms=1900) == set()  # not before runAt + max_wait_ms
    session.reads.record_reads({"t1"}, still_leased=set(), now_ms=1700 + 260)
    # Then the run learned is the run's own, not the run's plus the time claimed ahead.
    assert session.reads.shortest_run_ms == {"report": 260}


def test_a_worker_shutting_down_ends_its_session_at_the_next_look_and_frees_the_claim_lock(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # The same backlog as above, but the worker is told to shut down (SIGTERM) during the first cycle.
    due_tasks(engine, 4)
    rt = make_runtime(kibana_capacity=1, busy_polling_interval_ms=50)
    pushed: list[str] = []

    def kibana_runs(job: DispatchJob) -> None:
        for task in job.tasks:
            pushed.append(task.doc_id)
            del engine.docs[task.doc_id]

    last = claim_available_tasks(rt, datetime.now(UTC), kibana_runs, stopping=lambda: True)
    assert pushed == ["task:t0"]  # the first cycle's claim; no session after it
    assert last.backlog and last.session_expired  # the follow-up claim job goes out at once, on any worker
    assert not rt.redis.exists(keys.CLAIM_LOCK)  # freed at once: another worker's claim job takes over


def test_a_session_taking_over_a_backlog_first_looks_soon_at_the_leases_it_did_not_claim(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given two slots held by runs an earlier session claimed (the backlog's last hand-over) and a
    # third task waiting: the new session's read schedule knows none of those leases.
    due_tasks(engine, 3)
    rt = make_runtime(kibana_capacity=2, busy_polling_interval_ms=250)
    claim_available_tasks(rt, datetime.now(UTC), lambda _job: None, session_max_ms=200)  # t0, t1 keep running
    sleeps: list[float] = []

    def recorded(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    rt.sleep = recorded
    # When the next claim job takes over.
    claim_available_tasks(rt, datetime.now(UTC), lambda _job: None, session_max_ms=200)
    # Then its session's first look comes after MIN_RECHECK_MS, not its own first read (a whole
    # busy_polling_interval here), so a slot those runs free is refilled as fast as its own.
    assert sleeps and sleeps[0] <= MIN_RECHECK_MS / 1000


def test_unread_hits_run_low_when_fewer_than_a_share_of_a_full_search_are_left_or_they_age() -> None:
    session = RefillSession(0.0, max_wait_ms=250)
    hits = [{"_id": f"task:{i}", "_seq_no": i, "_primary_term": 1} for i in range(10)]
    session.unread.keep(hits, searched_ms=1000, size=20, full=True)
    assert not session.unread.running_low(now_ms=1010)  # half the search is left
    session.unread.keep(hits[: int(20 * PREFETCH_BELOW_SHARE) - 1], searched_ms=1000, size=20, full=True)
    assert session.unread.running_low(now_ms=1010)
    session.unread.keep(hits, searched_ms=1000, size=20, full=True)
    assert session.unread.running_low(now_ms=1000 + UNREAD_HITS_MAX_AGE_MS)  # too old by the next look
    # A search that was not full held every task due: searching again right away finds only new ones.
    session.unread.keep(hits[:1], searched_ms=1000, size=20, full=False)
    assert not session.unread.running_low(now_ms=1010)


def _a_session_on_a_backlog_of_60(
    engine: StubEngine, make_runtime: MakeRuntime
) -> tuple[Runtime, RefillSession, list[str], Callable[[DispatchJob], None]]:
    """60 due tasks, one node of 10 slots, a session already running; ``pushed``: the ids enqueued."""
    due_tasks(engine, 60)
    rt = make_runtime(kibana_capacity=10)
    session = RefillSession(0.0, max_wait_ms=250)
    session.active = True
    pushed: list[str] = []
    return rt, session, pushed, lambda job: pushed.extend(t.doc_id for t in job.tasks)


def _runs_end(engine: StubEngine, session: RefillSession, task_ids: list[str]) -> None:
    """Kibana ended these runs (their one-shot documents are gone), and every lease is due for a read."""
    for doc_id in task_ids:
        del engine.docs[doc_id]
    session.reads.next_read = dict.fromkeys(session.reads.next_read, 0.0)


def test_in_a_session_the_search_runs_right_after_a_claim_so_the_next_freed_slot_needs_none(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given a backlog of 60 tasks, one node of 10 slots, and a session already running.
    rt, session, pushed, enqueue = _a_session_on_a_backlog_of_60(engine, make_runtime)
    # When a cycle fills the node: it searched, claimed, then searched again after its claim.
    first = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert first.claimed == 10 and "search" in first.steps_ms and "prefetch" in first.steps_ms
    unread = [str(h["_id"]) for h in session.unread.hits]
    assert unread and not set(unread) & set(pushed)  # what it claimed is not searched again
    assert first.backlog  # the tasks it claimed and the ones still waiting
    # And when three runs end: the next cycle claims three of the prefetched hits without a search.
    _runs_end(engine, session, pushed[:3])
    before = len(pushed)
    second = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert second.claimed == 3 and "search" not in second.steps_ms
    assert set(pushed[before:]) <= set(unread)
    assert max(rt.ledger.used_units([OWNER]).values()) <= 20  # the cap, in units: 10 normal tasks


def test_a_prefetched_hit_is_claimed_without_a_read_and_one_written_since_is_a_lost_race_not_a_claim(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given a session whose search after its claim brought the next hits with their documents.
    rt, session, pushed, enqueue = _a_session_on_a_backlog_of_60(engine, make_runtime)
    run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    prefetched = session.unread.hits
    first_unread = str(prefetched[0]["_id"])
    assert all("_source" in h for h in prefetched)
    # And Kibana (or a user) writes the first of them since: the search saw an older version.
    changed = dict(engine.docs[first_unread]["_source"])
    engine.put(first_unread, changed)
    # When two runs end and the next cycle claims.
    _runs_end(engine, session, pushed[:2])
    engine.mget_calls.clear()
    before = len(pushed)
    second = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    # Then the hits were not read again (only the leases were), the changed one lost its race
    # (the conditional claim write) and is neither pushed nor held: its slot was given back.
    assert all(first_unread not in ids for ids, _versions_only in engine.mget_calls)
    assert second.conflicts == 1 and second.claimed == 1 and first_unread not in pushed[before:]
    assert first_unread not in {lease.task_id for lease in rt.ledger.view([OWNER]).leases}
    # And the next look fills that slot: one more task, the node full again (10 normal tasks, 20 units).
    third = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert third.claimed == 1 and rt.ledger.used_units([OWNER])[OWNER] == 20


class HeldSearches(Executor):
    """A refill session's searcher whose searches run only when the test says (``finish``)."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        return future

    def finish(self, error: Exception | None = None) -> None:
        for future, fn, args in self.held:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(fn(*args))
        self.held.clear()


def test_a_sessions_search_after_its_claim_runs_beside_it_and_its_hits_serve_a_later_cycle(
    engine: StubEngine, make_runtime: MakeRuntime
) -> None:
    # Given a backlog of 60 tasks, one node of 10 slots, a session whose searches run on their own thread.
    rt, session, pushed, enqueue = _a_session_on_a_backlog_of_60(engine, make_runtime)
    searcher = session.searcher = HeldSearches()
    # When a cycle fills the node: the search after its claim is handed over, not waited for.
    first = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert first.claimed == 10 and "prefetch" not in first.steps_ms
    assert len(searcher.held) == 1 and session.prefetching is not None
    # And a cycle while it is in flight, with no slot free, neither waits for it nor searches again.
    idle = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert idle.claimed == 0 and not idle.searched and len(searcher.held) == 1
    # Then once it answered and three runs ended, the next cycle claims three of its hits, no search of its own.
    searcher.finish()
    _runs_end(engine, session, pushed[:3])
    before = len(pushed)
    second = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert second.claimed == 3 and "search" not in second.steps_ms
    assert not set(pushed[before:]) & set(pushed[:before])
    assert max(rt.ledger.used_units([OWNER]).values()) <= 20  # the cap, in units: 10 normal tasks


def test_a_sessions_search_after_its_claim_that_failed_is_logged_and_the_next_cycle_searches_itself(
    engine: StubEngine, make_runtime: MakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a session whose search after its claim failed (the engine answered 503).
    rt, session, pushed, enqueue = _a_session_on_a_backlog_of_60(engine, make_runtime)
    searcher = session.searcher = HeldSearches()
    run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    searcher.finish(StoreError("searching due tasks: 503 unavailable"))
    # When two runs end.
    _runs_end(engine, session, pushed[:2])
    with caplog.at_level(logging.WARNING):
        second = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    # Then the next cycle searched for itself and claimed; the failure was said once.
    assert second.claimed == 2 and "search" in second.steps_ms
    assert "search after its claim failed" in caplog.text and "503" in caplog.text


def test_a_sessions_look_reuses_what_it_learned_of_the_nodes_briefly_then_learns_again(
    engine: StubEngine, make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a session on a backlog, and a count of how often the nodes are learned.
    rt, session, pushed, enqueue = _a_session_on_a_backlog_of_60(engine, make_runtime)
    learned: list[int] = []
    resolve = rt.nodes.resolve

    def counted(*args: Any, **kwargs: Any) -> Any:
        learned.append(1)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(rt.nodes, "resolve", counted)
    clock = [1_000_000.0]
    rt.monotonic_ms = lambda: clock[0]
    # When two looks follow each other closely: the nodes are learned once.
    run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    clock[0] += NODES_REUSE_MS / 2
    run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert len(learned) == 1
    # Then a pause set meanwhile holds back the claims of the first look after NODES_REUSE_MS.
    PauseStore(rt.redis, rt.settings.paused).pause(["all"], now_ms=0)
    _runs_end(engine, session, pushed[:2])
    clock[0] += NODES_REUSE_MS
    later = run_claim_cycle(rt, datetime.now(UTC), enqueue, refill=session)
    assert len(learned) == 2 and later.claimed == 0


def test_one_run_far_shorter_than_its_types_others_does_not_bring_every_later_first_read_forward() -> None:
    # Given a type whose runs take ~280 ms, and one that took 230 (an outcome written at once).
    session = RefillSession(0.0, max_wait_ms=250)
    runs = [280.0 + i % 7 for i in range(40)] + [230.0]
    for i, run_ms in enumerate(runs):
        session.add_claims([ClaimedLease(f"t{i}", "report", (i, 1))], now_ms=0)
        session.reads.record_reads({f"t{i}"}, still_leased=set(), now_ms=run_ms)
    # When the next lease is claimed.
    session.add_claims([ClaimedLease("next", "report", (99, 1))], now_ms=1000)
    # Then its first read comes near the short end of the usual runs, not at the one outlier.
    assert session.reads.shortest_run_ms["report"] >= 280
    assert session.reads.next_read["next"] >= 1000 + FIRST_READ_SHARE * 280


def test_a_task_claimed_ahead_is_timed_on_redis_clock_not_the_workers(engine: StubEngine, rt: Runtime) -> None:
    # Given a worker whose own clock is 5 s behind Redis's, and a task due 400 ms from now (Redis's time).
    rt.ledger = Ledger(rt.redis, redis_time=lambda: divmod(int(time.time() * 1_000_000) + 5_000_000, 1_000_000))
    doc = new_task(
        "ahead", "sample", now=rt.now() - timedelta(seconds=5), run_at=rt.now() + timedelta(milliseconds=400)
    )
    engine.put(doc.id, doc.to_source())
    session = RefillSession(monotonic_ms(), max_wait_ms=250)
    summary = run_claim_cycle(rt, rt.now(), lambda _job: None, refill=session)
    assert summary.claimed == 1
    # Then its run counts from its runAt 400 ms away, not 5.4 s away (the lease read that late).
    _type, since_ms = session.reads.started_at["task:ahead"]
    assert since_ms - monotonic_ms() < 1000


def test_a_short_end_learned_during_a_fault_does_not_hold_every_first_read_for_seconds() -> None:
    # Given a session that starts from a short end of 7 s, learned while an engine fault kept dispatch jobs
    # 7 s in their queues (a run counts from the claim: 7 s + the run), and leases that now end in 100 ms.
    session = RefillSession(0.0, max_wait_ms=250)
    session.reads.learn({"report": 7000.0})
    leases = {f"t{i}": 10.0 * i for i in range(12)}  # claimed 10 ms apart; each ends 100 ms after its claim
    for task_id, claimed_ms in leases.items():
        session.add_claims([ClaimedLease(task_id, "report", (1, 1))], now_ms=claimed_ms)
    # When the session looks every 10 ms, freeing what a read finds finished.
    freed: dict[str, float] = {}
    now = 120.0
    while len(freed) < len(leases) and now < 10_000:
        held = set(leases) - set(freed)
        read = session.reads.due(held, now)
        finished = {t for t in read if now >= leases[t] + 100}
        session.reads.record_reads(read, still_leased=read - finished, now_ms=now)
        freed.update(dict.fromkeys(finished, now))
        now += 10
    # Then a few early reads teach the session that runs are short, and every lease is freed within a
    # couple of seconds -- not when the stale short end says (6.65 s: a stall of the whole claim path).
    assert len(freed) == len(leases)
    assert max(freed.values()) < 2000, freed
    assert session.reads.shortest_run_ms["report"] < 1000

"""A Kibana node that restarted: the leases of the runs it lost end at once (loops/retry/node_restarts.py).

Stub engine and fakeredis; the node's uptime is scripted. On real processes the chaos run crashes
nodes mid-run and brings them back as new processes (elastask_bed/chaos/recording_sim.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.errors import LedgerError, StoreError
from elastask.loops.retry import node_restarts
from elastask.parts.kibana import Uptime
from elastask.parts.ledger import reservation_token
from elastask.runtime import Runtime
from tests.unit.helpers import held, node_of, running_source
from tests.unit.stubs import OWNER, MakeRuntime, StubEngine


def running(engine: StubEngine, rt: Runtime, doc_id: str, started: datetime, attempts: int = 1) -> None:
    """A task claimed for kibana:a at ``started`` (its lease runs 5 minutes), its slot held."""
    retry_at = started + timedelta(minutes=5)
    engine.put(doc_id, running_source(started, retry_at, attempts))
    now = datetime.now(UTC)
    rt.ledger.reserve(OWNER, 20, [(doc_id, 2, retry_at)], now)
    rt.ledger.confirm(OWNER, 20, [(doc_id, 2, retry_at)], now)


def scripted_uptime(
    monkeypatch: pytest.MonkeyPatch, rt: Runtime, uptime_ms: int | None, sampled_every_ms: int = 0
) -> None:
    answer = None if uptime_ms is None else Uptime(uptime_ms, sampled_every_ms)
    monkeypatch.setattr(rt.kibana, "uptime", lambda _node, timeout_s=2.0: answer)


def test_given_a_node_that_restarted_then_the_leases_of_the_runs_it_lost_end_and_the_new_ones_stand(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    restarted = now - timedelta(seconds=20)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(restarted - timedelta(hours=1))))
    running(engine, rt, "task:lost", restarted - timedelta(seconds=30))
    running(engine, rt, "task:after-the-restart", restarted + timedelta(seconds=5))
    scripted_uptime(monkeypatch, rt, 20_000)

    ended = node_restarts.check_restart(rt, node_of(rt))

    assert ended == 1
    lost = engine.docs["task:lost"]["_source"]["task"]
    assert lost["status"] == "idle" and lost["attempts"] == 1 and lost["retryAt"] is None  # the attempt counts
    assert engine.docs["task:after-the-restart"]["_source"]["task"]["status"] == "running"
    assert held(rt) == {"task:after-the-restart"}  # the lost run's slot is free at once
    assert int(rt.redis.hget(keys.NODE_STARTS, OWNER)) >= epoch_ms(restarted) - 1000


def test_given_a_lease_pushed_just_before_the_start_then_it_stands(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push leaves at most the dispatch slack after its claim: a claim a moment before the start
    # may have reached the new process.
    restarted = datetime.now(UTC) - timedelta(seconds=20)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(restarted - timedelta(hours=1))))
    running(engine, rt, "task:close-call", restarted - timedelta(milliseconds=500))
    scripted_uptime(monkeypatch, rt, 20_000)

    assert node_restarts.check_restart(rt, node_of(rt)) == 0
    assert held(rt) == {"task:close-call"}


def test_given_the_first_look_the_same_process_or_no_uptime_then_no_lease_ends(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    running(engine, rt, "task:old", now - timedelta(minutes=2))
    scripted_uptime(monkeypatch, rt, 10_000)
    assert node_restarts.check_restart(rt, node_of(rt)) == 0  # first look: only remembered
    assert rt.redis.hexists(keys.NODE_STARTS, OWNER)
    assert node_restarts.check_restart(rt, node_of(rt)) == 0  # the same process, asked again
    scripted_uptime(monkeypatch, rt, None)  # a redacted status (no metrics): never judged
    rt.redis.hset(keys.NODE_STARTS, OWNER, "0")
    assert node_restarts.check_restart(rt, node_of(rt)) == 0
    assert held(rt) == {"task:old"}
    assert engine.docs["task:old"]["_source"]["task"]["status"] == "running"


def test_nodes_are_asked_at_most_once_a_second_across_processes(
    rt: Runtime, make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(rt.nodes, "submit", lambda fn, _rt, node: asked.append(node.owner_id))
    node_restarts.watch_restarts(rt, [node_of(rt)])
    node_restarts.watch_restarts(rt, [node_of(rt)])  # the same process: not its turn for a second
    other = make_runtime()  # another process, on the same Redis
    other.redis = rt.redis
    monkeypatch.setattr(other.nodes, "submit", rt.nodes.submit)
    node_restarts.watch_restarts(other, [node_of(other)])
    assert asked == [OWNER]  # the other process found the turn taken


def test_given_an_uptime_sampled_seconds_ago_then_a_push_that_reached_the_new_process_stands(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kibana's uptime_in_millis is its last ops-metrics sample, taken up to metrics.collection_interval_in_millis
    # (5 s) before the answer: the start it gives may be 5 s late. A push 0.5 s after the real start, which
    # the new process may be running, must not be ended as lost.
    now = datetime.now(UTC)
    started = now - timedelta(seconds=30)  # the new process's real start
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(started - timedelta(hours=1))))
    running(engine, rt, "task:reached-the-new-process", started - timedelta(seconds=4.5))  # pushed 5 s slack later
    running(engine, rt, "task:lost", started - timedelta(seconds=60))
    scripted_uptime(monkeypatch, rt, 25_000, sampled_every_ms=5000)  # sampled 5 s ago
    assert node_restarts.check_restart(rt, node_of(rt)) == 1
    assert engine.docs["task:reached-the-new-process"]["_source"]["task"]["status"] == "running"
    assert held(rt) == {"task:reached-the-new-process"}


def test_given_a_restart_then_a_lost_lease_that_was_never_pushed_gets_its_attempt_back_and_a_pushed_one_counts(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two leases from before the restart, both claimed by elastask (their claim markers): one was pushed
    # (its push marker), the other's dispatch job never pushed it (still queued, or lost).
    restarted = datetime.now(UTC) - timedelta(seconds=20)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(restarted - timedelta(hours=1))))
    for doc_id in ("task:pushed", "task:never-pushed"):
        running(engine, rt, doc_id, restarted - timedelta(seconds=30))
        rt.ledger.mark_claims([(doc_id, engine.docs[doc_id]["_seq_no"], 60_000)])
    rt.redis.set(keys.push_marker("task:pushed", engine.docs["task:pushed"]["_seq_no"]), 1)
    claim = engine.docs["task:never-pushed"]["_seq_no"]
    scripted_uptime(monkeypatch, rt, 20_000)

    assert node_restarts.check_restart(rt, node_of(rt)) == 2

    pushed = engine.docs["task:pushed"]["_source"]["task"]
    never = engine.docs["task:never-pushed"]["_source"]["task"]
    assert pushed["status"] == "idle" and pushed["attempts"] == 1  # it may have run: the attempt counts
    assert never["status"] == "idle" and never["attempts"] == 0  # it never left: the attempt comes back
    # And its push is switched off: a dispatch job still holding it pushes nothing.
    assert rt.redis.get(keys.push_marker("task:never-pushed", claim)) is not None
    assert held(rt) == set()


@pytest.mark.parametrize("redis_lost_writes", [False, True], ids=["ledger-current", "not-rebuilt-yet"])
def test_given_a_restart_then_a_lost_lease_whose_claim_cycle_never_confirmed_it_gets_its_attempt_back(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, redis_lost_writes: bool
) -> None:
    # Simulation seed 50023 (0.8.5): a claim cycle wrote its claim and was killed before it confirmed the
    # slot (no claim marker, no dispatch job: it sends none before its confirm); the node restarted, and
    # the restart ended the lease as a lost run, counting an attempt for a task never pushed.
    restarted = datetime.now(UTC) - timedelta(seconds=20)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(restarted - timedelta(hours=1))))
    claimed_at = restarted - timedelta(seconds=30)
    running(engine, rt, "task:confirmed-and-pushed", claimed_at)
    rt.ledger.mark_claims([("task:confirmed-and-pushed", engine.docs["task:confirmed-and-pushed"]["_seq_no"], 60_000)])
    rt.redis.set(keys.push_marker("task:confirmed-and-pushed", engine.docs["task:confirmed-and-pushed"]["_seq_no"]), 1)
    unconfirmed(
        engine, rt, "task:never-confirmed", claimed_at, token=reservation_token("dead-worker", epoch_ms(claimed_at))
    )
    scripted_uptime(monkeypatch, rt, 20_000)
    if redis_lost_writes:  # a failover to a replica behind: the confirm may be what was lost
        rt.redis.delete(keys.LEDGER_EPOCH)

    assert node_restarts.check_restart(rt, node_of(rt)) == 2

    pushed = engine.docs["task:confirmed-and-pushed"]["_source"]["task"]
    never = engine.docs["task:never-confirmed"]["_source"]["task"]
    assert pushed["status"] == "idle" and pushed["attempts"] == 1  # it may have run: the attempt counts
    # No job ever carried it: the attempt comes back (unless Redis lost writes since: then it counts).
    assert never["status"] == "idle" and never["attempts"] == (1 if redis_lost_writes else 0)
    assert held(rt) == set()


def unconfirmed(engine: StubEngine, rt: Runtime, doc_id: str, started: datetime, token: str) -> None:
    """A task a claim cycle (``token``) claimed at ``started`` and never confirmed: its slot still pending."""
    retry_at = started + timedelta(minutes=5)
    engine.put(doc_id, running_source(started, retry_at))
    assert rt.ledger.reserve(OWNER, 20, [(doc_id, 2, retry_at)], datetime.now(UTC), token=token) == {doc_id}


def kept_answer(
    rt: Runtime, uptime_ms: int, asked: datetime, judged: datetime | None, received: datetime | None = None
) -> None:
    """The node's last uptime answer, as the watcher keeps it (and the start it recorded then)."""
    judged_ms = None if judged is None else epoch_ms(judged)
    arrived = epoch_ms(received) if received is not None else epoch_ms(asked) + 10
    answer = node_restarts.UptimeAnswer(uptime_ms, epoch_ms(asked), arrived, judged_ms)
    rt.redis.hset(keys.NODE_UPTIMES, OWNER, answer.dump())
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(asked) - uptime_ms))


def test_given_a_restart_seen_on_a_stale_sample_then_the_next_sample_ends_the_leases_pushed_just_before_it(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chaos seed 5401 (0.8.5): a node crashed seconds after its 10 slots were filled and came back 4.7 s
    # later; its uptime (a sample up to 5 s old) could not tell those pushes from pushes to the new
    # process, so its slots stood until the leases ran out (heal-to-push 9.4 s; minutes with Kibana's
    # 5-minute timeout). The next sample narrows the start down to the time between two questions.
    now = datetime.now(UTC)
    start = now - timedelta(seconds=4)  # the new process's real start
    # The restart was seen 2 s after the start on the sample taken at it (uptime 0, 5 s samples): the
    # start was judged no later than 5 s before that answer, so pushes 5 s before the start stood.
    kept_answer(rt, 0, start + timedelta(seconds=2), judged=start + timedelta(seconds=2) - timedelta(seconds=5))
    running(engine, rt, "task:lost", start - timedelta(seconds=8))  # a 5-minute lease: pushed within 5 s
    running(engine, rt, "task:maybe-in-the-new-process", start - timedelta(seconds=5))
    scripted_uptime(monkeypatch, rt, 3000, sampled_every_ms=5000)  # the next sample, taken 1 s ago

    assert node_restarts.check_restart(rt, node_of(rt)) == 1

    lost = engine.docs["task:lost"]["_source"]["task"]
    assert lost["status"] == "idle" and lost["attempts"] == 1  # a lost run: the attempt counts
    assert engine.docs["task:maybe-in-the-new-process"]["_source"]["task"]["status"] == "running"
    assert held(rt) == {"task:maybe-in-the-new-process"}
    # Asked again on the same sample: the start is no narrower, nothing is judged again.
    monkeypatch.setattr(node_restarts, "end_lost_runs", lambda *_args: pytest.fail("judged again"))
    assert node_restarts.check_restart(rt, node_of(rt)) == 0


@pytest.mark.parametrize("why", ["no restart seen", "long after the restart"])
def test_given_no_recent_restart_then_a_new_sample_ends_no_lease(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    now = datetime.now(UTC)
    uptime = 3000 if why == "no restart seen" else 60_000
    start = now - timedelta(milliseconds=uptime + 1000)
    judged = None if why == "no restart seen" else start - timedelta(seconds=5)
    kept_answer(rt, uptime - 2000, now - timedelta(seconds=2), judged=judged)
    running(engine, rt, "task:old", start - timedelta(seconds=30))
    scripted_uptime(monkeypatch, rt, uptime, sampled_every_ms=5000)

    assert node_restarts.check_restart(rt, node_of(rt)) == 0
    assert held(rt) == {"task:old"}  # the first look at a process never ends its leases (nor one long up)
    kept = node_restarts.UptimeAnswer.parse(rt.redis.hget(keys.NODE_UPTIMES, OWNER))
    assert kept is not None and kept.uptime_ms == uptime and kept.judged_ms is None


def test_given_an_answer_that_arrived_after_the_question_was_asked_then_it_narrows_nothing(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two questions in flight at once (a slow one, or another process's turn): the other answer, asked
    # 2 s ago but arrived just now, may have been served after this one, its sample newer than this
    # one's; "a sample it did not show came after it was asked" does not hold, and the start it would
    # give (2 s ago minus this uptime) could be later than the real one: leases of pushes that reached
    # the new process would end, and their tasks run twice.
    now = datetime.now(UTC)
    start = now - timedelta(seconds=5)  # the real start; this answer shows the sample taken at it
    # The other answer showed the next sample (taken a moment after this one was served).
    kept_answer(rt, 5000, now - timedelta(seconds=2), judged=start - timedelta(seconds=6), received=now)
    running(engine, rt, "task:in-the-new-process", start - timedelta(seconds=4))  # pushed up to 5 s later
    scripted_uptime(monkeypatch, rt, 0, sampled_every_ms=5000)

    assert node_restarts.check_restart(rt, node_of(rt)) == 0
    assert held(rt) == {"task:in-the-new-process"}


def test_a_kept_uptime_answer_that_cannot_be_read_is_ignored() -> None:
    for raw in (b"not json", b"[1, 2]", b'{"uptime": 1}', b'{"uptime": 1, "asked": 2}', None):
        assert node_restarts.UptimeAnswer.parse(raw) is None
    answer = node_restarts.UptimeAnswer(1000, 2000, 2010, None)
    assert node_restarts.UptimeAnswer.parse(answer.dump().encode()) == answer


def test_given_the_engine_failed_when_a_restart_was_seen_then_the_next_answer_judges_it_again(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A restart noticed while the engine failed (the leases could not be read): the next answer sees
    # the restart again and judges it, instead of the leases waiting out their timeout.
    now = datetime.now(UTC)
    start = now - timedelta(seconds=3)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(start - timedelta(hours=1))))
    running(engine, rt, "task:lost", start - timedelta(seconds=30))
    scripted_uptime(monkeypatch, rt, 3000)
    search = rt.store.search_hits

    def engine_down(*_args: object) -> object:
        raise StoreError("reading the leases: the search engine could not be reached")

    monkeypatch.setattr(rt.store, "search_hits", engine_down)
    with pytest.raises(StoreError):
        node_restarts.check_restart(rt, node_of(rt))
    assert held(rt) == {"task:lost"}

    monkeypatch.setattr(rt.store, "search_hits", search)
    assert node_restarts.check_restart(rt, node_of(rt)) == 1  # the next answer
    assert held(rt) == set()


def failing_once(monkeypatch: pytest.MonkeyPatch, rt: Runtime, where: str) -> None:
    """The next read of the ledger's epoch (``where="epoch"``) or of the claim and push markers
    (``where="markers"``) loses its reply, as a dropped connection does; the ones after answer."""
    if where == "epoch":
        current = rt.ledger.claims_current
        calls = iter([True])

        def claims_current() -> bool:
            if next(calls, False):
                raise LedgerError("Redis, reading the ledger's epoch: ConnectionError: connection lost")
            return current()

        monkeypatch.setattr(rt.ledger, "claims_current", claims_current)
        return
    pipeline, failed = rt.redis.pipeline, []

    def losing_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_once(*eargs: Any, **ekwargs: Any) -> Any:
            reads_markers = any(str(a).startswith("elastask:pushed:") for cmd in pipe.command_stack for a in cmd[0])
            if reads_markers and not failed:
                failed.append(True)
                raise redis.ConnectionError("connection lost after the command applied")
            return execute(*eargs, **ekwargs)

        pipe.execute = execute_once
        return pipe

    monkeypatch.setattr(rt.redis, "pipeline", losing_pipeline)


@pytest.mark.parametrize("where", ["epoch", "markers"])
def test_given_redis_failed_while_the_markers_were_read_then_a_never_pushed_lease_counts_no_attempt(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Found by the simulation (`elastask simulate --seed 180047 --seeds 1 --trace`, 0.8.7): a restart
    # ended a lease elastask claimed and never pushed while Redis's reply to the markers' read was lost;
    # the lease counted its attempt, and the task was pushed next with attempts 2 after no push at all.
    restarted = datetime.now(UTC) - timedelta(seconds=20)
    rt.redis.hset(keys.NODE_STARTS, OWNER, str(epoch_ms(restarted - timedelta(hours=1))))
    running(engine, rt, "task:never-pushed", restarted - timedelta(seconds=30))
    rt.ledger.mark_claims([("task:never-pushed", engine.docs["task:never-pushed"]["_seq_no"], 60_000)])
    scripted_uptime(monkeypatch, rt, 20_000)
    failing_once(monkeypatch, rt, where)

    # When the restart is seen and the markers cannot be read: the lease is not judged now.
    with pytest.raises(LedgerError):
        node_restarts.check_restart(rt, node_of(rt))
    task = engine.docs["task:never-pushed"]["_source"]["task"]
    assert task["status"] == "running" and task["attempts"] == 1
    assert held(rt) == {"task:never-pushed"}

    # Then the next answer judges it again, with Redis answering: never pushed, its attempt comes back.
    assert node_restarts.check_restart(rt, node_of(rt)) == 1
    task = engine.docs["task:never-pushed"]["_source"]["task"]
    assert task["status"] == "idle" and task["attempts"] == 0
    assert held(rt) == set()

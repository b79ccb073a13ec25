"""Reconciling the ledger with the engine: which slots the engine's real-time reads free (stub engine, fakeredis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.core.intervals import format_date
from elastask.loops.claim.reconcile import LeaseReader, LeaseVersions, reconcile_ledger
from elastask.loops.claim.search import lookahead_ms
from elastask.parts.ledger import Reserver, reservation_token
from elastask.parts.worker_claims import WorkerClaims
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, running_source
from tests.unit.stubs import OWNER, StubEngine


def claimed(rt: Runtime, doc_id: str) -> None:
    """A slot reserved and its claim written (confirmed), as a finished claim cycle leaves it."""
    lease = [(doc_id, 2, NOW + timedelta(minutes=5))]
    rt.ledger.reserve(OWNER, 20, lease, NOW, token="cycle-1")
    assert rt.ledger.confirm(OWNER, 20, lease, NOW, token="cycle-1") == {doc_id}


def running(engine: StubEngine, doc_id: str) -> None:
    engine.put(doc_id, {"type": "task", "task": {"status": "running", "ownerId": OWNER, "attempts": 1}})


def test_given_an_mget_error_item_for_a_leased_task_then_its_slot_is_kept_not_freed(
    engine: StubEngine, rt: Runtime
) -> None:
    for doc_id in ("task:on-a-relocating-shard", "task:done"):
        claimed(rt, doc_id)
    running(engine, "task:on-a-relocating-shard")
    engine.mget_errors.add("task:on-a-relocating-shard")  # the shard is unavailable: unknown, not deleted
    # task:done is gone from the engine: Kibana deleted the finished one-shot task.
    held, released = reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    assert held == {"task:on-a-relocating-shard"}
    assert released == 1
    assert {lease.task_id for lease in rt.ledger.leases([OWNER])} == {"task:on-a-relocating-shard"}


def reserved_by_a_cycle_of(rt: Runtime, worker_id: str, doc_id: str) -> str:
    """A slot reserved by a claim cycle of ``worker_id`` started at NOW; returns its token."""
    token = reservation_token(worker_id, epoch_ms(NOW))
    rt.ledger.reserve(OWNER, 20, [(doc_id, 2, NOW + timedelta(minutes=5))], NOW, token=token)
    return token


@pytest.mark.parametrize(("beating", "age_ms", "kept"), [(False, 6000, False), (True, 6000, True), (False, 2000, True)])
def test_a_reservation_of_a_worker_that_stopped_beating_is_judged_without_the_pending_window(
    engine: StubEngine, rt: Runtime, beating: bool, age_ms: int, kept: bool
) -> None:
    # A worker SIGKILLed between its reserve and its claim write: its slots must not wait the pending
    # window (38 s by default). Kept: while its worker beats, and while a beat may not be recorded yet.
    reserved_by_a_cycle_of(rt, "host:123:abcdef", "task:killed-mid-claim")
    engine.put("task:killed-mid-claim", {"type": "task", "task": {"status": "idle", "attempts": 0}})
    if beating:
        WorkerClaims(rt.redis).beat("host:123:abcdef", 0)
    view = rt.ledger.view([OWNER])
    assert [lease.reserved_by for lease in view.leases] == [Reserver("host:123:abcdef", epoch_ms(NOW))]
    held, released = reconcile_ledger(rt, replace(view, now_ms=view.now_ms + age_ms), 38_000)
    assert (held, released) == (({"task:killed-mid-claim"}, 0) if kept else (set(), 1))


def test_a_claim_written_by_a_cycle_whose_worker_died_before_its_dispatch_goes_back_to_idle_at_once(
    engine: StubEngine, rt: Runtime
) -> None:
    # Killed between its claim _bulk (which the engine applied) and its confirm: no job was ever sent.
    reserved_by_a_cycle_of(rt, "host:123:abcdef", "task:claimed-never-sent")
    written = {"status": "running", "ownerId": OWNER, "attempts": 2, "startedAt": format_date(NOW)}
    engine.put("task:claimed-never-sent", {"type": "task", "task": written})
    # Claimed by a Kibana node that pulls for itself: another startedAt, so it is left to its lease.
    reserved_by_a_cycle_of(rt, "host:123:abcdef", "task:kibana-claimed")
    kibanas = {**written, "startedAt": format_date(NOW + timedelta(milliseconds=3))}
    engine.put("task:kibana-claimed", {"type": "task", "task": kibanas})
    view = rt.ledger.view([OWNER])
    held, released = reconcile_ledger(rt, replace(view, now_ms=view.now_ms + 6000), 38_000)
    assert (held, released) == ({"task:kibana-claimed"}, 1)
    task = engine.docs["task:claimed-never-sent"]["_source"]["task"]
    assert (task["status"], task["attempts"], task["ownerId"]) == ("idle", 1, None)  # its attempt returned
    assert [lease.task_id for lease in rt.ledger.leases([OWNER])] == ["task:kibana-claimed"]


def test_before_the_rebuild_after_redis_lost_writes_no_reservation_is_judged_a_dead_cycles(
    engine: StubEngine, rt: Runtime
) -> None:
    # Seed 50036: the replica promoted had the reservation, not its confirm nor the worker's last beats;
    # the cycle had sent and pushed. Until the rebuild the reservation proves nothing: it stays.
    reserved_by_a_cycle_of(rt, "host:123:abcdef", "task:pushed-before-the-failover")
    written = {"status": "running", "ownerId": OWNER, "attempts": 1, "startedAt": format_date(NOW)}
    engine.put("task:pushed-before-the-failover", {"type": "task", "task": written})
    rt.redis.delete(keys.LEDGER_EPOCH)  # the promoted replica's data: not the ledger's server (not rebuilt)
    view = rt.ledger.view([OWNER])
    held, released = reconcile_ledger(rt, replace(view, now_ms=view.now_ms + 6000), 38_000)
    assert (held, released) == ({"task:pushed-before-the-failover"}, 0)
    assert engine.docs["task:pushed-before-the-failover"]["_source"]["task"]["status"] == "running"


def test_given_a_recurring_task_kibana_rescheduled_then_its_slot_is_freed(engine: StubEngine, rt: Runtime) -> None:
    claimed(rt, "task:rec")
    engine.put(
        "task:rec",
        {"type": "task", "task": {"status": "idle", "ownerId": OWNER, "attempts": 0, "runAt": format_date(NOW)}},
    )
    held, released = reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    assert held == set() and released == 1


def test_given_a_reservation_whose_claim_is_not_written_yet_then_reconcile_keeps_it_though_it_looks_idle(
    engine: StubEngine, rt: Runtime
) -> None:
    # Another claim cycle reserved the slot and is still writing its claim: the engine shows the
    # task idle with attempts 0, which is also what a finished recurring run looks like.
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


def test_finished_tasks_stay_out_of_the_search_a_moment_but_not_one_rescheduled_within_the_claim_ahead_window(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a deleted one-shot task and a recurring one Kibana rescheduled 300 ms ahead.
    for doc_id in ("task:once", "task:every-second"):
        claimed(rt, doc_id)
    now_ms = rt.ledger.now_ms()
    rescheduled(engine, "task:every-second", now_ms + 300)
    # When reconcile frees both slots.
    reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    # Then the one-shot task is left out of the due search a moment (the near-real-time search may still
    # show it); the recurring one, due within the claim-ahead window, is not: a look may claim it now.
    assert lookahead_ms(rt.settings) > 300
    assert rt.ledger.view([OWNER]).recently_finished == frozenset({"task:once"})


def test_a_rescheduled_task_is_back_in_the_due_search_when_its_claim_ahead_window_opens(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a recurring task Kibana rescheduled 1.2 s ahead (an interval of about a second).
    claimed(rt, "task:every-second")
    now_ms = rt.ledger.now_ms()
    rescheduled(engine, "task:every-second", now_ms + 1200)
    # When reconcile frees its slot.
    reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)
    # Then the look that opens its claim-ahead window may find it again, claim it ahead and push it at
    # its runAt: left out until then, it could be claimed only at a look after its runAt (up to a
    # polling interval late: at 20 % load, drift p50 ~400 ms in test_defaults, ~0 with the window).
    scores = dict(rt.redis.zrange("elastask:ledger:finished", 0, -1, withscores=True))
    assert scores[b"task:every-second"] <= now_ms + 1200 - lookahead_ms(rt.settings)


def rescheduled(engine: StubEngine, doc_id: str, run_at_ms: int) -> None:
    """Kibana's outcome of a recurring run: idle, attempts 0, no owner, its next runAt."""
    next_run = datetime.fromtimestamp(run_at_ms / 1000, UTC)
    engine.put(
        doc_id,
        {"type": "task", "task": {"status": "idle", "attempts": 0, "ownerId": None, "runAt": format_date(next_run)}},
    )


def test_a_lease_still_at_the_version_it_was_judged_held_at_is_read_without_its_source(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given three leases last seen held at their claim's version: one still running, one Kibana
    # deleted (a finished one-shot task), one Kibana rescheduled (a finished recurring task).
    versions = LeaseVersions()
    for doc_id in ("task:running", "task:deleted", "task:rescheduled"):
        claimed(rt, doc_id)
        running(engine, doc_id)
        versions.seen(doc_id, (engine.docs[doc_id]["_seq_no"], 1))
    del engine.docs["task:deleted"]
    engine.put(
        "task:rescheduled",
        {"type": "task", "task": {"status": "idle", "ownerId": OWNER, "attempts": 0, "runAt": format_date(NOW)}},
    )
    # When reconcile reads them.
    held, released = LeaseReader(versions).reconcile(rt, rt.ledger.view([OWNER]), 65_000)
    # Then the running one stays held, the two finished ones are freed...
    assert held == {"task:running"} and released == 2
    # ... all three were read by version first, and only the changed one with its fields.
    assert engine.mget_calls == [
        (["task:deleted", "task:rescheduled", "task:running"], True),
        (["task:rescheduled"], False),
    ]
    assert versions.by_id == {"task:running": (engine.docs["task:running"]["_seq_no"], 1)}


def test_a_lease_whose_version_changed_but_is_still_held_is_judged_by_its_fields_and_remembered(
    engine: StubEngine, rt: Runtime
) -> None:
    # Given a lease the dispatcher renewed after its claim (a new version, still running on the node).
    claimed(rt, "task:renewed")
    running(engine, "task:renewed")
    versions = LeaseVersions({"task:renewed": (engine.docs["task:renewed"]["_seq_no"], 1)})
    running(engine, "task:renewed")
    # When reconcile reads it twice.
    held, _ = LeaseReader(versions).reconcile(rt, rt.ledger.view([OWNER]), 65_000)
    held_again, _ = LeaseReader(versions).reconcile(rt, rt.ledger.view([OWNER]), 65_000)
    # Then it stays held; the second read needs no source (the new version was remembered).
    assert held == held_again == {"task:renewed"}
    assert [source_less for _, source_less in engine.mget_calls] == [True, False, True]


def test_given_redis_lost_the_ledger_then_the_rebuild_takes_back_the_leases_of_nodes_not_resolved_now(
    engine: StubEngine, rt: Runtime
) -> None:
    # A node whose ownerId is learned later must find its runs in the ledger, not its whole capacity free.
    from elastask.core.intervals import format_date
    from elastask.loops.claim.reconcile import rebuild_ledger

    now = datetime.now(UTC)
    for owner in ("kibana:a", "kibana:not-resolved-yet"):
        task = {
            "taskType": "sample",
            "status": "running",
            "ownerId": owner,
            "attempts": 1,
            "runAt": format_date(now),
            "retryAt": format_date(now + timedelta(minutes=5)),
        }
        engine.put(f"task:{owner}", {"type": "task", "task": task})
    assert rebuild_ledger(rt, rt.nodes.resolve()[0], now) == 2
    assert [lease.task_id for lease in rt.ledger.leases(["kibana:not-resolved-yet"])] == [
        "task:kibana:not-resolved-yet"
    ]


def test_given_a_look_that_paused_after_its_read_then_it_leaves_the_slot_of_a_newer_claim_alone(
    engine: StubEngine, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kibana finished task:rec (idle, attempts 0). A refill session reads it, then pauses past the claim
    # lock; meanwhile another look frees its slot and a cycle claims it again for the same node.
    lease = [("task:rec", 2, NOW + timedelta(minutes=5))]
    rt.ledger.reserve(OWNER, 20, lease, NOW, token="cycle-1")
    rt.ledger.confirm(OWNER, 20, lease, NOW, token="cycle-1", versions={"task:rec": 5})
    engine.put("task:rec", {"type": "task", "task": {"status": "idle", "ownerId": OWNER, "attempts": 0}})
    stale_view = rt.ledger.view([OWNER])
    read = rt.store.mget_sources

    def read_then_pause(*args: object, **kwargs: object) -> object:
        hits = read(*args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(rt.store, "mget_sources", read)
        assert reconcile_ledger(rt, rt.ledger.view([OWNER]), 65_000)[1] == 1  # the other look frees it
        rt.ledger.reserve(OWNER, 20, lease, NOW, token="cycle-2")
        rt.ledger.confirm(OWNER, 20, lease, NOW, token="cycle-2", versions={"task:rec": 9})
        return hits

    monkeypatch.setattr(rt.store, "mget_sources", read_then_pause)
    _held, released = reconcile_ledger(rt, stale_view, 65_000)
    # Then the paused look frees nothing: the slot is the newer claim's (freeing it let a cycle fill the
    # node to its capacity + 1).
    assert released == 0
    assert [(lease.task_id, lease.claim) for lease in rt.ledger.leases([OWNER])] == [("task:rec", 9)]


def test_a_late_release_for_an_older_claim_leaves_the_newer_claims_slot(rt: Runtime) -> None:
    # A dispatch process gave task:x back (its write applied) and froze before freeing the slot; the slot
    # was freed, and the task claimed again for the same node. The process wakes and releases.
    lease = [("task:x", 2, NOW + timedelta(minutes=5))]
    rt.ledger.reserve(OWNER, 20, lease, NOW, token="cycle-1")
    rt.ledger.confirm(OWNER, 20, lease, NOW, token="cycle-1", versions={"task:x": 5})
    assert rt.ledger.release(OWNER, ["task:x"], claims={"task:x": 5}) == 1
    rt.ledger.reserve(OWNER, 20, lease, NOW, token="cycle-2")
    rt.ledger.confirm(OWNER, 20, lease, NOW, token="cycle-2", versions={"task:x": 9})
    assert rt.ledger.release(OWNER, ["task:x"], claims={"task:x": 5}) == 0
    assert rt.ledger.used_units([OWNER]) == {OWNER: 2}
    assert rt.ledger.release(OWNER, ["task:x"], claims={"task:x": 9}) == 1


def test_given_a_failover_that_lost_a_confirm_then_the_rebuild_makes_the_pending_slot_the_written_claims(
    engine: StubEngine, rt: Runtime
) -> None:
    # Simulation seed 50036 (0.8.5): Redis failed over to a replica that had a cycle's reservations but
    # missed their confirm; the cycle had pushed its tasks. The rebuild left the stale reservations
    # pending, the cycle's worker (its heartbeat lost with the same writes) was judged dead, and its
    # "never sent" claims were given back while Kibana ran them: claimed again, the node over its cap.
    from elastask.loops.claim.reconcile import rebuild_ledger

    now = datetime.now(UTC)
    started = now - timedelta(seconds=20)
    token = reservation_token("sim:claimer-0", epoch_ms(started))
    lease = [("task:pushed", 2, now + timedelta(minutes=5))]
    assert rt.ledger.reserve(OWNER, 20, lease, started, token=token) == {"task:pushed"}  # what the replica had
    claim = engine.put(
        "task:pushed", running_source(started, now + timedelta(minutes=5))
    )  # the claim the cycle wrote (and pushed)

    assert rebuild_ledger(rt, rt.nodes.resolve()[0], now) == 1
    [rebuilt] = rt.ledger.leases([OWNER])
    assert (rebuilt.task_id, rebuilt.claim, rebuilt.reserved_by, rebuilt.pending_since_ms) == (
        "task:pushed",
        claim,
        None,
        None,
    )

"""The in-flight ledger on the real Redis: atomic reservations, expiry, release, rebuild marker."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from elastask.parts.ledger import Ledger

pytestmark = pytest.mark.integration

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # the callers' clock: only durations from it reach Redis


def test_reservations_fill_up_to_capacity_and_no_further(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    lease = NOW + timedelta(minutes=5)
    taken = ledger.reserve("kibana:a", 20, [(f"t{i}", 2, lease) for i in range(15)], NOW)
    assert len(taken) == 10
    assert ledger.used_units(["kibana:a"]) == {"kibana:a": 20}
    assert ledger.reserve("kibana:a", 20, [("late", 1, lease)], NOW) == set()


def test_a_held_task_is_never_reserved_twice(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    lease = NOW + timedelta(minutes=5)
    assert ledger.reserve("kibana:a", 20, [("t1", 2, lease)], NOW) == {"t1"}
    assert ledger.reserve("kibana:a", 20, [("t1", 2, lease)], NOW) == set()
    assert ledger.used_units(["kibana:a"])["kibana:a"] == 2


def test_given_many_racing_reservers_then_the_cap_holds(redis_client: redis.Redis) -> None:
    """Twenty threads, each with its own connection, race for one node's 20 units."""
    lease = NOW + timedelta(minutes=5)
    url = redis_client.connection_pool.connection_kwargs
    won: list[str] = []
    lock = threading.Lock()

    def race(worker: int) -> None:
        client = redis.Redis(**url)
        mine = Ledger(client).reserve("kibana:a", 20, [(f"w{worker}-{i}", 2, lease) for i in range(5)], NOW)
        with lock:
            won.extend(mine)
        client.close()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 10
    assert Ledger(redis_client).used_units(["kibana:a"])["kibana:a"] == 20


def test_expired_leases_free_their_slot_on_redis_clock_and_release_frees_at_once(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.reserve(
        "kibana:a", 20, [("short", 10, NOW + timedelta(milliseconds=300)), ("long", 10, NOW + timedelta(hours=1))], NOW
    )
    assert ledger.used_units(["kibana:a"])["kibana:a"] == 20
    time.sleep(0.5)  # the short lease runs out on Redis's clock, whatever the callers' clocks say
    assert ledger.used_units(["kibana:a"])["kibana:a"] == 10
    assert ledger.release("kibana:a", ["long", "unknown"]) == 1
    assert ledger.used_units(["kibana:a"])["kibana:a"] == 0
    assert [lease.task_id for lease in ledger.leases(["kibana:a"])] == []


def test_a_caller_whose_clock_is_off_still_leases_for_the_duration_it_asked(redis_client: redis.Redis) -> None:
    # A worker whose clock runs a day behind (NOW is 2030) reserves a 5 minute lease: Redis holds it
    # for 5 minutes from its own now, neither expired at once nor kept a day.
    ledger = Ledger(redis_client)
    ledger.reserve("kibana:a", 20, [("t", 2, NOW + timedelta(minutes=5))], NOW)
    view = ledger.view(["kibana:a"])
    [lease] = view.leases
    assert 299_000 <= lease.expires_ms - view.now_ms <= 300_000


def test_rebuild_marker_disappears_with_a_flush(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert not ledger.is_built()
    ledger.mark_built(NOW)
    assert ledger.is_built()
    redis_client.flushall()
    assert not ledger.is_built()
    # A forced rebuild may exceed capacity (the engine is the truth); then nothing more fits.
    lease = NOW + timedelta(minutes=1)
    assert len(ledger.reserve("kibana:a", 4, [("a", 2, lease), ("b", 2, lease), ("c", 2, lease)], NOW, force=True)) == 3
    assert ledger.reserve("kibana:a", 4, [("d", 1, lease)], NOW) == set()


def test_extend_moves_a_held_lease_only(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    # 1.5 s to extend it in: a loaded machine took over 300 ms between the two calls once.
    ledger.reserve("kibana:a", 20, [("t", 2, NOW + timedelta(milliseconds=1500))], NOW)
    ledger.extend("kibana:a", {"t": NOW + timedelta(minutes=1)}, NOW)
    ledger.extend("kibana:a", {"not-held": NOW + timedelta(minutes=1)}, NOW)
    time.sleep(1.7)
    assert ledger.used_units(["kibana:a"])["kibana:a"] == 2
    assert [lease.task_id for lease in ledger.leases(["kibana:a"])] == ["t"]


def test_the_scripts_survive_a_flushed_script_cache(redis_client: redis.Redis) -> None:
    # A promoted replica or a restarted Redis has no scripts cached: they load again on NOSCRIPT.
    ledger = Ledger(redis_client)
    redis_client.script_flush()
    assert ledger.reserve("kibana:a", 20, [("t", 2, NOW + timedelta(minutes=1))], NOW) == {"t"}


def test_given_data_from_another_server_then_no_push_is_switched_off(redis_client: redis.Redis) -> None:
    """The push markers' one switch checks, in the same script, that the ledger was built on this very
    server: a Sentinel failover between a caller's check (``claims_current``) and the script leaves a
    promoted replica holding the old master's epoch and claim markers but maybe not its last push
    markers, and a missing push marker there proves no push absent (the task would be given back while
    it runs: a second run). Found by reading the simulation's seed 140115 (0.8.7)."""
    from elastask import keys
    from elastask.parts.scripts import register

    switch_off = register(redis_client, "switch_off")
    ledger = Ledger(redis_client)

    def claim(doc_id: str, epoch: bytes) -> list[str]:
        redis_client.set(keys.LEDGER_EPOCH, epoch)
        redis_client.set(keys.claim_marker(doc_id, 5), epoch)
        return [keys.LEDGER_EPOCH, keys.claim_marker(doc_id, 5), keys.push_marker(doc_id, 5)]

    ledger.mark_built(NOW)
    here = redis_client.get(keys.LEDGER_EPOCH)
    assert isinstance(here, bytes) and ledger.claims_current()
    assert switch_off(keys=claim("t-here", here), args=[b"given-back", 60_000]) == [1]  # the control
    replicated = here.rsplit(b"@", 1)[0] + b"@" + b"0" * 40  # the old master's run_id
    assert switch_off(keys=claim("t-promoted", replicated), args=[b"given-back", 60_000]) == [0]
    assert redis_client.get(keys.push_marker("t-promoted", 5)) is None


def test_two_rebuilds_in_one_millisecond_are_two_epochs(redis_client: redis.Redis) -> None:
    """A claim marker of the ledger before a flush never matches the ledger rebuilt after it."""
    ledger = Ledger(redis_client)
    ledger.mark_built(NOW)
    first = redis_client.get("elastask:ledger:epoch")
    redis_client.flushall()
    ledger.mark_built(NOW)
    assert redis_client.get("elastask:ledger:epoch") != first

"""The in-flight ledger on the real Redis: atomic reservations, expiry, release, rebuild marker."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from elastask.parts.ledger import Ledger

pytestmark = pytest.mark.integration

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_reservations_fill_up_to_capacity_and_no_further(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    lease = NOW + timedelta(minutes=5)
    taken = ledger.reserve("kibana:a", 20, [(f"t{i}", 2, lease) for i in range(15)], NOW)
    assert len(taken) == 10
    assert ledger.used_units(["kibana:a"], NOW) == {"kibana:a": 20}
    assert ledger.reserve("kibana:a", 20, [("late", 1, lease)], NOW) == set()


def test_a_held_task_is_never_reserved_twice(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    lease = NOW + timedelta(minutes=5)
    assert ledger.reserve("kibana:a", 20, [("t1", 2, lease)], NOW) == {"t1"}
    assert ledger.reserve("kibana:a", 20, [("t1", 2, lease)], NOW) == set()
    assert ledger.used_units(["kibana:a"], NOW)["kibana:a"] == 2


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
    assert Ledger(redis_client).used_units(["kibana:a"], NOW)["kibana:a"] == 20


def test_expired_leases_free_their_slot_and_release_frees_at_once(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.reserve(
        "kibana:a", 20, [("short", 10, NOW + timedelta(seconds=1)), ("long", 10, NOW + timedelta(hours=1))], NOW
    )
    assert ledger.used_units(["kibana:a"], NOW)["kibana:a"] == 20
    later = NOW + timedelta(seconds=2)
    assert ledger.used_units(["kibana:a"], later)["kibana:a"] == 10
    assert ledger.release("kibana:a", ["long", "unknown"]) == 1
    assert ledger.used_units(["kibana:a"], later)["kibana:a"] == 0
    assert [lease.task_id for lease in ledger.leases(["kibana:a"])] == []


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
    ledger.reserve("kibana:a", 20, [("t", 2, NOW + timedelta(seconds=1))], NOW)
    ledger.extend("kibana:a", {"t": NOW + timedelta(minutes=1)})
    ledger.extend("kibana:a", {"not-held": NOW + timedelta(minutes=1)})
    assert ledger.used_units(["kibana:a"], NOW + timedelta(seconds=30))["kibana:a"] == 2
    assert [lease.task_id for lease in ledger.leases(["kibana:a"])] == ["t"]

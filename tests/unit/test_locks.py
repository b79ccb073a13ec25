"""The loops' Redis lock: renewed while held, released only by its holder, lost when another took it."""

from __future__ import annotations

import time

import fakeredis

from elastask.parts.locks import exclusive


def test_a_lock_held_longer_than_its_ttl_is_renewed_and_released_at_the_end() -> None:
    client = fakeredis.FakeRedis()
    with exclusive(client, "lock", 300) as lock:
        assert lock.taken
        time.sleep(0.7)  # more than twice the TTL
        assert lock.held() and client.exists("lock")
        with exclusive(client, "lock", 300) as other:
            assert not other.taken
    assert not client.exists("lock")


def test_a_lock_taken_over_by_another_holder_is_not_held_nor_released_by_the_first() -> None:
    client = fakeredis.FakeRedis()
    with exclusive(client, "lock", 300) as lock:
        client.set("lock", "someone else")
        assert not lock.held()
        time.sleep(0.2)  # the renewal sees it lost
        assert lock.lost.is_set()
    assert client.get("lock") == b"someone else"

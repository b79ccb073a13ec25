"""A Redis lock so a loop runs once at a time across every beat and worker on any machine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

# Delete the lock only if we still hold it: a lock that expired and was taken by another
# process must not be released by us.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def exclusive(client: redis.Redis, key: str, ttl_ms: int) -> Iterator[bool]:
    """Yield True if the lock was taken (and release it after), False if another process holds it."""
    token = uuid.uuid4().hex
    taken = bool(client.set(key, token, nx=True, px=ttl_ms))
    try:
        yield taken
    finally:
        if taken:
            client.eval(_RELEASE, 1, key, token)

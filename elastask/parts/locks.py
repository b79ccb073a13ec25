"""A Redis lock so a loop runs once at a time across every beat and worker on any machine.

redis-py's :class:`redis.lock.Lock` (SET NX PX with a token; release and extend by token, in Lua),
plus what a loop needs around it: a thread renewing it while its holder runs (a cycle slowed by the
engine must not lose it half way), and ``held()`` to ask just before a write that only its holder
may make (fencing): a holder that lost it (a pause longer than the TTL) abandons its writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from redis.exceptions import LockNotOwnedError

from elastask.parts.redis_errors import redis_errors

log = logging.getLogger(__name__)


class Lock:
    """One holding of the lock: ``taken`` if it was acquired, ``held()`` while it still is."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int) -> None:
        self.key = key
        self.ttl_ms = ttl_ms
        self.taken = False
        self.lost = threading.Event()
        self._stop = threading.Event()
        # thread_local=False: the renewal thread uses the token the holder's thread took.
        self._lock = client.lock(key, timeout=ttl_ms / 1000, blocking=False, thread_local=False)
        self._renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        with redis_errors(f"taking lock {self.key}"):
            self.taken = bool(self._lock.acquire(blocking=False))
        if self.taken:
            self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"renew {self.key}", daemon=True)
            self._renewer.start()
        return self.taken

    def held(self) -> bool:
        """True if this holder still has the lock (a Redis read): check it before a fenced write."""
        if not self.taken or self.lost.is_set():
            return False
        try:
            return bool(self._lock.owned())
        except redis.RedisError:
            return False

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.taken:
            # Lost while held (another holder has it now): nothing of ours to release.
            with redis_errors(f"releasing lock {self.key}"), suppress(LockNotOwnedError):
                self._lock.release()

    def _renew_until_stopped(self) -> None:
        # Renew at a third of the TTL: two renewals may fail (a Redis blip) before the lock runs out.
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                log.warning("lock %s was lost while held (a pause longer than %d ms?)", self.key, self.ttl_ms)
                self.lost.set()
                return
            except redis.RedisError as e:
                log.warning("could not renew lock %s (will retry): %s", self.key, e)


@contextmanager
def exclusive(client: redis.Redis, key: str, ttl_ms: int) -> Iterator[Lock]:
    """Yield the lock (``taken`` True if acquired, then renewed until the block ends, and released)."""
    lock = Lock(client, key, ttl_ms)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()

"""A Redis lock so a loop runs once at a time across every beat and worker on any machine.

The lock is renewed while its holder runs (a cycle slowed by the engine must not lose it half way)
and can be asked whether it is still held just before a write that only its holder may make
(fencing): a holder that lost it (a pause longer than the TTL) abandons its writes.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from elastask.parts.redis_errors import redis_errors
from elastask.parts.scripts import register

log = logging.getLogger(__name__)


class Lock:
    """One holding of the lock: ``taken`` if it was acquired, ``held()`` while it still is."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self.taken = False
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._release_script = register(client, "lock_release")
        self._renew_script = register(client, "lock_renew")
        self._renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        with redis_errors(f"taking lock {self.key}"):
            self.taken = bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if self.taken:
            self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"renew {self.key}", daemon=True)
            self._renewer.start()
        return self.taken

    def held(self) -> bool:
        """True if this holder still has the lock (a Redis read): check it before a fenced write."""
        if not self.taken or self.lost.is_set():
            return False
        try:
            current = self.client.get(self.key)
        except redis.RedisError:
            return False
        return current is not None and (current.decode() if isinstance(current, bytes) else str(current)) == self.token

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.taken:
            with redis_errors(f"releasing lock {self.key}"):
                self._release_script(keys=[self.key], args=[self.token])

    def _renew_until_stopped(self) -> None:
        # Renew at a third of the TTL: two renewals may fail (a Redis blip) before the lock runs out.
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                renewed = self._renew_script(keys=[self.key], args=[self.token, self.ttl_ms])
            except redis.RedisError as e:
                log.warning("could not renew lock %s (will retry): %s", self.key, e)
                continue
            if not renewed:
                log.warning("lock %s was lost while held (a pause longer than %d ms?)", self.key, self.ttl_ms)
                self.lost.set()
                return


@contextmanager
def exclusive(client: redis.Redis, key: str, ttl_ms: int) -> Iterator[Lock]:
    """Yield the lock (``taken`` True if acquired, then renewed until the block ends, and released)."""
    lock = Lock(client, key, ttl_ms)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()

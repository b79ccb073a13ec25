"""The clients of one process (search engine, Redis, Kibana), built in one place and passed in."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from elastask import tracing
from elastask.config import Settings
from elastask.core.clock import monotonic_ms
from elastask.parts.kibana import KibanaClient
from elastask.parts.ledger import Ledger
from elastask.parts.memory import ProcessMemory
from elastask.parts.nodes import NodeRegistry
from elastask.parts.push_schedule import PushSchedule
from elastask.parts.redis_client import build_redis
from elastask.parts.store import TaskStore, build_client

#: Pushes in flight at once per worker process and Kibana node.
PUSH_PARALLELISM = 16


@dataclass
class Runtime:
    """Everything the claim, dispatch and retry loops talk to."""

    settings: Settings
    store: TaskStore
    redis: redis.Redis
    ledger: Ledger
    nodes: NodeRegistry
    kibana: KibanaClient
    rng: random.Random
    #: The Celery worker this process belongs to (entry/heartbeat.py), None outside a worker: the
    #: claims it sends are recorded as held by it until a worker receives them.
    worker_id: str | None = None
    #: What this process already warned about once (e.g. task types that run more often than the claim loop).
    warned: set[str] = field(default_factory=set)
    #: Per Kibana node, the threads that push its tasks: a node that does not answer holds only its own.
    _pushers: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    _pushers_lock: threading.Lock = field(default_factory=threading.Lock)
    #: The pushes of tasks claimed ahead, started at their runAt (push_schedule.py).
    push_schedule: PushSchedule = field(default_factory=PushSchedule)
    #: What this process remembers between steps: watchers' turns, what it said, its last reads.
    memory: ProcessMemory = field(default_factory=ProcessMemory)
    #: The OpenTelemetry tracer of this process (tracing.py), None while tracing is off.
    tracer: Any = None
    #: This process's monotonic clock (ms) and its sleep: how long it waited or worked, never leases.
    #: Tests pass their own.
    monotonic_ms: Callable[[], float] = monotonic_ms
    sleep: Callable[[float], None] = time.sleep

    def pushers(self, owner_id: str) -> ThreadPoolExecutor:
        """The push threads of one node (made on first use)."""
        with self._pushers_lock:
            pool = self._pushers.get(owner_id)
            if pool is None:
                pool = self._pushers[owner_id] = _TrackedPool(
                    max_workers=PUSH_PARALLELISM, thread_name_prefix=f"elastask-push-{len(self._pushers)}"
                )
            return pool

    def drain_pushes(self, timeout_s: float) -> int:
        """Wait until every push submitted to the nodes' push threads is done (queued ones too: their
        push markers are set), at most ``timeout_s``; returns how many were not."""
        with self._pushers_lock:
            pending = [f for pool in self._pushers.values() if isinstance(pool, _TrackedPool) for f in pool.pending()]
        _done, not_done = wait(pending, timeout=timeout_s)
        return len(not_done)

    def now(self) -> datetime:
        """The time every lease decision is made on: Redis's clock, the ledger's own, the same on every
        machine (a worker whose clock is off neither gives back live leases nor pushes before runAt)."""
        return datetime.fromtimestamp(self.ledger.now_ms() / 1000, UTC)

    def close(self) -> None:
        """Close the network clients."""
        for pool in list(self._pushers.values()):
            pool.shutdown(wait=False, cancel_futures=True)
        self.nodes.close()
        self.store.close()
        self.redis.close()
        self.kibana.close()


class _TrackedPool(ThreadPoolExecutor):
    """A node's push threads, knowing the pushes not done yet (a warm shutdown waits for them)."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def pending(self) -> list[Future[Any]]:
        with self._pending_lock:
            return list(self._pending)


def build_runtime(settings: Settings) -> Runtime:
    """Clients for one process; call it after a fork, never at import time."""
    client = build_redis(settings)
    kibana = KibanaClient(settings.kibana)
    return Runtime(
        settings=settings,
        store=TaskStore(build_client(settings.elasticsearch), settings.index),
        redis=client,
        ledger=Ledger(client),
        nodes=NodeRegistry(settings, client, kibana),
        kibana=kibana,
        rng=random.Random(),
        tracer=tracing.from_environment(),
    )

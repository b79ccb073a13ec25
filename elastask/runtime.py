"""The clients of one process (search engine, Redis, Kibana), built in one place and passed in."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from elastask.config import Settings
from elastask.parts.kibana import KibanaClient
from elastask.parts.ledger import Ledger
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

    def pushers(self, owner_id: str) -> ThreadPoolExecutor:
        """The push threads of one node (made on first use)."""
        with self._pushers_lock:
            pool = self._pushers.get(owner_id)
            if pool is None:
                pool = self._pushers[owner_id] = ThreadPoolExecutor(
                    max_workers=PUSH_PARALLELISM, thread_name_prefix=f"elastask-push-{len(self._pushers)}"
                )
            return pool

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
    )

"""The clients of one process (search engine, Redis, Kibana), built in one place and passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass

import redis

from elastask.config import Settings
from elastask.kibana import KibanaClient
from elastask.ledger import Ledger
from elastask.nodes import NodeRegistry
from elastask.store import TaskStore, build_client


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

    def close(self) -> None:
        """Close the network clients."""
        self.store.client.close()
        self.redis.close()
        self.kibana.session.close()


def build_runtime(settings: Settings) -> Runtime:
    """Clients for one process; call it after a fork, never at import time."""
    client = redis.Redis.from_url(settings.redis_url.reveal(), socket_timeout=10, socket_connect_timeout=5)
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

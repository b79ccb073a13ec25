"""The configured Kibana nodes: their stable ownerIds and their health (a circuit breaker in Redis)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis
import requests

from elastask import keys
from elastask.config import KibanaNode, Settings
from elastask.parts.kibana import KibanaClient
from elastask.parts.redis_errors import redis_errors

log = logging.getLogger(__name__)

MAX_BACKOFF_MS = 60_000


@dataclass(frozen=True)
class Node:
    """A Kibana node elastask can route to."""

    config: KibanaNode
    owner_id: str
    capacity_units: int

    @property
    def url(self) -> str:
        return self.config.url


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class NodeRegistry:
    """Resolves ownerIds (``id`` from config, else ``kibana:<uuid>`` from /api/status, cached in Redis)."""

    def __init__(self, settings: Settings, client: redis.Redis, kibana: KibanaClient) -> None:
        self.settings = settings
        self.redis = client
        self.kibana = kibana

    def resolve(self) -> tuple[list[Node], list[str]]:
        """The nodes whose ownerId is known, and a problem line per node that could not be resolved."""
        with redis_errors("reading the nodes' ownerIds"):
            raw: dict[Any, Any] = cast(dict[Any, Any], self.redis.hgetall(keys.NODE_IDS))
        cached = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        nodes, problems = [], []
        for config in self.settings.kibana.hosts:
            owner_id = config.id or cached.get(config.url)
            if owner_id is None:
                try:
                    owner_id = "kibana:" + self.kibana.status_uuid(config)
                except (requests.RequestException, ValueError) as e:
                    problems.append(
                        f"Kibana {config.url}: cannot learn its ownerId from /api/status ({type(e).__name__}); "
                        f"it gets no tasks until it answers, or set kibana.hosts[].id"
                    )
                    continue
                with redis_errors(f"caching the ownerId of {config.url}"):
                    self.redis.hset(keys.NODE_IDS, config.url, owner_id)
            nodes.append(Node(config, owner_id, self.settings.capacity_units(config)))
        return nodes, problems

    def queue_names(self) -> list[str]:
        """The dispatch queues of every node whose ownerId can be learned now."""
        nodes, problems = self.resolve()
        for problem in problems:
            log.warning("%s", problem)
        return [keys.queue(node.owner_id) for node in nodes]

    # ---- health ----------------------------------------------------------------------------------

    def available(self, nodes: list[Node], now: datetime) -> list[Node]:
        """Nodes in rotation; a node whose breaker is open is probed once its wait is over."""
        open_until = self._open_until([node.owner_id for node in nodes])
        result = []
        for node in nodes:
            until = open_until[node.owner_id]
            if until is None:
                result.append(node)
            elif int(until) <= _ms(now):
                if self.kibana.is_available(node.config):
                    self.record_success(node)
                    result.append(node)
                else:
                    self.record_failure(node, now, "still not answering GET /api/status", hard=True)
        return result

    def in_rotation(self, owner_ids: Sequence[str]) -> dict[str, bool]:
        """Per node: True while its circuit breaker is closed (it gets tasks)."""
        return {owner: until is None for owner, until in self._open_until(owner_ids).items()}

    def breaker(self, owner_id: str) -> dict[str, int]:
        """A node's circuit breaker as numbers: failures in a row, open_until_ms, backoff_ms (absent: 0)."""
        with redis_errors(f"reading the breaker of {owner_id}"):
            raw = cast(dict[bytes, bytes], self.redis.hgetall(keys.health(owner_id)))
        return {field: int(raw.get(field.encode(), b"0")) for field in ("failures", "open_until_ms", "backoff_ms")}

    def _open_until(self, owner_ids: Sequence[str]) -> dict[str, int | None]:
        pipe = self.redis.pipeline(transaction=False)
        for owner in owner_ids:
            pipe.hget(keys.health(owner), "open_until_ms")
        with redis_errors("reading the nodes' breakers"):
            answers = pipe.execute()
        return {owner: None if value is None else int(value) for owner, value in zip(owner_ids, answers, strict=True)}

    def record_success(self, node: Node) -> None:
        """A push was accepted (or a probe answered): the node is healthy."""
        with redis_errors(f"closing the breaker of {node.owner_id}"):
            closed = self.redis.delete(keys.health(node.owner_id))
        if closed:
            log.info("Kibana node %s (%s) is back in rotation", node.url, node.owner_id)

    def record_failure(self, node: Node, now: datetime, detail: str, *, hard: bool) -> None:
        """A push failed; ``hard`` (connection refused) opens the breaker at once, else after N in a row."""
        key = keys.health(node.owner_id)
        with redis_errors(f"counting a failure of {node.owner_id}"):
            failures = int(cast(int, self.redis.hincrby(key, "failures", 1)))
            if not hard and failures < self.settings.node_failure_threshold:
                return
            previous = cast(bytes | None, self.redis.hget(key, "backoff_ms"))
            first = self.settings.node_probe_interval_ms
            backoff = first if previous is None else min(MAX_BACKOFF_MS, int(previous) * 2)
            was_open = self.redis.hget(key, "open_until_ms") is not None
            self.redis.hset(key, mapping={"open_until_ms": _ms(now) + backoff, "backoff_ms": backoff})
        if not was_open:
            log.warning(
                "Kibana node %s (%s) taken out of rotation after %d failure(s): %s; probing again in %.1fs",
                node.url,
                node.owner_id,
                failures,
                detail,
                backoff / 1000,
            )

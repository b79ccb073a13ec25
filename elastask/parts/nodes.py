"""The configured Kibana nodes: their stable ownerIds and their health (a circuit breaker in Redis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis

from elastask import keys
from elastask.config import KibanaNode, Settings
from elastask.parts.kibana import KibanaClient
from elastask.parts.redis_errors import redis_errors
from elastask.parts.scripts import register

log = logging.getLogger(__name__)

#: How long a claim cycle waits for nodes whose ownerId it must first ask (they answer at once when up).
RESOLVE_WAIT_S = 0.5
#: How long an ownerId lookup (``GET /api/status``) may take before the node counts as not answering.
RESOLVE_TIMEOUT_S = 3.0
#: How long a probe of a node out of rotation may take (it runs on a background thread).
PROBE_TIMEOUT_S = 2.0
#: Threads per process for lookups and probes (each waits on one node at most its timeout).
BACKGROUND_THREADS = 8
BREAKER_FIELDS = ("failures", "open_until_ms", "outage_since_ms", "probes")


@dataclass(frozen=True)
class Node:
    """A Kibana node elastask can route to."""

    config: KibanaNode
    owner_id: str
    capacity_units: int

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def names(self) -> tuple[str, str, str | None]:
        """What an operator may call it by: ownerId, URL, configured id (``elastask pause --node``)."""
        return self.owner_id, self.config.url, self.config.id

    def load(self, used_units: int) -> dict[str, Any]:
        """Its row of ``elastask status`` and the console: in flight / capacity in cost units."""
        return {
            "url": self.url,
            "owner_id": self.owner_id,
            "in_flight_units": used_units,
            "capacity_units": self.capacity_units,
            "load_percent": round(100 * used_units / self.capacity_units, 1) if self.capacity_units else None,
        }


class NodeRegistry:
    """Resolves ownerIds (``id`` from config, else ``kibana:<uuid>`` from /api/status, cached in Redis)
    and keeps each node's health: a circuit breaker in Redis, changed by Lua scripts on Redis's clock.

    Nothing here waits on a node longer than it must: ownerIds are learned and nodes out of rotation
    are probed on background threads, so one node that does not answer never holds up a claim cycle.
    """

    def __init__(self, settings: Settings, client: redis.Redis, kibana: KibanaClient) -> None:
        self.settings = settings
        self.redis = client
        self.kibana = kibana
        self._failure = register(client, "breaker_failure", "now")
        self._probe_turn = register(client, "breaker_probe", "now")
        self._background: ThreadPoolExecutor | None = None
        self._resolving: dict[str, Future[str]] = {}
        #: When the last question for a node's ownerId failed (monotonic s): it rests a probe interval.
        self._failed_at: dict[str, float] = {}
        self._probing: dict[str, Future[bool]] = {}

    def _pool(self) -> ThreadPoolExecutor:
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=BACKGROUND_THREADS, thread_name_prefix="elastask-node")
        return self._background

    def close(self) -> None:
        """Stop the background threads (a probe or lookup in flight finishes on its own)."""
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)

    def cached_owner_ids(self) -> dict[str, str]:
        """url -> ownerId of the nodes known without asking them (configured ``id`` or the Redis cache)."""
        with redis_errors("reading the nodes' ownerIds"):
            raw: dict[Any, Any] = cast(dict[Any, Any], self.redis.hgetall(keys.NODE_IDS))
        cached = {_text(k): _text(v) for k, v in raw.items()}
        known = {}
        for config in self.settings.kibana.hosts:
            owner_id = config.id or cached.get(config.url)
            if owner_id is not None:
                known[config.url] = owner_id
        return known

    def resolve(self, wait_s: float = RESOLVE_WAIT_S) -> tuple[list[Node], list[str]]:
        """The nodes whose ownerId is known, and a problem line per node that could not be resolved.

        Unknown ownerIds are asked of every such node at once, in the background; this waits for the
        answers at most ``wait_s``: a node that does not answer stays out until it does, the others go on.
        """
        known = self.cached_owner_ids()
        asked_before = set(self._resolving)
        asking = {
            config.url: future
            for config in self.settings.kibana.hosts
            if config.url not in known and (future := self._ask_owner_id(config)) is not None
        }
        # Only a question asked now is waited for: a node still silent on an earlier one costs a later
        # look nothing (a refill session learns the nodes every 100 ms).
        new = [future for url, future in asking.items() if url not in asked_before]
        if new and wait_s > 0:
            wait(new, timeout=wait_s)
        nodes, problems = [], []
        for config in self.settings.kibana.hosts:
            owner_id = known.get(config.url)
            future = asking.get(config.url)
            if owner_id is None and future is not None:
                owner_id, problem = self._answer(config, future)
                if problem is not None:
                    problems.append(problem)
            elif owner_id is None:
                problems.append(
                    f"Kibana {config.url}: did not answer /api/status for its ownerId; asked again every "
                    f"{self.settings.node_probe_interval_ms / 1000:.0f} s, no tasks until then "
                    "(or set kibana.hosts[].id)"
                )
            if owner_id is not None:
                nodes.append(Node(config, owner_id, self.settings.capacity_units(config)))
        return nodes, problems

    def _ask_owner_id(self, config: KibanaNode) -> Future[str] | None:
        """The question in flight for this node's ownerId, or a new one; None while a failed one rests
        (asked again a probe interval after it failed, as a node out of rotation is probed)."""
        future = self._resolving.get(config.url)
        if future is None:
            failed_at = self._failed_at.get(config.url)
            if failed_at is not None and time.monotonic() - failed_at < self.settings.node_probe_interval_ms / 1000:
                return None
            future = self._resolving[config.url] = self._pool().submit(self._learn_owner_id, config)
        return future

    def _learn_owner_id(self, config: KibanaNode) -> str:
        owner_id = "kibana:" + self.kibana.status_uuid(config, timeout_s=RESOLVE_TIMEOUT_S)
        with redis_errors(f"caching the ownerId of {config.url}"):
            self.redis.hset(keys.NODE_IDS, config.url, owner_id)
        return owner_id

    def _answer(self, config: KibanaNode, future: Future[str]) -> tuple[str | None, str | None]:
        """(ownerId, None) once the node answered; (None, the problem) otherwise."""
        if not future.done():
            return None, f"Kibana {config.url}: no answer yet from /api/status for its ownerId; no tasks until then"
        self._resolving.pop(config.url, None)  # answered or failed: the next call asks again if need be
        error = future.exception()
        if error is None:
            self._failed_at.pop(config.url, None)
            return future.result(), None
        self._failed_at[config.url] = time.monotonic()
        return None, (
            f"Kibana {config.url}: cannot learn its ownerId from /api/status ({type(error).__name__}); "
            f"it gets no tasks until it answers, or set kibana.hosts[].id"
        )

    def queue_names(self) -> list[str]:
        """The dispatch queues of every node whose ownerId is known now (never waits on a node)."""
        return [keys.queue(owner_id) for owner_id in self.cached_owner_ids().values()]

    # ---- health ----------------------------------------------------------------------------------

    def available(self, nodes: list[Node], now: datetime) -> list[Node]:
        """Nodes in rotation now; a node out of rotation whose probe is due is probed in the background.

        A probe that answers puts the node back in rotation for the next cycle; one that does not
        leaves it out until the next probe, ``node_probe_interval`` later.
        A probe never waits for a node longer than ``PROBE_TIMEOUT_S``.
        """
        del now  # the breaker runs on Redis's clock
        open_until = self._open_until([node.owner_id for node in nodes])
        result = []
        for node in nodes:
            if open_until[node.owner_id] is None:
                result.append(node)
            elif node.owner_id not in self._probing and self._take_probe_turn(node):
                self._probing[node.owner_id] = self._pool().submit(self._probe, node)
        return result

    def _take_probe_turn(self, node: Node) -> bool:
        with redis_errors(f"taking the probe turn of {node.owner_id}"):
            return bool(
                self._probe_turn(keys=[keys.health(node.owner_id)], args=[self.settings.node_probe_interval_ms])
            )

    def _probe(self, node: Node) -> bool:
        try:
            healthy = self.kibana.is_available(node.config, timeout_s=PROBE_TIMEOUT_S)
            if healthy:
                self.record_success(node)
            else:
                log.debug("Kibana node %s (%s) still not answering GET /api/status", node.url, node.owner_id)
            return healthy
        except Exception as e:  # a background thread: say it, never raise into the pool
            log.warning("probing Kibana node %s (%s) failed: %s", node.url, node.owner_id, e)
            return False
        finally:
            self._probing.pop(node.owner_id, None)

    def submit(self, fn: Callable[..., object], *args: object) -> Future[object]:
        """Run ``fn(*args)`` on this registry's background threads (node lookups, probes, watches)."""
        return self._pool().submit(fn, *args)

    def wait_for_probes(self, timeout_s: float = 10.0) -> None:
        """Wait until the probes in flight have answered (tests and tools)."""
        wait(list(self._probing.values()), timeout=timeout_s)

    def in_rotation(self, owner_ids: Sequence[str]) -> dict[str, bool]:
        """Per node: True while its circuit breaker is closed (it gets tasks)."""
        return {owner: until is None for owner, until in self._open_until(owner_ids).items()}

    def breaker(self, owner_id: str) -> dict[str, int]:
        """A node's circuit breaker as numbers (Redis's clock): failures in a row, open_until_ms,
        outage_since_ms, probes (failed probes this outage); absent: 0."""
        return self.breakers([owner_id])[owner_id]

    def breakers(self, owner_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Every node's breaker (see ``breaker``) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for owner in owner_ids:
            pipe.hgetall(keys.health(owner))
        with redis_errors("reading the nodes' breakers"):
            answers = cast(list[dict[bytes, bytes]], pipe.execute())
        return {
            owner: {field: int(raw.get(field.encode(), b"0")) for field in BREAKER_FIELDS}
            for owner, raw in zip(owner_ids, answers, strict=True)
        }

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

    def record_failure(self, node: Node, detail: str, *, hard: bool) -> None:
        """One dispatch job's pushes all failed; ``hard`` (connection refused) opens the breaker at once,
        else ``node_failure_threshold`` jobs in a row do. Counted once per outage: while the breaker is
        open, failures of pushes sent before it opened change nothing."""
        args = [1 if hard else 0, self.settings.node_failure_threshold, self.settings.node_probe_interval_ms]
        with redis_errors(f"counting a failure of {node.owner_id}"):
            opened, failures = cast(list[int], self._failure(keys=[keys.health(node.owner_id)], args=args))
        if opened:
            log.warning(
                "Kibana node %s (%s) taken out of rotation after %d failure(s) in a row: %s; "
                "probing it every %.1fs until it answers",
                node.url,
                node.owner_id,
                int(failures),
                detail,
                self.settings.node_probe_interval_ms / 1000,
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

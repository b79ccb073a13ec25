"""kombu's Redis transports, with one fix and one saving.

The saving: kombu builds a new ``redis.Redis`` object for every publish, acknowledgement and poll
(``conn_or_acquire``, ``pipe_or_acquire``), and redis-py fills ~160 response callbacks into each:
about 0.3 ms of the worker's main process, several times per dispatch job (cProfile of a backlog).
Here a channel keeps one client per connection pool: ``redis.Redis`` is safe to share (each command
takes a connection from the pool), and a new pool (after a reconnect) gets a new client.

The fix: a channel closed after its connection closed does not crash the worker.

The bug (kombu 5.7; reproduced by test_faults.py::test_redis_restarted_with_its_data_lost_while_tasks_are_in_flight):
when Redis goes away while the worker holds unacknowledged jobs (elastask acknowledges late, and
holds claimed-ahead jobs for their ETA), Celery closes the broker connection
(``Consumer.on_connection_error_after_connected``); closing the channel restores the unacknowledged
messages (``QoS.restore_unacked_once``), which builds a new connection pool from
``self.connection.client`` -- already ``None`` once the connection closed -- and raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not one of the transport's
connection errors, so ``ignore_errors`` lets it through and Celery stops the worker
("Unrecoverable error"). A plain Celery app does not hit it when no message is unacknowledged at the
moment Redis goes away.

Here that case raises a Redis ``ConnectionError`` instead, which Celery and kombu already treat as a
lost connection: the close goes on, the consumer reconnects, and the messages stay in Redis's
unacknowledged set for the visibility timeout, as after any lost connection. Selected by
``broker_transport`` in ``celeryapp.create_app`` for ``redis://``, ``rediss://`` and ``sentinel://``.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class _ClosedSafe:
    """Mixin: a connection-parameter lookup after the connection closed is a lost connection; one
    synchronous client per connection pool."""

    connection: Any
    _elastask_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool  # type: ignore[attr-defined]
        cached = self._elastask_client
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = super()._create_client(asynchronous=False)  # type: ignore[misc]
        self._elastask_client = (pool, client)
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed (reconnecting)")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        return params


class Channel(_ClosedSafe, kombu_redis.Channel):
    """kombu's Redis channel, closed-connection safe."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with that channel."""

    Channel = Channel


class SentinelChannel(_ClosedSafe, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, closed-connection safe."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with that channel."""

    Channel = SentinelChannel


def transport_for(url: str) -> str:
    """The ``broker_transport`` class path for a broker URL."""
    if url.startswith("sentinel://"):
        return f"{__name__}:SentinelTransport"
    return f"{__name__}:Transport"

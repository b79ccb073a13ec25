"""The broker connection: a worker that lost Redis consumes again within a second of its return.

Celery's consumer reconnects through kombu's ``Connection.ensure_connection`` with kombu's default
intervals (``Consumer.ensure_connected`` passes none, and no Celery setting reaches them): a retry 2 s
after the first failure, then 4, 6, 8 s... up to 30 s apart. Chaos seed 5402 (0.8.7, two lanes): after a
2.3 s Redis outage both workers' consumers connected again 3.8 s after Redis was back, and recurring
tasks due meanwhile started up to 3.1 s late; a longer outage would have left them idle for up to 30 s
after it. Here a connection retries at once, then every 0.5 s, then every second: a retry against a
Redis still down costs one refused connection. kombu's own transport options ``interval_start``,
``interval_step`` and ``interval_max`` (``broker_transport_options``) still decide when given.

Selected by ``amqp=`` in ``celeryapp.create_app``: Celery builds every broker connection (the
consumer's, beat's, the publishers') from ``app.amqp.Connection``.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from kombu.connection import Connection

#: kombu's reconnect intervals, in seconds: the first retry, the step added at each, the longest.
RECONNECT_INTERVALS = {"interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}


class PromptConnection(Connection):
    """A kombu connection whose reconnect intervals default to ``RECONNECT_INTERVALS``."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        # Positional arguments are (errback, max_retries, interval_start, interval_step, interval_max, ...).
        for position, (key, value) in enumerate(RECONNECT_INTERVALS.items(), start=2):
            if len(args) <= position:
                kwargs.setdefault(key, (self.transport_options or {}).get(key, value))
        return super().ensure_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


class PromptAMQP(AMQP):  # type: ignore[misc]  # celery ships no type hints
    """Celery's AMQP support with ``PromptConnection`` for every broker connection."""

    Connection = PromptConnection
    BrokerConnection = PromptConnection

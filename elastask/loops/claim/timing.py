"""How long the claim loop's lock lives, and how long a reservation may stay unwritten."""

from __future__ import annotations

from elastask.config import Settings

#: A look that begins a session reads every lease at most this often unless its room is short.
RECONCILE_EVERY_MS = 1000


def claim_lock_ttl_ms(settings: Settings) -> int:
    """How long the claim lock lives without renewal.

    Its holder renews it (a thread, every third of the TTL) however long an engine call takes, so
    the TTL only bounds how long a holder that died (a worker SIGKILLed in a refill session) or
    froze keeps every other claim job out; a frozen holder that wakes finds the lock lost before
    its claim write (the fence) and writes nothing. Renewed every second, two renewals may fail.
    """
    return max(3_000, 6 * settings.polling_interval_ms)


def pending_max_ms(settings: Settings) -> int:
    """How long a reservation may stay unwritten before reconcile judges it by the engine.

    A cycle that lost its lock (a pause longer than its TTL) may still have its claim ``_bulk`` in
    flight for up to the engine request timeout; a few seconds more for clocks and queues.
    """
    return claim_lock_ttl_ms(settings) + int(settings.elasticsearch.request_timeout_s * 1000) + 5000

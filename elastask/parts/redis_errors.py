"""The one place Redis errors become elastask's ``LedgerError`` (as store.engine_errors does for the engine).

Every Redis failure is a LedgerError, whoever met it: the ledger, the locks, the node breaker, the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from elastask.errors import LedgerError


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Raise ``LedgerError`` (retryable) naming what was being done, for any Redis failure inside."""
    try:
        yield
    except redis.RedisError as e:
        raise LedgerError(f"Redis, {what}: {type(e).__name__}: {e}") from e

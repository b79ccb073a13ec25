"""Bad task documents: skipped, counted and reported once (by id and field), never fatal."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import cast

import redis

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.core.documents import PRIVATE_FIELDS
from elastask.errors import DocumentError
from elastask.parts.redis_errors import redis_errors

log = logging.getLogger(__name__)

#: A malformed document is left out of claims (and not reported again) for this long.
QUARANTINE = timedelta(minutes=10)


def report_malformed(client: redis.Redis, error: DocumentError, now: datetime) -> None:
    """Log a malformed document once per quarantine period and leave it out of the next claims."""
    until_ms = epoch_ms(now + QUARANTINE)
    with redis_errors(f"quarantining malformed document {error.doc_id!r}"):
        first_time = client.zadd(keys.MALFORMED, {error.doc_id: until_ms}, nx=True)
    if first_time:
        # The user's params and state, and credentials, are never logged: the field and problem say enough.
        shown = "not shown" if error.field in PRIVATE_FIELDS else f"{error.raw!r:.120}"
        log.warning(
            "skipped malformed task document %r: field %r: %s (value %s)",
            error.doc_id,
            error.field,
            error.problem,
            shown,
        )


def quarantined(client: redis.Redis, now: datetime, limit: int = 5000) -> list[str]:
    """Ids of malformed documents to leave out of claims now."""
    now_ms = epoch_ms(now)
    with redis_errors("reading quarantined documents"):
        client.zremrangebyscore(keys.MALFORMED, "-inf", now_ms)
        members = cast(list[bytes], client.zrange(keys.MALFORMED, 0, limit - 1))
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

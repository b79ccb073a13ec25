"""Why a task was marked failed, kept in Redis for operators (Kibana's mapping has no field for it)."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import redis

from elastask import keys
from elastask.core.intervals import format_date
from elastask.parts.scripts import register

log = logging.getLogger(__name__)

#: The most failure reasons kept, and for how long: the oldest go first (the documents stay ``failed``).
MAX_REASONS = 10_000
REASON_TTL_MS = 30 * 86_400_000


def record_failure(
    client: redis.Redis,
    doc_id: str,
    now: datetime,
    reason: str,
    *,
    owner_id: str | None,
    task_type: str,
    max_reasons: int = MAX_REASONS,
) -> None:
    """Keep the reason (``elastask tasks failed`` shows it; the newest ``max_reasons``) and log it once."""
    entry = {"at": format_date(now), "reason": reason, "owner_id": owner_id, "task_type": task_type}
    try:
        script = register(client, "failure_record")
        script(
            keys=[keys.FAILED_REASONS, keys.FAILED_REASONS_BY_TIME],
            args=[doc_id, json.dumps(entry), int(now.timestamp() * 1000), max_reasons, REASON_TTL_MS],
        )
    except redis.RedisError as e:  # the document says failed; only the reason is lost
        log.error("could not keep the failure reason of %r in Redis: %s", doc_id, e)
    log.warning("task %r (%s) failed for good: %s", doc_id, task_type, reason)

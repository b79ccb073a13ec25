"""The console's controls: each the same operation as its CLI command, logged with who did what.

=========  ===================================  =====================================
action     target                               the same as
=========  ===================================  =====================================
pause      ``all``, ``type:<t>``, ``node:<n>``  ``elastask pause [--type t] [--node n]``
resume     ``all``, ``type:<t>``, ``node:<n>``  ``elastask resume ...``
drain      a node (ownerId, URL or id)          ``elastask nodes drain <node>``
undrain    a node                               ``elastask nodes undrain <node>``
requeue    a task id                            ``elastask tasks requeue <id>``
=========  ===================================  =====================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis

from elastask.core.intervals import format_date
from elastask.core.pauses import entry
from elastask.errors import ElastaskError
from elastask.ops import admin, draining, pausing
from elastask.ops.recent import record_action
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

ACTIONS = ("pause", "resume", "drain", "undrain", "requeue")


def pause_entry(target: str) -> str:
    """``all``, ``type:<t>`` or ``node:<n>`` as given; anything else is refused with what to write."""
    target = target.strip()
    if target == "all":
        return "all"
    scope, _, name = target.partition(":")
    if scope in ("type", "node") and name.strip():
        return entry(scope, name.strip())
    raise ElastaskError(f"pause target {target!r}: write all, type:<task type> (prefix* too) or node:<node>")


def perform(rt: Runtime, action: str, target: str) -> str:
    """Do one action; returns what was done, in words. Raises ElastaskError for a refusal."""
    target = target.strip()
    if not target:
        raise ElastaskError(f"{action}: say what to {action}")
    if action == "pause":
        pausing.pause(rt, [pause_entry(target)])
        return f"paused {pause_entry(target)}"
    if action == "resume":
        resumed, left = pausing.resume(rt, [pause_entry(target)])
        still = [p.text for p in left.pauses]
        return f"resumed {', '.join(resumed) or 'nothing (it was not paused in Redis)'}" + (
            f"; still paused: {', '.join(still)}" if still else ""
        )
    if action == "drain":
        node = draining.drain(rt, target)
        return f"draining {node.url} ({node.owner_id}): no new pushes; its runs finish"
    if action == "undrain":
        resumed = draining.undrain(rt, target)
        return f"undrained {target}" if resumed else f"{target} was not drained"
    if action == "requeue":
        doc = admin.requeue(rt, target, datetime.now(UTC))
        return f"requeued {doc.id}: idle now, attempts 0"
    raise ElastaskError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")


def audited(rt: Runtime, request: Mapping[str, Any], who: str, source: str) -> dict[str, Any]:
    """Do the action ``request`` names as ``who`` (from ``source``, the client's address); log and keep
    it whatever its result. Returns ``{"ok", "message"}``."""
    action, target = str(request.get("action", "")), str(request.get("target", ""))
    try:
        message, ok = perform(rt, action, target), True
    except ElastaskError as e:
        message, ok = str(e), False
    except redis.RedisError as e:
        message, ok = f"Redis (redis.url) cannot be written: {type(e).__name__}: {e}", False
    log.info("console: %s %s %r by %s from %s: %s", "did" if ok else "refused", action, target, who, source, message)
    record = {"at": format_date(datetime.now(UTC)), "who": who, "from": source, "action": action, "target": target}
    try:
        record_action(rt.redis, {**record, "ok": ok, "message": message})
    except redis.RedisError as e:  # logged above; the page's list of actions misses it
        log.warning("console: could not keep the action in Redis: %s", e)
    return {"ok": ok, "message": message}

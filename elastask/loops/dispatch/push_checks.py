"""The checks a claimed task passes right before its push, in this order: not paused since its claim, still
the claim its job carries (a real-time read), and its push marker set (the push switch: a claim is pushed at
most once, and never both pushed and given back).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TypeVar

import redis

from elastask import keys
from elastask.core import policy
from elastask.core.messages import ClaimedTask
from elastask.errors import LedgerError, PushMarkersUnknown
from elastask.loops.dispatch.outcomes import DispatchOutcome, DispatchReport, give_back_tasks, warn
from elastask.loops.dispatch.push_markers import pushed_value
from elastask.loops.dispatch.renewal import remaining_ms
from elastask.loops.pauses.read import read_pauses, recent_pauses
from elastask.parts.nodes import Node
from elastask.parts.redis_errors import redis_errors
from elastask.parts.scripts import register
from elastask.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")

_PUSH_MARKER_EXTRA_MS = int(policy.PUSH_MARKER_EXTRA.total_seconds() * 1000)


def leave_out_paused(
    rt: Runtime, node: Node, tasks: list[ClaimedTask], now: datetime, report: DispatchReport, *, step: bool = False
) -> list[ClaimedTask]:
    """Tasks paused since their claim (their type or node, or everything) are given back, attempts kept.
    A scheduled ``step`` may use this process's read of the last 0.1 s (``recent_pauses``)."""
    pauses = recent_pauses(rt, now) if step else read_pauses(rt, now)
    if not pauses or not tasks:
        return tasks
    paused = [t for t in tasks if pauses.node_paused(node.names) or pauses.type_paused(str(t.body.get("taskType")))]
    if paused:
        log.info("%d task(s) for %s paused since their claim; giving them back", len(paused), node.owner_id)
        give_back_tasks(rt, node.owner_id, paused)
        report.outcomes.update(dict.fromkeys((t.doc_id for t in paused), DispatchOutcome.PAUSED))
    return [t for t in tasks if t not in paused]


def still_claimed(rt: Runtime, tasks: list[ClaimedTask], report: DispatchReport) -> list[ClaimedTask]:
    """The tasks whose document is still the claim this job carries: one real-time read of their versions
    (no source), as Kibana's claimer reads its claims back with a ``bulkGet`` before it runs them.

    A task that moved on since the claim (the retry loop or an operator took it back, or it was claimed
    again) is neither pushed nor given back: its document and its slot are no longer this job's. A task
    whose read failed (an error item) is not pushed either: its lease decides.
    """
    if not tasks:
        return tasks
    current = rt.store.mget_sources([task.doc_id for task in tasks], fields=())
    kept = []
    for task in tasks:
        if task.doc_id not in current:
            report.outcomes[task.doc_id] = DispatchOutcome.UNREAD
            continue
        hit = current[task.doc_id]
        if hit is None or (hit.get("_seq_no"), hit.get("_primary_term")) != (task.seq_no, task.primary_term):
            warn(task, "task %r moved on since its claim (taken back or claimed again); not pushing it", task.doc_id)
            report.outcomes[task.doc_id] = DispatchOutcome.MOVED_ON
            continue
        kept.append(task)
    return kept


def mark_pushed(
    rt: Runtime,
    tasks: Sequence[ClaimedTask],
    now: datetime,
    report: DispatchReport,
    *,
    token: str,
    inherited: Sequence[str] = (),
) -> list[ClaimedTask]:
    """Set each claim's push marker to this execution's ``token`` (one script); a claim another push marked
    first is not pushed again. Markers an earlier execution of the same job set (``inherited``: it failed
    before any push) are this one's. A Redis error is tried once more before it raises: the script is
    idempotent for one token, so a reply lost after the markers applied finds them this execution's."""
    if not tasks:
        return []
    ttl_ms = {task.doc_id: max(remaining_ms(task, now), task.lease_ms) + _PUSH_MARKER_EXTRA_MS for task in tasks}
    mine = pushed_value(token)
    taken = [pushed_value(t) for t in inherited]
    script = register(rt.redis, "mark_pushed")
    markers = [keys.push_marker(task.doc_id, task.claim) for task in tasks]
    args: list[bytes | int] = [mine, len(taken), *taken, *(ttl_ms[task.doc_id] for task in tasks)]
    with _markers_unknown(token, "setting push markers"):
        marked = _once_more(lambda: script(keys=markers, args=args))
    fresh = []
    for task, was_set in zip(tasks, marked, strict=True):
        if was_set:
            fresh.append(task)
        else:
            warn(task, "task %r: this claim was already pushed once (redelivered job); its lease decides", task.doc_id)
            report.outcomes[task.doc_id] = DispatchOutcome.DUPLICATE
    renewed = [task for task in fresh if task.seq_no != task.claim]
    if renewed:
        # A renewed lease is a new version of the document: the retry loop looks for its push under it.
        def set_renewed() -> object:
            pipe = rt.redis.pipeline(transaction=False)
            for task in renewed:
                pipe.set(keys.push_marker(task.doc_id, task.seq_no), mine, px=ttl_ms[task.doc_id])
            return pipe.execute()

        with _markers_unknown(token, "setting push markers of renewed leases"):
            _once_more(set_renewed)
    return fresh


@contextlib.contextmanager
def _markers_unknown(token: str, what: str) -> Iterator[None]:
    """A Redis failure setting push markers (they may have applied) as ``PushMarkersUnknown``: the job's
    retry under ``token`` takes them as its own. Raised only before any push of the execution."""
    try:
        with redis_errors(what):
            yield
    except LedgerError as e:
        raise PushMarkersUnknown(str(e), token) from e


def _once_more(call: Callable[[], T]) -> T:
    """``call``, and once more after a Redis error (a reply lost on a dropped connection: redis-py connects
    again); only for idempotent calls."""
    try:
        return call()
    except redis.RedisError as e:
        log.info("Redis call failed (%s); trying once more", e)
        return call()

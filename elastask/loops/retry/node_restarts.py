"""A Kibana node that restarted lost the runs it had: their leases end at once, not at their retryAt.

Kibana runs pushed tasks in its memory (the ephemeral queue), so a restart ends them without an
outcome, and until their leases run out (the task's timeout: 5 minutes by default) their slots stay
held and the node, back and idle, gets nothing. So a watcher (``watch_restarts``, a step the claim
cycle takes explicitly) has every node in rotation that holds leases asked for its process uptime
(``GET /api/status``, ``metrics.process.uptime_in_millis``) at most once per ``WATCH_EVERY_MS`` across
every process (a Redis turn), on a background thread.
The start it gives (Redis's now - uptime) is kept per node; a later one means the node restarted.

Then every lease on it whose push could only have reached the old process ends as the retry loop
ends an expired one (a conditional write; the attempt counts, the run was lost), and its slot is
freed; a lease elastask claimed and never pushed (its claim marker, no push marker) has its push
switched off and its attempt returned, as the retry loop does for one.

A push leaves at most the dispatch slack after the claim (``startedAt``), and the start is read late
by at most the time the question took plus the age of Kibana's sample of its uptime (its
``metrics.collection_interval_in_millis``, 5 s by default): a lease counts as lost only when
``startedAt`` + its slack + those + ``MARGIN_MS`` is before the start. A node that answers without
its uptime (an unauthenticated, redacted status) is never judged: its leases run out as before.

The sample's age is what leaves a node that crashed right after its slots were filled waiting out
those leases (pushes in the seconds before the start cannot be told from pushes to the new process).
So the start is narrowed down by the next answers: when the uptime shown changed since an answer
received before the question was asked, its sample was taken after that earlier question was asked
(it was not the latest sample then), so the process started after that moment minus the new uptime.
Questions can overlap (a slow one, another process's turn): an answer received after this question
was asked may have been served after it, and narrows nothing. For ``REFINE_FOR_MS`` after a restart,
each answer that narrows the start down judges the node's leases again against it (pushes before it
reached the old process).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import redis

from elastask import keys
from elastask.core import policy, queries
from elastask.core.clock import epoch_ms
from elastask.core.documents import TaskDocument, parse_hit
from elastask.errors import DocumentError, ElastaskError
from elastask.loops.claim.dead_cycles import claimed_by_reserving_cycle
from elastask.loops.dispatch.push_markers import switch_off_pushes
from elastask.loops.retry.loop import lost_run_expiry, unpushed_claims, write_expiries
from elastask.parts.ledger import Lease
from elastask.parts.nodes import Node
from elastask.parts.redis_errors import redis_errors
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: How often a node holding leases is asked for its uptime (one question per node across every process).
WATCH_EVERY_MS = 1000
#: A process start this much later than the one known is another process (uptimes read a moment
#: apart give starts a few ms apart).
RESTART_TOLERANCE_MS = 5000
#: Kept between a lease's last possible push and the start it is judged against.
MARGIN_MS = 1000
#: The most leases of one node read back at a restart (a node holds at most its capacity).
MAX_LEASES = 1000
#: The watcher's name in the process's memory (its turns).
WATCHER = "node-restarts"
#: How long after a restart later answers may narrow its start down and end more leases.
REFINE_FOR_MS = 15_000
#: A narrower start judges the leases again only when it moved by at least this much.
REFINE_STEP_MS = 250
#: Redis's clock as two processes read it may differ by this much (runtime.py: each reading is at most
#: a 2 ms round trip old, never ahead): an earlier answer must have arrived this much before a question.
ORDER_SLACK_MS = 50


def watch_restarts(rt: Runtime, nodes: Sequence[Node]) -> None:
    """The watcher's step: ask the nodes whose turn it is for their uptime, in the background (one
    Redis round trip, at most once per ``WATCH_EVERY_MS`` in a process: most steps make none)."""
    if not nodes or not rt.memory.turn(WATCHER, WATCH_EVERY_MS, rt.monotonic_ms()):
        return
    pipe = rt.redis.pipeline(transaction=False)
    for node in nodes:
        pipe.set(keys.restart_watch_turn(node.owner_id), 1, nx=True, px=WATCH_EVERY_MS)
    with redis_errors("taking the turns to ask nodes for their uptime"):
        turns = pipe.execute()
    for node, turn in zip(nodes, turns, strict=True):
        if turn:
            rt.nodes.submit(_check_quietly, rt, node)


def _check_quietly(rt: Runtime, node: Node) -> None:
    try:
        check_restart(rt, node)
    except ElastaskError as e:  # a background thread: the leases run out as before
        log.warning("checking whether Kibana node %s restarted failed: %s", node.url, e)
    except Exception:
        log.exception("checking whether Kibana node %s restarted failed", node.url)


def check_restart(rt: Runtime, node: Node) -> int:
    """Ask the node its uptime; when it restarted since last asked, end the leases it lost (and, for a
    while after, those a narrower start shows lost too). Returns how many."""
    asked_ms = rt.monotonic_ms()
    answer = rt.kibana.uptime(node.config)
    if answer is None:
        return 0
    uptime, every = answer.ms, answer.sampled_every_ms
    now = rt.now()
    took_ms = int(rt.monotonic_ms() - asked_ms)
    started_ms = epoch_ms(now) - uptime
    with redis_errors(f"recording when {node.owner_id} started"):
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hget(keys.NODE_STARTS, node.owner_id)
        pipe.hset(keys.NODE_STARTS, node.owner_id, str(started_ms))
        pipe.hget(keys.NODE_UPTIMES, node.owner_id)
        known, _, last = pipe.execute()
    restarted = known is not None and started_ms > int(known) + RESTART_TOLERANCE_MS
    # The uptime is Kibana's last sample, up to its interval old: the real start may be that much earlier,
    # and a push since then may run in the new process.
    earliest = started_ms - every - took_ms
    received = epoch_ms(now)
    before = UptimeAnswer.parse(last)
    later = None  # what a sample the last answer did not show says: only narrowing relies on it
    if before is not None and before.received_ms + ORDER_SLACK_MS <= received - took_ms and uptime != before.uptime_ms:
        # The last answer arrived before this question was asked, and this sample is not the one it
        # showed: it was taken after that question was asked.
        later = before.asked_ms - uptime
        earliest = max(earliest, later)
    narrower = False
    if restarted:
        judged: int | None = earliest
    elif before is None or before.judged_ms is None or uptime > REFINE_FOR_MS + every:
        judged = None  # no restart being narrowed down
    elif later is not None and later >= before.judged_ms + REFINE_STEP_MS:
        judged, narrower, earliest = later, True, later
    else:
        judged = before.judged_ms

    def remember(judged_ms: int | None) -> None:
        answer = UptimeAnswer(uptime, received - took_ms, received, judged_ms)
        with contextlib.suppress(redis.RedisError):  # without it, a restart is judged on one answer, as before
            rt.redis.hset(keys.NODE_UPTIMES, node.owner_id, answer.dump())

    remember(judged)
    if restarted:
        with contextlib.suppress(redis.RedisError):  # the console's "restarts noticed"; a count, best effort
            rt.redis.hincrby(keys.RECENT_RESTARTS, node.owner_id, 1)
        log.warning(
            "Kibana node %s (%s) restarted %.1f s ago: ending the leases of the runs it lost",
            node.url,
            node.owner_id,
            uptime / 1000,
        )
    elif not narrower:
        return 0
    try:
        return end_lost_runs(rt, node, earliest - MARGIN_MS)
    except ElastaskError:
        # Not judged (the engine or Redis failed): the next answer judges again (a restart is seen
        # again: the start known before is put back).
        with contextlib.suppress(redis.RedisError):
            if restarted:
                rt.redis.hset(keys.NODE_STARTS, node.owner_id, known)
        remember(None if restarted or before is None else before.judged_ms)
        raise


class UptimeAnswer(NamedTuple):
    """A node's last uptime answer, kept in Redis (``keys.NODE_UPTIMES``): the uptime shown, when it was
    asked and when it arrived (Redis's clock), and the start its restart's leases were last judged against
    (None: no restart being narrowed down). Whichever process an earlier answer came from, a sample a
    question asked after it arrived shows, and it did not, was taken after it was asked (a newer sample
    of the same process, or a new process, started after the old one last answered)."""

    uptime_ms: int
    asked_ms: int
    received_ms: int
    judged_ms: int | None

    def dump(self) -> str:
        return json.dumps(
            {"uptime": self.uptime_ms, "asked": self.asked_ms, "received": self.received_ms, "judged": self.judged_ms}
        )

    @classmethod
    def parse(cls, raw: bytes | str | None) -> UptimeAnswer | None:
        if raw is None:
            return None
        try:
            kept = json.loads(raw)
            judged = kept.get("judged")
            return cls(
                int(kept["uptime"]), int(kept["asked"]), int(kept["received"]), None if judged is None else int(judged)
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # not ours, or from another version: judged on one answer, as before


def end_lost_runs(rt: Runtime, node: Node, restarted_ms: int) -> int:
    """End the node's leases whose push came before ``restarted_ms`` (Redis's clock); free their slots."""
    now = rt.now()
    hits = rt.store.search_hits(
        queries.in_flight(now, [node.owner_id], size=MAX_LEASES), f"reading the leases of {node.owner_id}"
    )
    lost: list[TaskDocument] = []
    lost_hits: dict[str, dict[str, Any]] = {}
    for hit in hits:
        try:
            doc = parse_hit(hit)
        except DocumentError:
            continue  # reported by the loops that claim and retry it
        timeout_ms = rt.settings.for_type(doc.task_type).timeout_ms
        if doc.started_at is not None and (
            epoch_ms(doc.started_at) + policy.dispatch_slack_ms(doc, timeout_ms) < restarted_ms
        ):
            lost.append(doc)
            lost_hits[doc.id] = hit
    if not lost:
        return 0
    why = f"Kibana node {node.url} restarted (the run was lost)"
    # The slots of these leases, read before the writes: a slot freed and taken again by a newer claim of
    # the same task in between is that claim's, not ours to free (the fences).
    leases = {lease.task_id: lease for lease in rt.ledger.leases([node.owner_id])}
    returned = _never_pushed(rt, lost, now) | _never_sent(rt, leases, lost_hits)
    plans = [
        (doc, policy.attempt_returned(doc) if doc.id in returned else lost_run_expiry(rt, doc, now, why))
        for doc in lost
    ]
    fences = {task_id: lease.claim for task_id, lease in leases.items()}
    _, written = write_expiries(rt, plans, now)
    rt.ledger.release(node.owner_id, [doc.id for doc in written], claims=fences)
    if plans:
        log.warning("%d lease(s) on %s ended after its restart, %d written", len(plans), node.owner_id, len(written))
    return len(written)


def _never_sent(rt: Runtime, leases: Mapping[str, Lease], hits: Mapping[str, dict[str, Any]]) -> set[str]:
    """The leases whose claim cycle wrote them and never confirmed their slot (still its pending
    reservation): it sends no dispatch job before its confirm, so nothing pushed them and their attempt
    is returned. Such a claim has no claim marker, so ``_never_pushed`` cannot tell (the cycle died or
    froze between its claim write and its confirm; its dead-cycle judgement may not have come yet). A
    frozen cycle that wakes and sends the job anyway pushes nothing: the job's real-time read finds the
    claim moved on. After Redis lost writes (not rebuilt yet) a pending slot proves nothing (its confirm
    may be what was lost): none is returned."""
    pending = {task_id for task_id, lease in leases.items() if lease.reserved_by is not None and task_id in hits}
    if not pending or not rt.ledger.claims_current():
        return set()
    return {task_id for task_id in pending if claimed_by_reserving_cycle(leases[task_id], hits[task_id])}


def _never_pushed(rt: Runtime, docs: Sequence[TaskDocument], now: datetime) -> set[str]:
    """The leases elastask claimed and never pushed, their pushes switched off now (a dispatch job still
    holding one pushes nothing): the run never began, so their attempt is returned."""
    never = unpushed_claims(rt, docs)
    unpushed = [doc for doc in docs if doc.id in never and doc.seq_no is not None]
    now_ms = epoch_ms(now)
    switched = switch_off_pushes(
        rt,
        [(doc.id, doc.seq_no or 0, max(0, epoch_ms(doc.retry_at) - now_ms if doc.retry_at else 0)) for doc in unpushed],
    )
    return {doc_id for doc_id, _claim in switched}

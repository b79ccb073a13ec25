"""Keeping the ledger true to the engine: rebuild it after Redis lost it, and free what Kibana finished.

The engine is the source of truth for which tasks are still running; the ledger (Redis) is the fast,
atomic copy the claim loop reserves from. Reads here are real-time (``mget``), never a search: a
near-real-time search can still show a task claimed a moment ago as idle and free a slot in use.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any

from elastask.core import policy, queries
from elastask.core.clock import epoch_ms
from elastask.core.documents import INSTANCE_COSTS
from elastask.core.intervals import parse_date
from elastask.loops.claim.dead_cycles import claimed_by_reserving_cycle, give_back_dead_claims, orphaned_reservations
from elastask.loops.claim.limited import slot_request
from elastask.loops.claim.search import lookahead_ms
from elastask.parts.ledger import Lease, LeaseView, SlotRequest
from elastask.parts.nodes import Node
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: The fields ``finished`` looks at: the ledger's reads fetch only these.
FINISHED_FIELDS = ("task.ownerId", "task.status", "task.attempts", "task.runAt", "task.startedAt")
#: How long a finished task is left out of the due search: the engine's refresh interval (1 s, as
#: Kibana's index has it) and a margin; until then the near-real-time search shows its old version.
FINISHED_MEMORY_MS = 1500


def ensure_ledger(rt: Runtime, nodes: Sequence[Node], now: datetime) -> int | None:
    """Make sure the ledger mirrors the engine before claiming: the leases rebuilt, or None if it was there.

    Redis lost the ledger (and with it the claim lock): rebuild it from the engine, then claim at once.
    A cycle that started before the loss may still be writing claims the rebuild did not see: its
    confirm step (loops/claim/write.py) takes their slots again only where they fit, and gives back the
    others unpushed, so no pause is needed to keep the cap.
    """
    if not rt.ledger.is_built():
        return rebuild_ledger(rt, nodes, now)
    return None


def reconcile_ledger(rt: Runtime, view: LeaseView, pending_max_ms: int) -> tuple[set[str], int]:
    """Every lease of ``view`` judged once, with nothing remembered (draining a node; a beat cycle's look)."""
    return LeaseReader().reconcile(rt, view, pending_max_ms)


@dataclass
class LeaseReader:
    """Frees the slots of tasks Kibana finished (deleted, back to idle, or owned by someone else).

    The one owner of the versions leases were last seen running at: a refill session keeps one
    reader for its looks, so a read of an unchanged lease skips its source (``read_leases``).
    """

    versions: LeaseVersions = field(default_factory=lambda: LeaseVersions())

    def reconcile(self, rt: Runtime, view: LeaseView, pending_max_ms: int) -> tuple[set[str], int]:
        """Judge every lease of ``view`` by the engine; the ids still held, and how many were freed.

        A reservation whose claim may not be written yet (another cycle still running, for up to
        ``pending_max_ms``) looks idle in the engine and is never judged by it, unless its worker
        stopped beating (loops/claim/dead_cycles.py: a claim that cycle wrote is given back); nor is a
        lease whose real-time read failed (unknown). Expiry is judged on Redis's clock (``view.now_ms``). To judge
        only some leases, pass a view of those (``likely_finished``).
        """
        now_ms = view.now_ms
        orphaned = orphaned_reservations(rt, view)  # their worker died: judged now (loops/claim/dead_cycles.py)
        for task_id in orphaned:
            self.versions.drop(task_id)
        held = {
            lease.task_id
            for lease in view.leases
            if lease.pending_since_ms is not None
            and now_ms - lease.pending_since_ms < pending_max_ms
            and lease.task_id not in orphaned
        }
        judged = [lease for lease in view.leases if lease.task_id not in held]
        if not judged:
            return held, 0
        hits = read_leases(rt, sorted({lease.task_id for lease in judged}), self.versions)
        done: dict[str, list[str]] = defaultdict(list)
        forget_at: dict[str, int] = {}
        dead_claims: list[tuple[Lease, dict[str, Any]]] = []
        for lease in judged:
            live = lease.expires_ms > now_ms
            hit = hits.get(lease.task_id)
            if lease.task_id in orphaned and isinstance(hit, dict) and claimed_by_reserving_cycle(lease, hit):
                dead_claims.append((lease, hit))
                continue
            if live and lease.task_id not in hits:
                held.add(lease.task_id)  # the read failed: unknown, so the lease stands
                continue
            if hit is UNCHANGED:
                if live:
                    held.add(lease.task_id)  # the very document last judged held
                    continue
                hit = None  # expired: judged as gone, its slot freed
            task = hit.get("_source", {}).get("task", {}) if hit else {}
            if live and not finished(hit, task, lease.owner_id):
                held.add(lease.task_id)
                if hit is not None:
                    self.versions.seen(lease.task_id, _version(hit))
            else:
                done[lease.owner_id].append(lease.task_id)
                forget_at[lease.task_id] = _search_again_at(task, now_ms, lookahead_ms(rt.settings))
                self.versions.drop(lease.task_id)
        # Each slot freed only while it is the claim judged here: a look that paused past the claim
        # lock finds a slot freed and taken again since by a newer claim of the same task, and leaves it.
        released = rt.ledger.release_many(done, claims={lease.task_id: lease.claim for lease in judged})
        rt.ledger.mark_finished(forget_at)
        given_back = give_back_dead_claims(rt, dead_claims)
        held |= {lease.task_id for lease, _ in dead_claims} - given_back
        return held, released + len(given_back)


def likely_finished(view: LeaseView, ids: Collection[str]) -> LeaseView:
    """The part of ``view`` worth judging now: the leases ``ids`` names, and every expired one."""
    return replace(
        view, leases=[lease for lease in view.leases if lease.task_id in ids or lease.expires_ms <= view.now_ms]
    )


#: A document's version: (``_seq_no``, ``_primary_term``).
Version = tuple[int, int]


class Unchanged(Enum):
    """``read_leases``'s answer for a document still at the version it was last judged held at."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED
#: What ``read_leases`` tells of one lease: its hit, None (the document is gone), or UNCHANGED.
LeaseRead = dict[str, Any] | None | Unchanged


@dataclass
class LeaseVersions:
    """The version each lease was last seen still running at (its claim, or a read): ``read_leases``
    reads those without their source first."""

    by_id: dict[str, Version] = field(default_factory=dict)

    def seen(self, task_id: str, version: Version) -> None:
        self.by_id[task_id] = version

    def drop(self, task_id: str) -> None:
        self.by_id.pop(task_id, None)

    def keep_only(self, lease_ids: set[str]) -> None:
        """Forget the versions of leases no longer in the ledger."""
        for task_id in [t for t in self.by_id if t not in lease_ids]:
            del self.by_id[task_id]


def read_leases(rt: Runtime, ids: Sequence[str], versions: LeaseVersions) -> dict[str, LeaseRead]:
    """Real-time reads of leased tasks: id -> hit (``FINISHED_FIELDS``), None if gone, UNCHANGED, or left
    out when the read failed.

    A lease whose version is known is read first without its source: gone, or still that version
    (the document ``finished`` judged held then, so held now), needs nothing more; only a changed one
    is read again with its fields. Most reads in a refill session find a task still running, and the
    engine serves a version-only read for far less than a filtered one.
    """
    known = [i for i in ids if i in versions.by_id]
    hits: dict[str, LeaseRead] = {}
    changed: list[str] = []
    for task_id, hit in rt.store.mget_sources(known, fields=()).items():
        if hit is not None and _version(hit) == versions.by_id[task_id]:
            hits[task_id] = UNCHANGED
        elif hit is None:
            hits[task_id] = None
        else:
            changed.append(task_id)
    unknown = [i for i in ids if i not in versions.by_id]
    hits.update(rt.store.mget_sources([*unknown, *changed], fields=FINISHED_FIELDS))
    return hits


def _version(hit: dict[str, Any]) -> Version:
    return int(hit.get("_seq_no", -1)), int(hit.get("_primary_term", -1))


def _search_again_at(task: Any, now_ms: int, lookahead: int) -> int:
    """Until when (ms) a finished task stays out of the due search: FINISHED_MEMORY_MS, or less for a
    recurring task rescheduled sooner: no later than its claim-ahead window opens (``lookahead`` ms
    before its runAt), so a look then may claim it ahead and push it at its runAt. Its next run must not
    wait for the index to refresh, nor for the first look after its runAt: up to a polling interval late."""
    until = now_ms + FINISHED_MEMORY_MS
    try:
        return min(until, epoch_ms(parse_date(task["runAt"])) - lookahead)
    except (KeyError, TypeError, ValueError):
        return until


def finished(hit: dict[str, Any] | None, task: Any, owner_id: str) -> bool:
    """True when the engine shows Kibana is done with the task on this node, so its slot is free.

    Done: the document is gone (a one-shot task succeeded), another node owns it, or it is idle
    with ``attempts: 0`` (Kibana's outcome of a recurring task). A task the retry loop sent back to
    idle keeps its attempts: the node may still be running it until its own timeout, so its slot is
    held until the lease (plus grace) runs out.
    """
    if hit is None or not isinstance(task, dict):
        return True
    if task.get("ownerId") != owner_id:
        return True
    return bool(task.get("status") == "idle" and task.get("attempts") == 0)


def rebuild_ledger(rt: Runtime, nodes: Sequence[Node], now: datetime) -> int:
    """Redis lost the ledger: take every live lease back from the engine before claiming anything.

    Every ownerId's leases, not only those of the nodes resolved now: a node whose ownerId is learned
    later must find the runs it already has in the ledger, not its whole capacity free.
    """
    rt.store.refresh()  # the search below must see the claims of the last second too
    body = queries.in_flight(now, None, size=max(1000, sum(n.capacity_units for n in nodes)))
    hits = rt.store.search_hits(body, "rebuilding the ledger")
    by_owner: dict[str, list[SlotRequest]] = defaultdict(list)
    claims: dict[str, int] = {}
    for hit in hits:
        task = hit.get("_source", {}).get("task", {})
        try:
            retry_at = parse_date(task["retryAt"])
        except (KeyError, TypeError, ValueError):
            continue
        task_type = str(task.get("taskType"))
        own = INSTANCE_COSTS.get(str(task.get("cost")))
        cost = own if own is not None else rt.settings.for_type(task_type).cost
        expiry = retry_at + policy.LEASE_GRACE
        by_owner[str(task.get("ownerId"))].append(slot_request(rt.settings, str(hit["_id"]), task_type, cost, expiry))
        if isinstance(hit.get("_seq_no"), int):
            claims[str(hit["_id"])] = hit["_seq_no"]
    capacity = {n.owner_id: n.capacity_units for n in nodes}
    count = 0
    for owner, leases in by_owner.items():
        count += len(rt.ledger.reserve(owner, capacity.get(owner, 0), leases, now, force=True, claims=claims))
    rt.ledger.mark_built(now)
    log.warning(
        "in-flight ledger not found in Redis (first start, or Redis flushed or restarted): "
        "rebuilt %d lease(s) from the engine before claiming",
        count,
    )
    return count

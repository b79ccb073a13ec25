"""The reservations of claim cycles whose worker died (SIGKILL, OOM) or froze between their reserve and their
confirm: judged at once, not after the whole pending window.

A claim cycle reserves its slots (pending), writes its claims with one ``_bulk``, confirms the slots that
applied, and only then sends their dispatch jobs. A worker killed in between leaves pending reservations
that would hold their slots for the pending window (engine timeout and more, 38 s by default), and, where
its ``_bulk`` applied (the engine finishes a request whose client died), claims that no job will ever push,
left to their leases (the task type's timeout, 5 m by default) and counted as an attempt.

Once the reserving worker stopped beating (its reservation is older than a heartbeat's bound), each such
lease is judged by a real-time read of its document:

- not claimed by the dead cycle (idle, gone, another node's): the slot is freed, as reconcile frees any;
- claimed by the dead cycle (running on this node, ``startedAt`` the cycle's time, which its token names):
  back to idle, attempt returned, conditional on the version read; the slot is freed where that applied.
  No job of the cycle was sent (it sends none before its confirm), so nothing can have pushed it. A frozen
  worker that wakes finds its claim moved on at its push's real-time read, and pushes nothing.

A claim ``_bulk`` of the dead cycle that lands after its slot was freed leaves a task claimed without a
slot or a job: never pushed; its lease runs out and the retry loop takes it back.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from elastask.core import policy
from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date
from elastask.errors import StoreError
from elastask.parts.ledger import Lease, LeaseView
from elastask.parts.redis_errors import redis_errors
from elastask.parts.store import VersionedUpdate
from elastask.parts.worker_claims import ALIVE_MS, WorkerClaims
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def orphaned_reservations(rt: Runtime, view: LeaseView) -> set[str]:
    """The task ids of the pending leases of ``view`` whose reserving worker stopped beating.

    Only reservations older than a heartbeat's bound are asked about (a worker that beats has its beat
    recorded by then): one read of their workers' heartbeats, and none at all in the usual case.
    """
    old = {
        lease.task_id: lease.reserved_by.worker_id
        for lease in view.leases
        if lease.reserved_by is not None
        and lease.pending_since_ms is not None
        and view.now_ms - lease.pending_since_ms >= ALIVE_MS
    }
    if not old or not rt.ledger.claims_current():
        # After Redis lost writes (not rebuilt yet) a reservation may be one whose confirm was lost while
        # its cycle went on to send and push: it proves nothing until the rebuild makes it the claim's.
        return set()
    with redis_errors("reading the heartbeats of workers holding reservations"):
        beating = WorkerClaims(rt.redis).beating(set(old.values()))
    return {task_id for task_id, worker in old.items() if worker not in beating}


def claimed_by_reserving_cycle(lease: Lease, hit: dict[str, Any] | None) -> bool:
    """True when the document shows the claim of the cycle that reserved ``lease`` (a pending reservation:
    never confirmed), as a dead cycle's claims are judged and a restarted node's lost leases too."""
    task = hit.get("_source", {}).get("task", {}) if hit else None
    if not isinstance(task, dict) or lease.reserved_by is None:
        return False
    if task.get("status") != "running" or task.get("ownerId") != lease.owner_id:
        return False
    try:
        return epoch_ms(parse_date(task["startedAt"])) == lease.reserved_by.started_ms
    except (KeyError, TypeError, ValueError):
        return False


def give_back_dead_claims(rt: Runtime, claims: list[tuple[Lease, dict[str, Any]]]) -> set[str]:
    """Back to idle, attempt returned, the claims a dead cycle wrote and never sent (conditional on the
    version read); their slots freed where the write applied. Returns the ids given back and freed."""
    if not claims:
        return set()
    updates = [
        VersionedUpdate(
            lease.task_id,
            int(hit["_seq_no"]),
            int(hit["_primary_term"]),
            policy.release_fields_for(int(hit["_source"]["task"].get("attempts") or 0)),
        )
        for lease, hit in claims
    ]
    try:
        results = rt.store.bulk_update_versions(updates)
    except StoreError as e:  # judged again by the next look
        log.warning("giving back %d claim(s) of a dead claim cycle failed, will retry: %s", len(updates), e)
        return set()
    by_owner: dict[str, list[str]] = defaultdict(list)
    for (lease, _hit), result in zip(claims, results, strict=True):
        if result.ok:
            by_owner[lease.owner_id].append(lease.task_id)
    rt.ledger.release_many(by_owner, claims={lease.task_id: None for lease, _ in claims})
    given_back = {task_id for ids in by_owner.values() for task_id in ids}
    workers = sorted({lease.reserved_by.worker_id for lease, _ in claims if lease.reserved_by})
    log.warning(
        "worker %s stopped beating between a claim write and its dispatch: %d claim(s) it wrote were never "
        "pushed and went back to idle, attempts returned: %s",
        ", ".join(workers),
        len(given_back),
        ", ".join(repr(i) for i in sorted(given_back)),
    )
    return given_back

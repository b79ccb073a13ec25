"""Claims a dead worker never pushed: back to idle within seconds of its death, not at the end of their lease.

The retry loop's first step. For each worker that stopped beating (parts/worker_claims.py), every
claim it recorded is settled by its push marker, the one switch between a push and a give-back:

- the marker is set: the push was attempted (it may run in Kibana), so the lease stands;
- else the retry loop sets it first (``push_outcomes.GIVEN_BACK``), so no process of that worker still running
  (frozen, not dead) can push the claim after; then the task goes back to idle with its attempt
  returned (conditional on the claim's version: a task Kibana or another loop moved on is left
  alone) and its slot is freed where the write applied.

A claim whose lease was renewed meanwhile (a new version) is left to its lease, as before.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

from elastask.core import policy
from elastask.core.clock import epoch_ms
from elastask.errors import StoreError
from elastask.loops.dispatch.outcomes import switch_off_pushes
from elastask.parts.cadence import Cadence
from elastask.parts.redis_errors import redis_errors
from elastask.parts.store import VersionedUpdate
from elastask.parts.worker_claims import HeldClaim, WorkerClaims
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def take_back_orphans(rt: Runtime, now: datetime) -> int:
    """Give back the unpushed claims of every dead worker; returns how many went back to idle."""
    store = WorkerClaims(rt.redis)
    with redis_errors("reading the workers' heartbeats"):
        dead = store.dead()
        held = {worker: store.claims_of(worker) for worker in dead}
    returned, handled = 0, []
    for worker, claims in held.items():
        unpushed = _switch_off_pushes(rt, claims, epoch_ms(now))
        try:
            returned += _give_back(rt, unpushed)
        except StoreError as e:  # the markers stay switched off: the next retry cycle gives them back
            log.warning("giving back the unpushed claims of dead worker %s failed, will retry: %s", worker, e)
            continue
        handled.append(worker)
        if claims:
            log.warning(
                "worker %s stopped beating (killed or frozen): %d of its %d claim(s) were never pushed and went "
                "back to idle, attempts returned; the pushed ones keep their leases",
                worker,
                len(unpushed),
                len(claims),
            )
    with redis_errors("forgetting dead workers"):
        store.forget(handled)
    if returned:
        Cadence(rt.redis).wake()  # due again now: a resting claim loop must not wait its idle interval
    return returned


def _switch_off_pushes(rt: Runtime, claims: list[HeldClaim], now_ms: int) -> list[HeldClaim]:
    """The claims whose pushes the retry loop switched off (see ``switch_off_pushes``): ours to return."""
    switched = switch_off_pushes(rt, [(c.doc_id, c.claim, max(0, c.retry_at_ms - now_ms)) for c in claims])
    return [claim for claim in claims if (claim.doc_id, claim.claim) in switched]


def _give_back(rt: Runtime, claims: list[HeldClaim]) -> int:
    """Back to idle (attempt returned) where the claim is still the document's version; slots freed there."""
    if not claims:
        return 0
    updates = [
        VersionedUpdate(c.doc_id, c.seq_no, c.primary_term, policy.release_fields_for(c.attempts)) for c in claims
    ]
    results = rt.store.bulk_update_versions(updates)
    by_owner: dict[str, list[str]] = defaultdict(list)
    for claim, result in zip(claims, results, strict=True):
        if result.ok:
            by_owner[claim.owner_id].append(claim.doc_id)
    fences: dict[str, int | None] = {c.doc_id: c.claim for c in claims}
    for owner_id, ids in by_owner.items():
        rt.ledger.release(owner_id, ids, claims=fences)
    return sum(len(ids) for ids in by_owner.values())

"""Claims a dead worker never pushed: back to idle within seconds of its death, not at the end of their lease.

The retry loop's first step. For each worker that stopped beating (parts/worker_claims.py), every
claim it recorded is settled by its push marker, the one switch between a push and a give-back:

- the marker is set: the push was attempted (it may run in Kibana), so the lease stands. Kibana
  answered most of these (``ANSWERED``: it runs the task, or refused it and the job gave it back);
  the ones still only ``PUSHED`` were in flight at the death: Kibana starts a run before it answers,
  so whether it got the push is unknown, and only the lease (the task type's timeout) can tell
  without a risk of two runs. They are named in the log with the time their lease ends;
- else the retry loop sets it first (``push_markers.GIVEN_BACK``), so no process of that worker still running
  (frozen, not dead) can push the claim after; then the task goes back to idle with its attempt
  returned (conditional on the claim's version: a task Kibana or another loop moved on is left
  alone) and its slot is freed where the write applied.

A claim whose lease was renewed meanwhile (a new version) is left to its lease, as before.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from elastask import keys
from elastask.core import policy
from elastask.core.clock import epoch_ms
from elastask.errors import StoreError
from elastask.loops.dispatch.push_markers import pushed_unanswered, switch_off_pushes
from elastask.parts.cadence import Cadence
from elastask.parts.redis_errors import redis_errors
from elastask.parts.store import VersionedUpdate
from elastask.parts.worker_claims import HeldClaim, WorkerClaims
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class TakeBack:
    """What one take-back did: claims given back to idle, and pushes found in flight at a death."""

    returned: int = 0
    in_flight: int = 0


def take_back_orphans(rt: Runtime, now: datetime) -> TakeBack:
    """Give back the unpushed claims of every dead worker, and name its pushes in flight at its death."""
    store = WorkerClaims(rt.redis)
    with redis_errors("reading the workers' heartbeats"):
        dead = store.dead()
        held = {worker: store.claims_of(worker) for worker in dead}
    done, handled = TakeBack(), []
    for worker, claims in held.items():
        unpushed = _switch_off_pushes(rt, claims, epoch_ms(now))
        try:
            done.returned += _give_back(rt, unpushed)
        except StoreError as e:  # the markers stay switched off: the next retry cycle gives them back
            log.warning("giving back the unpushed claims of dead worker %s failed, will retry: %s", worker, e)
            continue
        handled.append(worker)
        if claims:
            in_flight = _in_flight(rt, [c for c in claims if c not in unpushed])
            done.in_flight += len(in_flight)
            _report(worker, claims, unpushed, in_flight)
    with redis_errors("forgetting dead workers"):
        store.forget(handled)
    if done.returned:
        Cadence(rt.redis).wake()  # due again now: a resting claim loop must not wait its idle interval
    return done


def _in_flight(rt: Runtime, pushed: list[HeldClaim]) -> list[HeldClaim]:
    """The pushed claims Kibana had not answered (their push marker still only ``PUSHED``)."""
    if not pushed:
        return []
    with redis_errors("reading the push markers of a dead worker's claims"):
        markers = cast(list[bytes | None], rt.redis.mget([keys.push_marker(c.doc_id, c.claim) for c in pushed]))
    return [claim for claim, marker in zip(pushed, markers, strict=True) if pushed_unanswered(marker)]


def _report(worker: str, claims: list[HeldClaim], unpushed: list[HeldClaim], in_flight: list[HeldClaim]) -> None:
    log.warning(
        "worker %s stopped beating (killed or frozen): %d of its %d claim(s) were never pushed and went back to "
        "idle, attempts returned; the pushed ones keep their leases",
        worker,
        len(unpushed),
        len(claims),
    )
    if in_flight:
        ends = datetime.fromtimestamp(max(c.retry_at_ms for c in in_flight) / 1000, UTC)
        log.warning(
            "worker %s died with %d push(es) in flight, unanswered: Kibana may be running them, so they are never "
            "pushed again; each is retried when its lease ends (the last at %s, the task type's timeout): %s",
            worker,
            len(in_flight),
            ends.isoformat(timespec="seconds"),
            ", ".join(repr(c.doc_id) for c in in_flight),
        )


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

"""A claim's push marker: the one switch between a push and a give-back (``keys.push_marker``).

Set to ``PUSHED`` and the marking execution's token right before a claim's push
(loops/dispatch/push_checks.py: never pushed twice), to ``ANSWERED`` once Kibana answered it (its outcome
is known), or to ``GIVEN_BACK`` by whoever gives an unpushed claim back first (a push marked later pushes
nothing). A dead worker's claims are judged by it (loops/retry/orphans.py): no marker or ``GIVEN_BACK``,
never pushed; ``ANSWERED``, Kibana has it or refused it; ``PUSHED`` only, in flight at the death
(ambiguous: the lease decides).

The token names one execution of a dispatch job: a marker write whose reply was lost (it applied) is
run again with the same token and finds its own marker, and a job retried after its markers were set
and nothing pushed takes them back by the token it inherits (``DispatchJob.marked_by``), so neither
leaves a claim marked and never pushed, whose lease would count an attempt Kibana never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from elastask import keys
from elastask.core import policy
from elastask.core.messages import ClaimedTask
from elastask.errors import LedgerError
from elastask.parts.redis_errors import redis_errors
from elastask.parts.scripts import register
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: The values of a claim's push marker (``keys.push_marker``): a push was attempted; Kibana answered
#: it; the retry loop gave the claim back before any push (the switch: a push marked later pushes nothing).
PUSHED = b"1"  # then ":" and the marking execution's token (elastask 0.8.4 and earlier: b"1" alone)
ANSWERED = b"answered"
GIVEN_BACK = b"given-back"
_MARKER_EXTRA_MS = int(policy.PUSH_MARKER_EXTRA.total_seconds() * 1000)


def new_token(rt: Runtime) -> str:
    """A fresh token for one execution of a dispatch job (the process's random source: the simulation's is seeded)."""
    return f"{rt.rng.getrandbits(64):016x}"


def pushed_value(token: str) -> bytes:
    """The push marker an execution sets with ``token``."""
    return PUSHED + b":" + token.encode()


def pushed_unanswered(marker: bytes | None) -> bool:
    """Whether a push marker says "pushed, Kibana has not answered" (set by any execution, any version)."""
    return marker is not None and (marker == PUSHED or marker.startswith(PUSHED + b":"))


def mark_answered(rt: Runtime, tasks: Sequence[ClaimedTask]) -> None:
    """Kibana answered these pushes (accepted, refused or rejected: their outcome is known): their push
    markers say so (``ANSWERED``), so a worker that dies now leaves only its unanswered pushes
    ambiguous (loops/retry/orphans.py). Never raises: a marker left ``PUSHED`` is ambiguous at worst."""
    if not tasks:
        return
    pipe = rt.redis.pipeline(transaction=False)
    for task in tasks:
        for version in {task.claim, task.seq_no}:  # a renewed lease's push is marked under both versions
            pipe.set(keys.push_marker(task.doc_id, version), ANSWERED, xx=True, keepttl=True)
    try:
        with redis_errors("recording that Kibana answered pushes"):
            pipe.execute()
    except LedgerError as e:
        log.warning("%s; a worker dying now reports %d of its pushes as in flight", e, len(tasks))


def switch_off_pushes(rt: Runtime, claims: Sequence[tuple[str, int, int]]) -> set[tuple[str, int]]:
    """Switch off the pushes of claims (doc id, claim version, ms left of the lease) that no push marked
    yet: their push marker is set to GIVEN_BACK, so a job of theirs that runs later (delivered after
    all, or in a frozen process that wakes) pushes nothing. Returns the (doc id, claim) switched off,
    now or before, whose tasks the caller gives back; a claim whose push came first keeps its lease.
    The push marker is the one switch between a push and a give-back, and only while Redis remembers
    the claim (its claim marker, of the ledger's epoch): after Redis lost its data, all of it or the
    last writes (a failover to a replica behind), a missing push marker proves nothing, so such a
    claim is left to its dispatch job and its lease (a push in between ran twice otherwise). Until the
    ledger is rebuilt after such a loss, nothing is switched off."""
    if not claims:
        return set()
    if not rt.ledger.claims_current():
        log.info("Redis lost data since these claims (the ledger is not rebuilt yet): left to their leases")
        return set()
    markers = [
        k for doc_id, claim, _ in claims for k in (keys.claim_marker(doc_id, claim), keys.push_marker(doc_id, claim))
    ]
    ttls = [lease_left_ms + _MARKER_EXTRA_MS for _, _, lease_left_ms in claims]
    with redis_errors("switching off the pushes of claims given back"):
        switched = register(rt.redis, "switch_off")(keys=[keys.LEDGER_EPOCH, *markers], args=[GIVEN_BACK, *ttls])
    return {(doc_id, claim) for (doc_id, claim, _), off in zip(claims, switched, strict=True) if off}

"""The claim write of a claim cycle: the claims in one conditional ``_bulk``, their slots confirmed (or,
the claim lock lost first, the reservations given back unwritten).

Every way the write can end leaves the ledger true before the cycle ends: a lost race (409) or a
missing document gives its slot back; a ``_bulk`` the engine rejected (429, 503) gives every slot
back at once, so the next cycle claims again; one that got no answer is read back, and the claims
that applied go on to their push. Releases and confirms carry the cycle's token, so they never touch
a slot another cycle reserved for the same task.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from elastask.core import policy
from elastask.core.documents import TaskDocument
from elastask.errors import LedgerError, StoreError
from elastask.loops.claim.limited import slot_request
from elastask.loops.claim.summary import ClaimSummary
from elastask.parts.ledger import SlotRequest
from elastask.parts.store import VersionedUpdate, WriteResult
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def abandon_claims(rt: Runtime, to_claim: Sequence[policy.Assignment], token: str) -> None:
    """The lock ran out under the cycle (a pause longer than its TTL): write nothing, give the reservations back."""
    log.warning("claim lock lost during the cycle; abandoning %d claim(s) before writing them", len(to_claim))
    _release_reservations(rt, to_claim, token)


def _release_reservations(rt: Runtime, to_claim: Sequence[policy.Assignment], token: str) -> None:
    """Give back every slot these assignments reserved (their claims were not written), in one round trip."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    for a in to_claim:
        by_owner[a.owner_id].append(a.task.id)
    rt.ledger.release_many(by_owner, token=token)


def write_claims(
    rt: Runtime,
    now: datetime,
    capacity: Mapping[str, int],
    to_claim: Sequence[policy.Assignment],
    summary: ClaimSummary,
    token: str,
) -> list[tuple[policy.Assignment, TaskDocument]]:
    """One conditional ``_bulk``; slots of lost races are given back, the others confirmed.

    A ``_bulk`` that failed gives its reservations back before the cycle ends (the next one claims
    again at once); where it may have applied all the same (no answer came), the claims are read back
    first and the ones that applied go on to their push.
    """
    timeouts = [rt.settings.for_type(a.task.task_type).timeout_ms for a in to_claim]
    fields = [policy.claim_fields(a.task, a.owner_id, now, t) for a, t in zip(to_claim, timeouts, strict=True)]
    try:
        results = rt.store.bulk_update_tasks([(a.task, f) for a, f in zip(to_claim, fields, strict=True)])
    except StoreError as e:
        results = _after_failed_write(rt, to_claim, fields, e, token)
    summary.step("claim")
    claimed: list[tuple[policy.Assignment, TaskDocument]] = []
    give_back: dict[str, list[str]] = defaultdict(list)
    for assignment, claim, result in zip(to_claim, fields, results, strict=True):
        if result.ok and result.seq_no is not None and result.primary_term is not None:
            claimed.append((assignment, policy.after_claim(assignment.task, claim, result.seq_no, result.primary_term)))
            continue
        give_back[assignment.owner_id].append(assignment.task.id)
        if result.conflict:
            summary.conflicts += 1
        elif result.missing:
            summary.missing += 1
        elif result.status:
            log.error("claiming %r failed: %s %s", result.doc_id, result.status, result.error)
    try:
        rt.ledger.release_many(give_back, token=token)
        claimed = _confirm(rt, now, capacity, claimed, token)
    except LedgerError:
        # The claims are written but Redis failed before their slots were confirmed and their jobs sent:
        # nothing would push them, and their leases would count an attempt. Back to idle now, by the
        # engine alone; their reservations, still pending, are judged by reconcile later.
        give_back_claims(rt, [doc for _a, doc in claimed])
        raise
    for assignment, _doc in claimed:
        summary.claimed += 1
        summary.capacity_left[assignment.owner_id] -= assignment.cost
    summary.step("bookkeeping")
    return claimed


def _after_failed_write(
    rt: Runtime,
    to_claim: Sequence[policy.Assignment],
    fields: Sequence[dict[str, Any]],
    error: StoreError,
    token: str,
) -> list[WriteResult]:
    """The claim ``_bulk`` failed: which claims applied all the same (results as the ``_bulk`` would give).

    A 4xx about the request itself: none did. No answer (a timeout), a 5xx, 408 or 429 (which a proxy in
    front of the engine may give for a request the engine applied, ``policy.write_may_have_applied``):
    read them back in real time; a claim applied where the document now shows this very claim. If that
    read fails too, the reservations are given back and the error raised: a claim that applied unseen is
    never pushed, so it cannot break the cap; its lease runs out and the retry loop takes it back.
    """
    applied: dict[str, dict[str, Any] | None] = {}
    if policy.write_may_have_applied(error.status):
        try:
            applied = rt.store.mget_sources([a.task.id for a in to_claim])
        except StoreError:
            applied = {}
    results = [_claim_as_read(a, f, applied.get(a.task.id)) for a, f in zip(to_claim, fields, strict=True)]
    if not any(r.ok for r in results):
        _release_reservations(rt, to_claim, token)
        log.warning("claim write failed; %d reservation(s) given back, next cycle claims again", len(to_claim))
        raise error
    written = sum(r.ok for r in results)
    log.warning(
        "claim write failed (%s); %d of %d claim(s) read back as written",
        error,
        written,
        len(results),
    )
    return results


def _claim_as_read(assignment: policy.Assignment, claim: dict[str, Any], hit: dict[str, Any] | None) -> WriteResult:
    """A write result for one claim from the document read back: ok if it shows this very claim."""
    task = hit.get("_source", {}).get("task", {}) if hit else {}
    mine = isinstance(task, dict) and all(
        task.get(k) == claim[k] for k in ("status", "ownerId", "startedAt", "retryAt")
    )
    if hit is not None and mine:
        return WriteResult(assignment.task.id, 200, hit.get("_seq_no"), hit.get("_primary_term"), "")
    return WriteResult(assignment.task.id, 0, None, None, "not written")


def _confirm(
    rt: Runtime,
    now: datetime,
    capacity: Mapping[str, int],
    claimed: list[tuple[policy.Assignment, TaskDocument]],
    token: str,
) -> list[tuple[policy.Assignment, TaskDocument]]:
    """Confirm the written claims' slots; a claim whose slot the ledger lost and cannot take again
    (Redis lost the ledger during the write, and the node filled up since) is given back, never pushed."""
    by_owner: dict[str, list[SlotRequest]] = defaultdict(list)
    for a, doc in claimed:
        assert doc.retry_at is not None  # a claimed document has its lease
        expiry = doc.retry_at + policy.LEASE_GRACE
        by_owner[a.owner_id].append(slot_request(rt.settings, a.task.id, a.task.task_type, a.cost, expiry))
    versions = {doc.id: doc.seq_no for _, doc in claimed if doc.seq_no is not None}
    held = {
        owner: rt.ledger.confirm(owner, capacity[owner], items, now, token=token, versions=versions)
        for owner, items in by_owner.items()
    }
    kept = [(a, doc) for a, doc in claimed if a.task.id in held[a.owner_id]]
    lost = [doc for a, doc in claimed if a.task.id not in held[a.owner_id]]
    if lost:
        log.warning(
            "%d claim(s) written while Redis lost the ledger found their node full; giving them back: %s",
            len(lost),
            ", ".join(repr(d.id) for d in lost),
        )
        give_back_claims(rt, lost)
    return kept


def give_back_claims(rt: Runtime, docs: Sequence[TaskDocument]) -> None:
    """Return claims that will never be pushed to idle, attempt returned (conditional on the claim's version)."""
    updates = [
        VersionedUpdate(d.id, d.seq_no, d.primary_term, policy.release_fields_for(d.attempts))
        for d in docs
        if d.seq_no is not None and d.primary_term is not None
    ]
    try:
        rt.store.bulk_update_versions(updates)
    except StoreError as e:  # the leases run out and the retry loop takes them back
        log.warning("giving back %d claim(s) failed; their leases decide: %s", len(updates), e)

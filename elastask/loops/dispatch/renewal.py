"""Lease renewal: a dispatch job that waited in its queue renews its leases before it pushes.

A claim's lease is Kibana's plus a slack (``policy.dispatch_slack_ms``, 1-5 s) for the way to the
node; a job that waited longer than the slack renews its leases first (one conditional ``_bulk``),
so each lease covers the whole run Kibana starts now; a task that changed meanwhile is not pushed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from elastask.core import policy
from elastask.core.intervals import format_date, parse_date
from elastask.core.messages import ClaimedTask
from elastask.errors import StoreError
from elastask.loops.dispatch.outcomes import DispatchOutcome, DispatchReport, give_back_tasks, warn
from elastask.parts.store import VersionedUpdate, WriteResult
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def renew_waited_leases(
    rt: Runtime, owner_id: str, tasks: Sequence[ClaimedTask], now: datetime, report: DispatchReport
) -> list[ClaimedTask]:
    """Renew the leases of jobs that waited (one conditional ``_bulk``) so they cover the run Kibana starts now.

    Kibana times a run from its start; without this, the retry loop could take a task back while
    Kibana still runs it. A task that changed while its job waited is not pushed.
    """
    # Kibana's run, started now, ends by now + its lease (lease_ms - slack_ms); the retry loop waits
    # until retryAt + policy.LEASE_GRACE. Renewing once the wait passes the slack keeps policy.LEASE_GRACE in hand.
    waited = [task for task in tasks if remaining_ms(task, now) < task.lease_ms - task.slack_ms]
    if not waited:
        return list(tasks)
    renewed_until = {task.doc_id: now + timedelta(milliseconds=task.lease_ms) for task in waited}
    updates = [
        VersionedUpdate(
            task.doc_id,
            task.seq_no,
            task.primary_term,
            {"retryAt": format_date(renewed_until[task.doc_id]), "startedAt": format_date(now)},
        )
        for task in waited
    ]
    try:
        results = rt.store.bulk_update_versions(updates)
    except StoreError as e:
        results = _read_back(rt, updates, e)
    renewed: dict[str, ClaimedTask] = {}
    unrenewed: list[ClaimedTask] = []
    for task, result in zip(waited, results, strict=True):
        if result.ok and result.seq_no is not None and result.primary_term is not None:
            retry_at = format_date(renewed_until[task.doc_id])
            # The body Kibana gets says what the document says: the renewed lease, started now.
            body = {**task.body, "retryAt": retry_at, "startedAt": format_date(now)}
            renewed[task.doc_id] = replace(
                task,
                seq_no=result.seq_no,
                primary_term=result.primary_term,
                retry_at=retry_at,
                claim_seq_no=task.claim,
                body=body,
            )
        elif result.conflict or result.missing:
            warn(task, "task %r changed while its dispatch job waited (%s); not pushing it", task.doc_id, result.status)
            report.outcomes[task.doc_id] = DispatchOutcome.EXPIRED
        else:
            # The renewal itself failed (429, 5xx): the task never reached Kibana, so it goes back now
            # with its attempt, rather than waiting out its lease with its slot held.
            warn(
                task,
                "renewing the lease of %r failed (%s %s); giving it back",
                task.doc_id,
                result.status,
                result.error,
            )
            report.outcomes[task.doc_id] = DispatchOutcome.EXPIRED
            unrenewed.append(task)
    _mark_renewed_claims(rt, list(renewed.values()))
    if unrenewed:
        give_back_tasks(rt, owner_id, unrenewed)
    until = {doc_id: renewed_until[doc_id] + policy.LEASE_GRACE for doc_id in renewed}
    slotted = rt.ledger.extend(owner_id, until, now, claims={doc_id: task.claim for doc_id, task in renewed.items()})
    unslotted = [task for doc_id, task in renewed.items() if doc_id not in slotted]
    if unslotted:
        # Their slot ran out while the job waited and may be another task's now: pushing would break the cap.
        log.warning(
            "%d task(s) for %s lost their slot while their job waited; giving them back: %s",
            len(unslotted),
            owner_id,
            ", ".join(repr(t.doc_id) for t in unslotted),
        )
        rt.store.bulk_update_versions(
            [
                VersionedUpdate(t.doc_id, t.seq_no, t.primary_term, policy.release_fields_for(t.attempts))
                for t in unslotted
            ],
        )
        for task in unslotted:
            report.outcomes[task.doc_id] = DispatchOutcome.EXPIRED
            del renewed[task.doc_id]
    if renewed:
        log.info(
            "%d task(s) for %s waited %.1fs in their queue; leases renewed",
            len(renewed),
            owner_id,
            max(waited_s(task, now) for task in waited),
        )
    waited_ids = {task.doc_id for task in waited}
    return [renewed.get(task.doc_id, task) for task in tasks if task.doc_id in renewed or task.doc_id not in waited_ids]


def _read_back(rt: Runtime, updates: Sequence[VersionedUpdate], error: StoreError) -> list[WriteResult]:
    """The renewal ``_bulk`` failed where it may have applied all the same (no answer, or an answer a proxy
    in front of the engine gives): read the documents back in real time; a renewal applied where the
    document shows this very renewal (its ``retryAt`` and ``startedAt``). A renewal that applied unseen
    would leave a lease no claim marker speaks for, counting an attempt never pushed. If the read fails
    too, the error is raised (the job is retried; its leases decide)."""
    if not policy.write_may_have_applied(error.status):
        raise error
    try:
        hits = rt.store.mget_sources([u.doc_id for u in updates], fields=("task.retryAt", "task.startedAt"))
    except StoreError:
        raise error from None
    results = []
    for update in updates:
        hit = hits.get(update.doc_id)
        task = hit.get("_source", {}).get("task", {}) if hit else {}
        mine = isinstance(task, dict) and all(task.get(k) == v for k, v in update.fields.items())
        if hit is not None and mine:
            results.append(WriteResult(update.doc_id, 200, hit.get("_seq_no"), hit.get("_primary_term"), ""))
        else:
            results.append(WriteResult(update.doc_id, 0, None, None, "not written"))
    log.warning(
        "renewing %d lease(s) failed (%s); %d read back as renewed", len(updates), error, sum(r.ok for r in results)
    )
    return results


def _mark_renewed_claims(rt: Runtime, renewed: Sequence[ClaimedTask]) -> None:
    """A renewed lease is elastask's claim too: its claim marker, under the renewal's version, tells the
    retry loop that a lease running out unpushed never reached Kibana (its attempt comes back)."""
    if not renewed:
        return
    extra_ms = int(policy.CLAIM_MARKER_EXTRA.total_seconds() * 1000)
    rt.ledger.mark_claims([(task.doc_id, task.seq_no, task.lease_ms + extra_ms) for task in renewed])


def remaining_ms(task: ClaimedTask, now: datetime) -> int:
    return int((parse_date(task.retry_at) - now).total_seconds() * 1000)


def waited_s(task: ClaimedTask, now: datetime) -> float:
    return (now - parse_date(task.body.get("startedAt") or task.retry_at)).total_seconds()

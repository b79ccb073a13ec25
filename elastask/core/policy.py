"""Pure decisions: which node gets which task, the fields of a claim, a release and an expiry.

Attempts are counted **at claim**, as Kibana's own claimer does (``attempts: attempts + 1`` in the
same conditional write that sets ``status: running``). A push that provably never reached Kibana
gives the attempt back in the write that returns the task to ``idle``; an expired lease keeps it,
unless Redis shows the claim was never pushed (its claim marker without a push marker).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from elastask.core.documents import TaskDocument
from elastask.core.intervals import format_date, parse_date

if TYPE_CHECKING:
    from elastask.config import Settings

#: A slot is held this long past retryAt: Kibana times a run from when it started, a little after the claim.
LEASE_GRACE = timedelta(seconds=2)
#: A claim looks at most this far ahead of runAt; tasks due within it are claimed early and pushed at
#: their runAt (a dispatch job with an ETA), not one polling interval late.
MAX_LOOKAHEAD_MS = 1000
#: A claim's marker (Redis) lives this long past its lease and grace, for the retry loop to read.
CLAIM_MARKER_EXTRA = timedelta(seconds=60)
#: A push marker lives this long past its lease: longer than the claim marker, so a claim marker
#: found without its push marker always means the claim was never pushed.
PUSH_MARKER_EXTRA = CLAIM_MARKER_EXTRA + LEASE_GRACE + timedelta(seconds=60)


@dataclass(frozen=True)
class Assignment:
    """One claimed-to-be task and the node (ownerId) it goes to, with its cost in capacity units."""

    task: TaskDocument
    owner_id: str
    cost: int


#: Tasks claimed ahead of their runAt are pushed in steps of this many ms.
PUSH_STEP_MS = 25


def push_step(run_at: datetime, now: datetime) -> datetime | None:
    """When to push a task claimed ahead: its runAt rounded up to the next push step; None if due now."""
    if run_at <= now:
        return None
    step_us = PUSH_STEP_MS * 1000
    ahead_us = (run_at - now) // timedelta(microseconds=1)
    return now + timedelta(microseconds=-(-ahead_us // step_us) * step_us)


def assign(
    tasks: Sequence[TaskDocument],
    free_units: Mapping[str, int],
    cost_of: Callable[[str], int],
    capacity_units: Mapping[str, int] | None = None,
    *,
    group_of: Callable[[str], str | None] = lambda _type: None,
    group_free: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Assignment]:
    """Give each task, in order, to the node with the most free units; stop at the first that fits nowhere.

    A task retried after its lease ran out avoids the node it ran out on, if another one has room.

    Stopping (rather than skipping to smaller tasks) keeps priority order: a big task at the head
    is not starved by small ones behind it, as in Kibana's capacity selection. A task bigger than
    every node's whole capacity (``capacity_units``) would never fit: it is passed over, not waited for.

    A type with a concurrency limit (``group_of`` its group, ``group_free`` per node how many more of
    the group it may run) goes only where its group has room; where it has none, it is passed over
    and the others go on (Kibana searches limited types apart so they never hold back the rest).
    """
    free = dict(free_units)
    group_room = {owner: dict(rooms) for owner, rooms in (group_free or {}).items()}
    order = {owner: index for index, owner in enumerate(free_units)}
    biggest = max(capacity_units.values(), default=0) if capacity_units is not None else None
    assignments = []
    for task in tasks:
        if not free:
            break
        # An instance's own cost wins over its type's (Kibana's get_task_cost.ts).
        cost = task.cost if task.cost is not None else cost_of(task.task_type)
        if biggest is not None and cost > biggest:
            continue
        group = group_of(task.task_type)
        fits = [o for o in free if free[o] >= cost and (group is None or group_room.get(o, {}).get(group, 0) > 0)]
        if not fits:
            if group is not None:
                continue
            break
        # A retried task (its lease ran out on task.owner_id) goes elsewhere when another node has room.
        avoid = task.owner_id if task.attempts > 0 else None
        owner = max(fits, key=lambda o: (o != avoid, free[o], -order[o]))
        free[owner] -= cost
        if group is not None:
            group_room[owner][group] -= 1
        assignments.append(Assignment(task, owner, cost))
    return assignments


#: A claim's lease is Kibana's plus a slack for the time the push takes to reach the node (the
#: dispatch queue, the HTTP call): Kibana times a run from its start, not from the claim. A tenth of
#: the lease, at least 1 s and at most 5 s; a dispatch job that waited longer renews the lease.
MIN_SLACK_MS = 1000
MAX_SLACK_MS = 5000


def kibana_lease_ms(task: TaskDocument, timeout_ms: int) -> int:
    """The lease Kibana's getRetryAt gives at claim (lib/get_retry_at.ts): a recurring task's timeout, or
    its interval if longer; a one-shot task's ``timeoutOverride`` if it has one, else the type's timeout."""
    if task.schedule is not None:
        interval_ms = task.schedule.interval_ms
        return max(timeout_ms, interval_ms) if interval_ms is not None else timeout_ms
    return task.timeout_override_ms if task.timeout_override_ms is not None else timeout_ms


def dispatch_slack_ms(task: TaskDocument, timeout_ms: int) -> int:
    """How much later than Kibana's a claim's lease ends (see MIN_SLACK_MS)."""
    return min(MAX_SLACK_MS, max(MIN_SLACK_MS, kibana_lease_ms(task, timeout_ms) // 10))


def lease_until(task: TaskDocument, now: datetime, timeout_ms: int) -> datetime:
    """retryAt for a claim made now: Kibana's lease plus the dispatch slack."""
    return now + timedelta(milliseconds=kibana_lease_ms(task, timeout_ms) + dispatch_slack_ms(task, timeout_ms))


def claim_fields(task: TaskDocument, owner_id: str, now: datetime, timeout_ms: int) -> dict[str, Any]:
    """The partial update that claims a task, as Kibana's markTaskAsRunning writes it (retryAt: plus the slack)."""
    return {
        "status": "running",
        "ownerId": owner_id,
        "startedAt": format_date(now),
        "retryAt": format_date(lease_until(task, now, timeout_ms)),
        "scheduledAt": format_date(task.run_at),
        "attempts": task.attempts + 1,
    }


def after_claim(task: TaskDocument, fields: Mapping[str, Any], seq_no: int, primary_term: int) -> TaskDocument:
    """The document as it is after a successful claim write."""
    return task.with_changes(
        status=fields["status"],
        owner_id=fields["ownerId"],
        started_at=parse_date(fields["startedAt"]),
        retry_at=parse_date(fields["retryAt"]),
        scheduled_at=parse_date(fields["scheduledAt"]),
        attempts=fields["attempts"],
        seq_no=seq_no,
        primary_term=primary_term,
    )


def write_may_have_applied(status: int | None) -> bool:
    """Whether a write the engine did not confirm may still have applied (``status``: the whole request's
    answer, None when none came: a timeout or a lost connection). Every 5xx, 408 and 429 may: a proxy or
    load balancer in front of the engine answers them for requests the engine applied (its upstream
    timed out, or it retried). Only a 4xx about the request itself (400 malformed, 401/403 refused,
    404 no index, 413 too large) proves nothing applied."""
    return status is None or status >= 500 or status in (408, 429)


def release_fields_for(claimed_attempts: int) -> dict[str, Any]:
    """Back to idle after a push that never reached Kibana: the attempt counted at claim is returned."""
    return {
        "status": "idle",
        "ownerId": None,
        "startedAt": None,
        "retryAt": None,
        "attempts": max(0, claimed_attempts - 1),
    }


@dataclass(frozen=True)
class RetryPolicy:
    """How a task's attempts end: how many it has, and Kibana's retry delays between them (ms)."""

    max_attempts: int
    base_delay_ms: int
    max_delay_ms: int

    @classmethod
    def for_type(cls, settings: Settings, task_type: str) -> RetryPolicy:
        """The policy of one task type: its own maximum attempts, the retry delays every type shares."""
        return cls(settings.for_type(task_type).max_attempts, settings.retry_delay_ms, settings.max_retry_delay_ms)


def retry_delay_ms(attempts: int, *, base_ms: int, max_ms: int, rng: random.Random) -> int:
    """Kibana's one-shot retry delay: ``base`` for the first retry, then random up to min(max, 10 x base x 2^(n-2)).

    With Kibana's base of 30 s that is 30 s, then up to 5 m, 10 m, 20 m ... capped at 1 h.
    """
    if attempts <= 1:
        return base_ms
    ceiling = min(max_ms, 10 * base_ms * 2 ** min(attempts - 2, 30))
    return int(rng.uniform(base_ms, max(base_ms, ceiling)))


@dataclass(frozen=True)
class Expiry:
    """What to write when a lease ran out without an outcome, and why."""

    outcome: str  # "retry" | "failed" | "rescheduled" | "returned"
    fields: dict[str, Any]
    reason: str


def on_lease_expired(
    task: TaskDocument,
    now: datetime,
    retry: RetryPolicy,
    *,
    rng: random.Random,
    why: str = "lease expired without an outcome",
) -> Expiry:
    """The next state of a task whose run was lost (its retryAt passed, or its node restarted):
    retry later, fail for good, or move to its next run."""
    interval_ms = task.schedule.interval_ms if task.schedule else None
    return after_failed_attempt(task.attempts, task.is_recurring, interval_ms, now, why, retry, rng=rng)


def attempt_returned(task: TaskDocument) -> Expiry:
    """An expired lease whose claim was never pushed (its dispatch job was lost): back to idle, attempt returned."""
    return Expiry(
        "returned",
        release_fields_for(task.attempts),
        "lease ran out before any push (its dispatch job was lost, e.g. at a broker reconnect); attempt returned",
    )


def after_failed_attempt(
    attempts: int,
    recurring: bool,
    interval_ms: int | None,
    now: datetime,
    why: str,
    retry: RetryPolicy,
    *,
    rng: random.Random,
) -> Expiry:
    """The next state after an attempt that ended without an outcome (``attempts`` counts it).

    Recurring: retried now, or moved to its next interval with attempts reset after the maximum
    (Kibana never fails a recurring task). One-shot: retried after Kibana's backoff, failed after
    the maximum.
    """
    # ownerId stays: it tells operators where the attempt failed, and the claim loop sends a retry elsewhere.
    cleared = {"startedAt": None, "retryAt": None}
    if recurring:
        if attempts >= retry.max_attempts:
            next_run = now + timedelta(milliseconds=interval_ms or retry.base_delay_ms)
            return Expiry(
                "rescheduled",
                {**cleared, "status": "idle", "attempts": 0, "runAt": format_date(next_run)},
                f"{attempts} runs without an outcome ({why}); recurring, so moved to its next interval",
            )
        return Expiry(
            "retry",
            {**cleared, "status": "idle", "runAt": format_date(now)},
            f"{why} (attempt {attempts} of {retry.max_attempts})",
        )
    if attempts >= retry.max_attempts:
        return Expiry(
            "failed",
            {**cleared, "status": "failed"},
            f"{attempts} runs of {retry.max_attempts} ended without an outcome from Kibana ({why})",
        )
    delay = retry_delay_ms(attempts, base_ms=retry.base_delay_ms, max_ms=retry.max_delay_ms, rng=rng)
    return Expiry(
        "retry",
        {**cleared, "status": "idle", "runAt": format_date(now + timedelta(milliseconds=delay))},
        f"{why} (attempt {attempts} of {retry.max_attempts}); retry in {delay} ms",
    )


def requeue_refusal(task: TaskDocument, now: datetime, grace: timedelta) -> str | None:
    """Why a running or claiming task must not be requeued yet (None: it may be).

    Requeueing writes ``idle`` with ``attempts: 0``, which is also Kibana's outcome of a recurring
    run: the ledger would free the slot and the claim loop push it again while Kibana may still run it.
    """
    if task.status not in ("running", "claiming") or task.retry_at is None:
        return None
    until = task.retry_at + grace
    if now >= until:
        return None
    return (
        f"task {task.id!r} is {task.status} on {task.owner_id or 'a Kibana node'} and its lease lasts until "
        f"{format_date(until)}: requeueing it now would start a second run while Kibana may still run this one. "
        "Wait until then (the retry loop takes it back by itself), or pass --force to accept two runs at once"
    )

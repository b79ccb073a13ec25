"""The claim cycle's use of ready tasks (see parts/ready.py): dispatch them into freed slots, claim more.

Dispatching a ready task is a claim cycle's reservation without the search and the claim write:
the slot is reserved in the ledger (the cap checked atomically, as for any claim), confirmed at
once (the claim is already written), and the task's dispatch job is enqueued.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from elastask.core.intervals import format_date, parse_date
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.loops.dispatch import give_back
from elastask.loops.ledger_sync import LEASE_GRACE
from elastask.parts.nodes import Node
from elastask.parts.ready import READY_SHARE, ReadyTasks
from elastask.runtime import Runtime

#: Ready tasks claimed ahead of their runAt are pushed in steps of this many ms, as the cycle's are.
ETA_STEP_MS = 25


def dispatch_ready(
    rt: Runtime,
    nodes: Sequence[Node],
    ready: dict[str, list[ClaimedTask]],
    free: dict[str, int],
    now: datetime,
    enqueue: Callable[[DispatchJob], None],
    cost_of: Callable[[str], int],
) -> list[ClaimedTask]:
    """Move each node's ready tasks, in order, into its free units; returns those dispatched.

    ``ready`` and ``free`` are updated to what is left.
    """
    lists = ReadyTasks(rt.redis)
    dispatched: list[ClaimedTask] = []
    available = {n.owner_id for n in nodes}
    for owner in [o for o, tasks in ready.items() if tasks and o not in available]:
        # Out of rotation: its ready tasks go back to idle (attempt returned) for another node.
        give_back(rt, owner, lists.take(owner, len(ready[owner])))
        ready[owner] = []
    for node in nodes:
        owner = node.owner_id
        queue = ready.get(owner) or []
        fitting, units = 0, 0
        for task in queue:
            cost = cost_of(_task_type(task))
            if units + cost > free.get(owner, 0):
                break
            fitting, units = fitting + 1, units + cost
        if not fitting:
            continue
        taken = lists.take(owner, fitting)
        leases = [(t.doc_id, cost_of(_task_type(t)), parse_date(t.retry_at) + LEASE_GRACE) for t in taken]
        reserved = rt.ledger.reserve(owner, node.capacity_units, leases, now)
        go = [t for t in taken if t.doc_id in reserved]
        back = [t for t in taken if t.doc_id not in reserved]
        lists.put_back(owner, back)
        taken_ids = {t.doc_id for t in taken}
        ready[owner] = back + [t for t in queue if t.doc_id not in taken_ids]
        if not go:
            continue
        rt.ledger.confirm(owner, [t.doc_id for t in go])
        free[owner] = free.get(owner, 0) - sum(cost_of(_task_type(t)) for t in go)
        for push_at, tasks in _by_push_step(go, now).items():
            enqueue(DispatchJob(owner, node.url, tuple(tasks), format_date(push_at) if push_at else None))
        dispatched += go
    return dispatched


def ready_units(ready: Mapping[str, list[ClaimedTask]], cost_of: Callable[[str], int]) -> int:
    """Units of every node's ready tasks."""
    return sum(cost_of(_task_type(t)) for tasks in ready.values() for t in tasks)


def ready_room(
    nodes: Sequence[Node], ready: Mapping[str, list[ClaimedTask]], cost_of: Callable[[str], int]
) -> dict[str, int]:
    """Units each node may still take as ready tasks (READY_SHARE of its capacity, less what it has)."""
    return {
        n.owner_id: int(n.capacity_units * READY_SHARE) - sum(cost_of(_task_type(t)) for t in ready.get(n.owner_id, []))
        for n in nodes
    }


def _task_type(task: ClaimedTask) -> str:
    return str(task.body.get("taskType", ""))


def _by_push_step(tasks: Sequence[ClaimedTask], now: datetime) -> dict[datetime | None, list[ClaimedTask]]:
    """Tasks grouped by when to push them: None for due now, else their runAt rounded up to an ETA step."""
    groups: dict[datetime | None, list[ClaimedTask]] = defaultdict(list)
    for task in tasks:
        try:
            run_at = parse_date(str(task.body.get("runAt")))
        except ValueError:
            run_at = now
        if run_at <= now:
            groups[None].append(task)
            continue
        step_us = ETA_STEP_MS * 1000
        ahead_us = (run_at - now) // timedelta(microseconds=1)
        groups[now + timedelta(microseconds=-(-ahead_us // step_us) * step_us)].append(task)
    return groups

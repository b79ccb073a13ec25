"""Tasks whose own ``task.cost`` is more than any Kibana node holds: failed with the reason, not left idle.

A task type's cost is checked against the nodes when the configuration loads; an instance's own cost
(Kibana's InstanceTaskCost, e.g. ``extralarge``: 10 units) can only be seen on the document. Such a
task would be passed over by every claim for ever, so the claim cycle fails it (a write conditional on
the version just read), keeps the reason for ``elastask tasks failed``, logs it and counts it
(``elastask_too_costly_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from elastask.core.documents import TaskDocument
from elastask.errors import StoreError
from elastask.loops.claim.summary import ClaimSummary
from elastask.parts.failures import record_failure
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def too_costly_reason(task: TaskDocument, type_cost: int, biggest_units: int) -> str | None:
    """Why the task can never run on any node, or None when it fits on the biggest one. Pure."""
    cost = task.cost if task.cost is not None else type_cost
    if cost <= biggest_units:
        return None
    return (
        f"its task.cost ({task.raw.get('task', {}).get('cost')!r}: {cost} units) is more than any Kibana node holds "
        f"({biggest_units} units); raise kibana_capacity (or a node's capacity) to at least {-(-cost // 2)}, "
        "then requeue it with elastask tasks requeue"
    )


def fail_too_costly(
    rt: Runtime, tasks: Sequence[TaskDocument], now: datetime, summary: ClaimSummary
) -> list[TaskDocument]:
    """The tasks that fit on some node; the others are failed (conditional writes) and counted."""
    biggest = rt.settings.biggest_capacity_units()
    fitting: list[TaskDocument] = []
    failing: list[tuple[TaskDocument, str]] = []
    for task in tasks:
        reason = too_costly_reason(task, rt.settings.for_type(task.task_type).cost, biggest)
        if reason is None:
            fitting.append(task)
        else:
            failing.append((task, reason))
    if not failing:
        return fitting
    try:
        results = rt.store.bulk_update_tasks([(task, {"status": "failed"}) for task, _ in failing])
    except StoreError as e:  # they stay idle and are passed over; the next cycle tries again
        log.warning("could not fail %d task(s) too costly for every node: %s", len(failing), e)
        return fitting
    for (task, reason), result in zip(failing, results, strict=True):
        if result.ok:  # a conflict: someone wrote it since; the next cycle reads it again
            summary.too_costly += 1
            record_failure(rt.redis, task.id, now, reason, owner_id=task.owner_id, task_type=task.task_type)
    return fitting

"""Task documents of ``.kibana_task_manager``, parsed and serialized exactly as Kibana writes them. Pure.

A document is ``{"type": "task", "task": {...}, "migrationVersion": ..., "references": [],
"updated_at": ...}``; ``task.params`` and ``task.state`` are JSON *strings*; dates are ISO-8601
strings; ``retryAt``, ``startedAt``, ``scheduledAt`` and ``ownerId`` may be null or missing.
Fields elastask does not model are kept untouched, so a round trip changes nothing.

Each field is decoded by its reader in core/document_fields.py, which also holds the values a field may take.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from elastask.core import document_fields as read_field
from elastask.core.document_fields import DEFAULT_PRIORITY as DEFAULT_PRIORITY
from elastask.core.document_fields import INSTANCE_COSTS as INSTANCE_COSTS
from elastask.core.document_fields import STATUSES as STATUSES
from elastask.core.document_fields import Schedule
from elastask.core.intervals import format_date, parse_date, parse_interval_ms
from elastask.errors import DocumentError

_T = TypeVar("_T")


@dataclass(frozen=True)
class TaskDocument:
    """One task document with the version it was read at (``seq_no``/``primary_term``)."""

    id: str  # the document _id, "task:<id>"
    task_type: str
    status: str
    run_at: datetime
    attempts: int = 0
    scheduled_at: datetime | None = None
    retry_at: datetime | None = None
    started_at: datetime | None = None
    owner_id: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    enabled: bool = True
    priority: int = DEFAULT_PRIORITY
    scope: tuple[str, ...] | None = None
    trace_parent: str | None = None
    #: ``timeoutOverride`` (one-shot tasks): Kibana times this run by it instead of the type's timeout.
    timeout_override_ms: int | None = None
    #: ``cost`` of this instance in capacity units (Kibana's InstanceTaskCost), over its type's.
    cost: int | None = None
    seq_no: int | None = None
    primary_term: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_recurring(self) -> bool:
        """True when Kibana reschedules the task after a run instead of deleting it."""
        return self.schedule is not None

    def with_changes(self, **changes: Any) -> TaskDocument:
        """A copy with some fields changed; ``raw`` keeps the untouched rest."""
        return replace(self, **changes)

    def to_source(self) -> dict[str, Any]:
        """The full ``_source`` as Kibana writes it; unmodelled fields are kept as they were read."""
        source = copy.deepcopy(dict(self.raw)) if self.raw else new_envelope(self.run_at)
        source["type"] = "task"
        task = source.setdefault("task", {})
        for key, value in task_fields(self).items():
            if key in task and _same(key, task[key], value):
                continue  # keep the representation Kibana wrote
            if key not in task and value in _ABSENT_MEANS.get(key, (None,)):
                continue  # absent already means this
            task[key] = value
        return source


def task_fields(doc: TaskDocument) -> dict[str, Any]:
    """The modelled ``task.*`` fields in Kibana's spelling and representation."""
    fields: dict[str, Any] = {
        "taskType": doc.task_type,
        "status": doc.status,
        "runAt": format_date(doc.run_at),
        "scheduledAt": _date_or_none(doc.scheduled_at),
        "retryAt": _date_or_none(doc.retry_at),
        "startedAt": _date_or_none(doc.started_at),
        "attempts": doc.attempts,
        "ownerId": doc.owner_id,
        "params": json.dumps(doc.params, separators=(",", ":")),
        "state": json.dumps(doc.state, separators=(",", ":")),
        "enabled": doc.enabled,
    }
    if doc.schedule is not None:
        fields["schedule"] = (
            {"interval": doc.schedule.interval} if doc.schedule.interval else {"rrule": dict(doc.schedule.rrule or {})}
        )
    if doc.priority != DEFAULT_PRIORITY:
        fields["priority"] = doc.priority
    if doc.scope is not None:
        fields["scope"] = list(doc.scope)
    if doc.trace_parent is not None:
        fields["traceparent"] = doc.trace_parent
    return fields


#: What a missing field reads as, so a round trip does not add it.
_ABSENT_MEANS: dict[str, tuple[Any, ...]] = {"enabled": (True,), "attempts": (0,), "params": ("{}",), "state": ("{}",)}


def _same(key: str, old: Any, new: Any) -> bool:
    """True when the stored value means the same as the serialized one."""
    if old == new:
        return True
    try:
        if key in ("params", "state"):
            return isinstance(old, str) and json.loads(old) == json.loads(new)
        if key in ("runAt", "scheduledAt", "retryAt", "startedAt") and old is not None and new is not None:
            return parse_date(old) == parse_date(new)
    except (ValueError, TypeError):
        return False
    return False


def _date_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_date(moment)


def new_envelope(now: datetime) -> dict[str, Any]:
    """The top-level fields Kibana's saved-objects layer writes around ``task``."""
    return {
        "type": "task",
        "task": {},
        "migrationVersion": {"task": "8.8.0"},
        "references": [],
        "updated_at": format_date(now),
    }


def parse_hit(hit: Mapping[str, Any]) -> TaskDocument:
    """A search/get hit (``_id``, ``_seq_no``, ``_primary_term``, ``_source``) as a TaskDocument."""
    doc_id = hit.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise DocumentError(str(doc_id), "_id", "missing or not a string", doc_id)
    source = hit.get("_source")
    doc = parse_source(doc_id, source if isinstance(source, Mapping) else {})
    return replace(doc, seq_no=hit.get("_seq_no"), primary_term=hit.get("_primary_term"))


def parse_source(doc_id: str, source: Mapping[str, Any]) -> TaskDocument:
    """Validate and decode one ``_source``; a bad field raises DocumentError naming id and field.

    Total: every field goes through ``read``, which turns any failure of its reader into a
    DocumentError, so no JSON value in any field can raise anything else.
    """
    if source.get("type") != "task":
        raise DocumentError(doc_id, "type", "expected 'task'", source.get("type"))
    task = source.get("task")
    if not isinstance(task, Mapping):
        raise DocumentError(doc_id, "task", "missing or not an object", task)

    def read(key: str, reader: Callable[[Any], _T], default: Any = None) -> _T:
        value = task.get(key, default)
        try:
            return reader(value)
        except (ValueError, TypeError, ArithmeticError, RecursionError) as e:
            raise DocumentError(doc_id, f"task.{key}", str(e) or type(e).__name__, value) from e

    return TaskDocument(
        id=doc_id,
        task_type=read("taskType", read_field.text),
        status=read("status", read_field.status),
        run_at=read("runAt", read_field.required_date),
        scheduled_at=read("scheduledAt", read_field.optional_date),
        retry_at=read("retryAt", read_field.optional_date),
        started_at=read("startedAt", read_field.optional_date),
        attempts=read("attempts", read_field.attempts, 0),
        owner_id=read("ownerId", read_field.optional_text),
        params=read("params", read_field.json_object),
        state=read("state", read_field.json_object),
        schedule=read("schedule", read_field.schedule),
        enabled=read("enabled", read_field.enabled, True),
        priority=read("priority", read_field.priority, DEFAULT_PRIORITY),
        scope=read("scope", read_field.scope),
        trace_parent=read("traceparent", read_field.optional_text),
        timeout_override_ms=read("timeoutOverride", read_field.timeout_override),
        cost=read("cost", read_field.instance_cost),
        raw=source,
    )


def new_task(
    task_id: str,
    task_type: str,
    *,
    now: datetime,
    run_at: datetime | None = None,
    params: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    interval: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    scope: tuple[str, ...] | None = None,
    partition: int | None = None,
) -> TaskDocument:
    """A new task as Kibana's ``taskManager.schedule`` writes it: idle, attempts 0, runAt = now.

    ``partition`` (0-255) is what Kibana 8.16+ sets from a hash of the id, so that each node of the
    ``mget`` claimer only searches the partitions assigned to it.
    """
    if interval is not None:
        parse_interval_ms(interval)
    doc = TaskDocument(
        id=task_id if task_id.startswith("task:") else f"task:{task_id}",
        task_type=task_type,
        status="idle",
        run_at=run_at or now,
        scheduled_at=now,
        params=dict(params or {}),
        state=dict(state or {}),
        schedule=Schedule(interval=interval) if interval else None,
        priority=priority,
        scope=scope,
    )
    # Kibana writes every field of a new task, nulls included.
    task = task_fields(doc)
    if partition is not None:
        task["partition"] = partition
    return doc.with_changes(raw={**new_envelope(now), "task": task})


#: Fields of a task that hold credentials (Kibana encrypts them; elastask never shows them).
SECRET_FIELDS = ("apiKey", "uiamApiKey")
#: Fields whose values are the user's data: never logged.
PRIVATE_FIELDS = ("task.params", "task.state", "task.apiKey", "task.uiamApiKey", "task.user")


def masked_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A task document's ``_source`` with its credentials replaced by ``"***"`` (for ``elastask tasks show``)."""
    masked = dict(source)
    task = masked.get("task")
    if isinstance(task, Mapping):
        masked["task"] = {k: ("***" if k in SECRET_FIELDS and v is not None else v) for k, v in task.items()}
    return masked

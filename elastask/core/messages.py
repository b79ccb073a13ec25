"""The messages the loops exchange through the broker: a dispatch job and the claimed tasks it carries. Pure.

The claim loop sends one ``DispatchJob`` per Kibana node and claim cycle on the node's queue
``elastask.dispatch.<ownerId>``; the dispatch loop pushes its tasks.
Their JSON form is the Celery message's argument, so fields are only ever added, with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from elastask.core import policy
from elastask.core.documents import TaskDocument, task_fields
from elastask.core.intervals import parse_date


@dataclass(frozen=True)
class ClaimedTask:
    """One claimed task as its dispatch job carries it: the claim's version and the ``_run_now`` body."""

    doc_id: str
    owner_id: str
    node_url: str
    seq_no: int
    primary_term: int
    retry_at: str
    attempts: int
    lease_ms: int  # how long the claim leased the task for (retryAt - startedAt)
    body: dict[str, Any]
    claim_seq_no: int | None = None  # the claim's version when a renewal changed seq_no
    slack_ms: int = policy.MIN_SLACK_MS  # the lease's dispatch slack: a job that waited longer renews it

    @property
    def claim(self) -> int:
        """The version the claim wrote: a push is attempted at most once per claim."""
        return self.seq_no if self.claim_seq_no is None else self.claim_seq_no

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies the body: the message is serialised at once and the
        # body is never changed after the claim.
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class DispatchJob:
    """The Celery job on a node's queue: the tasks one claim cycle claimed for that Kibana node."""

    owner_id: str
    node_url: str
    tasks: tuple[ClaimedTask, ...]
    #: Push no earlier than this (ISO date): the latest runAt of the tasks, when claimed ahead.
    not_before: str | None = None
    #: The tokens of this job's earlier executions that failed before any push (a Celery retry): push
    #: markers they set are this job's to push under (loops/dispatch/push_markers.py).
    marked_by: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DispatchJob:
        """From its JSON form in the Celery message (elastask 0.1's one-task form is accepted too)."""
        if "tasks" in data:
            tasks = tuple(ClaimedTask(**task) for task in data["tasks"])
            not_before = data.get("not_before")
            marked_by = tuple(str(token) for token in data.get("marked_by") or ())
            return cls(
                str(data["owner_id"]), str(data["node_url"]), tasks, str(not_before) if not_before else None, marked_by
            )
        task = ClaimedTask(**data)  # a message enqueued by elastask 0.1, one task per job
        return cls(task.owner_id, task.node_url, (task,))

    def as_dict(self) -> dict[str, Any]:
        return {
            "owner_id": self.owner_id,
            "node_url": self.node_url,
            "tasks": [t.as_dict() for t in self.tasks],
            "not_before": self.not_before,
            "marked_by": list(self.marked_by),
        }

    def leases_end(self) -> datetime | None:
        """When the last of its tasks' leases runs out (their ``retryAt`` as claimed); None without tasks."""
        return max((parse_date(task.retry_at) for task in self.tasks), default=None)

    def retried_after(self, token: str) -> DispatchJob:
        """This job as its retry carries it, after an execution with ``token`` failed before any push."""
        return replace(self, marked_by=(*self.marked_by, token))


def run_now_body(doc: TaskDocument) -> dict[str, Any]:
    """The JSON body of ``POST /api/task_manager/_run_now``: the fields the reference dispatcher sends.

    ``params`` and ``state`` go as objects: the route hands them to ``ephemeralRunNow``, whose task
    instance holds decoded objects. ``id`` is the document ``_id`` that Kibana updates or deletes.
    """
    fields = task_fields(doc)
    body: dict[str, Any] = {
        "id": doc.id,
        "taskType": doc.task_type,
        "params": dict(doc.params),
        "state": dict(doc.state),
        "scope": list(doc.scope) if doc.scope is not None else None,
        "schedule": fields.get("schedule"),
        "runAt": fields["runAt"],
        "retryAt": fields["retryAt"],
        "startedAt": fields["startedAt"],
        "scheduledAt": fields["scheduledAt"],
        "ownerId": doc.owner_id,
        "attempts": doc.attempts,
        "status": doc.status,
        "traceparent": doc.trace_parent or "",
    }
    return {key: value for key, value in body.items() if value is not None}

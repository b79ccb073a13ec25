"""Is a Kibana node set up to be pushed to? Read from its ``/api/status`` and ``/api/task_manager/_health``. Pure.

A push target runs the ``external-task-manager`` branch with, in ``kibana.yml``::

    xpack.task_manager.ephemeral_tasks.enabled: true        # _run_now runs tasks through the ephemeral queue
    xpack.task_manager.unsafe.disable_task_claiming: true   # elastask pushes all work; the node claims none
    xpack.task_manager.ephemeral_tasks.request_capacity: N  # at least the node's capacity in elastask

Where the health API shows a setting (``stats.configuration.value.ephemeral_tasks`` and ``.unsafe``),
it is read from there. Otherwise: a ``stats.ephemeral`` section means ephemeral tasks are on, and a
``last_successful_poll`` in the last minute means the node still claims on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from elastask.core.intervals import parse_date

#: Kibana versions the push route (``POST /api/task_manager/_run_now``) is known to exist on: the
#: external-task-manager branch is built on Kibana 8 (ephemeral tasks exist from 7.16 and are gone in 9).
KNOWN_MAJORS = (8,)
#: A poll this recent means the node's own claimer runs.
RECENT_POLL = timedelta(minutes=1)


@dataclass(frozen=True)
class SetupFinding:
    """One thing wrong (or unknown) about a node's setup, with the kibana.yml line that fixes it."""

    problem: bool  # False: a warning (works, but not as documented)
    detail: str
    fix: str


def _value(health: Mapping[str, Any], *path: str) -> Any:
    node: Any = health
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def setup_findings(
    status: Mapping[str, Any], health: Mapping[str, Any] | None, capacity: int, now: datetime
) -> list[SetupFinding]:
    """What is wrong with a node's setup for push (empty: set up as documented).

    ``capacity``: the most tasks elastask runs on the node at once; ``health`` None when the health
    API could not be read (only the version is checked then).
    """
    findings = []
    version = str(_value(status, "version", "number") or "unknown")
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) not in KNOWN_MAJORS:
        findings.append(
            SetupFinding(
                False,
                f"Kibana {version}: the _run_now route is known only on the external-task-manager branch of Kibana "
                f"{', '.join(f'{m}.x' for m in KNOWN_MAJORS)}",
                "run the external-task-manager branch on this node",
            )
        )
    if health is None:
        return findings
    config = _value(health, "stats", "configuration", "value") or {}
    ephemeral = config.get("ephemeral_tasks") if isinstance(config, Mapping) else None
    enabled = (
        ephemeral.get("enabled") if isinstance(ephemeral, Mapping) else _value(health, "stats", "ephemeral") is not None
    )
    if not enabled:
        findings.append(
            SetupFinding(
                True,
                "ephemeral tasks are off: _run_now has no queue to run pushed tasks in",
                "in kibana.yml: xpack.task_manager.ephemeral_tasks.enabled: true",
            )
        )
    request_capacity = ephemeral.get("request_capacity") if isinstance(ephemeral, Mapping) else None
    if enabled and isinstance(request_capacity, int) and request_capacity < capacity:
        findings.append(
            SetupFinding(
                True,
                f"its ephemeral queue runs {request_capacity} pushed tasks at once but elastask pushes up to "
                f"{capacity}: pushes over {request_capacity} are accepted (204) and dropped, and run again only when "
                "their lease (retryAt) runs out",
                f"in kibana.yml: xpack.task_manager.ephemeral_tasks.request_capacity: {capacity} "
                f"(or lower this node's capacity in elastask.yaml to {request_capacity})",
            )
        )
    if _claims_on_its_own(health, now):
        findings.append(
            SetupFinding(
                True,
                "it still claims tasks on its own: it races elastask for the same tasks (conditional writes keep "
                "each to one run, at the cost of conflicts) and runs more tasks than elastask's cap",
                "in kibana.yml: xpack.task_manager.unsafe.disable_task_claiming: true",
            )
        )
    return findings


def _claims_on_its_own(health: Mapping[str, Any], now: datetime) -> bool:
    disabled = _value(health, "stats", "configuration", "value", "unsafe", "disable_task_claiming")
    if isinstance(disabled, bool):
        return not disabled
    last_poll = _value(health, "stats", "runtime", "value", "polling", "last_successful_poll")
    try:
        return isinstance(last_poll, str) and now - parse_date(last_poll) < RECENT_POLL
    except ValueError:
        return False

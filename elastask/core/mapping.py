"""Kibana's mapping of the task index (``dynamic: false``) and the fields elastask queries. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The physical index behind the ``.kibana_task_manager`` alias, as Kibana names it.
INDEX_SUFFIX = "_8.18.0_001"

TASK_PROPERTIES: dict[str, Any] = {
    "taskType": {"type": "keyword"},
    "scheduledAt": {"type": "date"},
    "runAt": {"type": "date"},
    "retryAt": {"type": "date"},
    "enabled": {"type": "boolean"},
    "schedule": {"properties": {"interval": {"type": "keyword"}}},
    "attempts": {"type": "integer"},
    "status": {"type": "keyword"},
    "scope": {"type": "keyword"},
    "ownerId": {"type": "keyword"},
    "partition": {"type": "integer"},
    "priority": {"type": "integer"},
    "userScope": {"properties": {"apiKeyId": {"type": "keyword"}}},
}

MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "type": {"type": "keyword"},
        "updated_at": {"type": "date"},
        "task": {"properties": TASK_PROPERTIES},
    },
}

#: Fields elastask's queries filter or sort on; a mapping without one of them gives wrong answers.
QUERIED_FIELDS = (
    "type",
    "task.taskType",
    "task.status",
    "task.runAt",
    "task.retryAt",
    "task.attempts",
    "task.enabled",
    "task.ownerId",
    "task.priority",
)


def missing_fields(mapping: Mapping[str, Any]) -> list[str]:
    """The QUERIED_FIELDS that a ``properties`` tree (as GET _mapping returns it) does not index."""
    missing = []
    for dotted in QUERIED_FIELDS:
        node: Mapping[str, Any] | None = mapping
        for part in dotted.split("."):
            properties = node.get("properties", {}) if node else {}
            node = properties.get(part) if isinstance(properties, Mapping) else None
        if node is None or node.get("index") is False:
            missing.append(dotted)
    return missing

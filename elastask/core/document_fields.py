"""The fields of a task document as Kibana writes them: the values each may take, and one reader per field. Pure.

A reader takes the field's JSON value and returns it decoded, or raises ValueError naming the problem;
documents.py's ``parse_source`` turns that into a DocumentError naming the document and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from elastask.core.intervals import parse_date, parse_interval_ms

#: Every status Kibana's TaskStatus enum has.
STATUSES = frozenset({"idle", "claiming", "running", "failed", "should_delete", "unrecognized", "dead_letter"})

#: Kibana maps attempts and priority as ``integer`` fields.
MAX_INTEGER = 2**31 - 1

#: The priority of a task that has none (Kibana's TaskPriority.Normal).
DEFAULT_PRIORITY = 50


@dataclass(frozen=True)
class Schedule:
    """A recurring task's schedule: an interval string, or an rrule mapping."""

    interval: str | None = None
    rrule: Mapping[str, Any] | None = None

    @property
    def interval_ms(self) -> int | None:
        """The interval in milliseconds, or None for rrule schedules."""
        return parse_interval_ms(self.interval) if self.interval else None


#: Kibana's InstanceTaskCost names (task.ts) and their capacity units.
INSTANCE_COSTS = {"tiny": 1, "normal": 2, "large": 4, "extralarge": 10}


def status(value: Any) -> str:
    """``status``: one of STATUSES."""
    if not isinstance(value, str) or value not in STATUSES:
        raise ValueError(f"expected one of {sorted(STATUSES)}")
    return value


def instance_cost(value: Any) -> int | None:
    """``cost`` (an instance's own): one of INSTANCE_COSTS' names, as its units; None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in INSTANCE_COSTS:
        raise ValueError(f"expected one of {', '.join(INSTANCE_COSTS)}")
    return INSTANCE_COSTS[value]


def timeout_override(value: Any) -> int | None:
    """``timeoutOverride``: an interval (``10m``) in ms; None when absent or empty."""
    if value is None or value == "":
        return None
    return parse_interval_ms(value)


def text(value: Any) -> str:
    """A required string (``taskType``): present and not empty."""
    if not isinstance(value, str) or not value:
        raise ValueError("missing or not a non-empty string")
    return value


def optional_text(value: Any) -> str | None:
    """An optional string (``ownerId``, ``traceparent``): None when absent or empty."""
    if value is None or isinstance(value, str):
        return value or None
    raise ValueError("expected a string or null")


def required_date(value: Any) -> datetime:
    """A required date (``runAt``)."""
    if value is None:
        raise ValueError("missing; expected an ISO-8601 date")
    return date(value)


def optional_date(value: Any) -> datetime | None:
    """An optional date (``scheduledAt``, ``retryAt``, ``startedAt``): None when absent."""
    return None if value is None else date(value)


def date(value: Any) -> datetime:
    """An ISO-8601 date, timezone-aware."""
    try:
        return parse_date(value)
    except ValueError as e:
        raise ValueError(f"not an ISO-8601 date ({e})") from e


def attempts(value: Any) -> int:
    """``attempts``: an integer Kibana's ``integer`` mapping holds, not negative."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTEGER:
        raise ValueError("expected an integer from 0 to 2^31-1")
    return value


def json_object(value: Any) -> Mapping[str, Any]:
    """``params`` or ``state``: a JSON object in a string, as Kibana writes them; {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, str):
        raise ValueError("expected a JSON string, as Kibana writes it")
    try:
        decoded = json.loads(value) if value else {}
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(decoded, dict):
        raise ValueError("expected a JSON object")
    return decoded


def schedule(value: Any) -> Schedule | None:
    """``schedule``: an interval, or an rrule with its ``freq``; None for a one-shot task."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("expected an object")
    interval, rrule = value.get("interval"), value.get("rrule")
    if interval is not None:
        try:
            parse_interval_ms(interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from e
        return Schedule(interval=interval)
    if isinstance(rrule, Mapping) and rrule.get("freq") is not None:
        return Schedule(rrule=rrule)
    raise ValueError("expected an interval or an rrule with freq")


def enabled(value: Any) -> bool:
    """``enabled``: true or false; true when absent."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def priority(value: Any) -> int:
    """``priority``: an integer Kibana's ``integer`` mapping holds; DEFAULT_PRIORITY when absent."""
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_INTEGER - 1 <= value <= MAX_INTEGER:
        raise ValueError("expected an integer from -2^31 to 2^31-1")
    return value


def scope(value: Any) -> tuple[str, ...] | None:
    """``scope``: a string or a list of strings, as a tuple; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError("expected a string or a list of strings")

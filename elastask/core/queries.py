"""Search request bodies for the claim, retry and audit loops. Pure: ``now`` is passed in."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from elastask.core.documents import DEFAULT_PRIORITY, STATUSES
from elastask.core.intervals import format_date, parse_interval_ms

IN_FLIGHT_STATUSES = ("claiming", "running")


def _is_task() -> dict[str, Any]:
    # The index holds other saved-object types too (background-task-node, ...).
    return {"term": {"type": "task"}}


def _types(names: Collection[str]) -> list[dict[str, Any]]:
    """Clauses matching these task types; a name ending in ``*`` matches every type it prefixes."""
    exact = sorted(n for n in names if not n.endswith("*"))
    clauses: list[dict[str, Any]] = [{"terms": {"task.taskType": exact}}] if exact else []
    clauses += [{"prefix": {"task.taskType": n[:-1]}} for n in sorted(names) if n.endswith("*")]
    return clauses


def attempts_below_max(default_max: int, max_by_type: Mapping[str, int]) -> dict[str, Any]:
    """``attempts < max``, with per-task-type maxima (``prefix*`` patterns too) where they differ.

    An exact type wins over a pattern that covers it, a longer pattern over a shorter one (as the
    rules themselves do): each clause leaves out the more specific names that set their own maximum.
    """
    clauses: list[dict[str, Any]] = []
    for task_type, maximum in sorted(max_by_type.items()):
        if maximum == default_max and not task_type.endswith("*"):
            continue
        more_specific = [
            other
            for other in max_by_type
            if other != task_type
            and task_type.endswith("*")
            and other.startswith(task_type[:-1])
            and (not other.endswith("*") or len(other) > len(task_type))
        ]
        match = _types([task_type])
        clauses.append(
            {
                "bool": {
                    "filter": [*match, {"range": {"task.attempts": {"lt": maximum}}}],
                    **({"must_not": _types(more_specific)} if more_specific else {}),
                }
            }
        )
    overridden = [t for t, m in max_by_type.items() if m != default_max or t.endswith("*")]
    default: dict[str, Any] = {"bool": {"filter": [{"range": {"task.attempts": {"lt": default_max}}}]}}
    if overridden:
        default["bool"]["must_not"] = _types(overridden)
    # A document without attempts (never run) counts as 0.
    missing = {"bool": {"must_not": [{"exists": {"field": "task.attempts"}}]}}
    return {"bool": {"should": [*clauses, default, missing], "minimum_should_match": 1}}


def due_tasks(
    now: datetime,
    *,
    size: int,
    default_max_attempts: int,
    max_attempts_by_type: Mapping[str, int],
    exclude_ids: Collection[str] = (),
    next_run_after: datetime | None = None,
    priority_by_type: Mapping[str, int] | None = None,
    exclude_types: Collection[str] = (),
    only_types: Collection[str] = (),
    share: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Idle tasks whose runAt has come, highest priority first, then oldest runAt (Kibana's order).

    Priority: the document's ``task.priority``, else its type's (``priority_by_type``, ``prefix*``
    patterns too), else Kibana's Normal (50). ``exclude_types`` (types Kibana removed, types searched
    apart) and ``only_types`` (a limited-concurrency group's own search) narrow it by ``taskType``;
    ``share``, by partition (a claim lane's share: core/lanes.py).

    Only ids, versions and task types come back (``_source: false``): the claim loop reads the documents
    it may claim with a real-time ``mget`` anyway, so the search does not load every hit's source; the
    types say how many of the hits the room can take (loops/claim/fresh_hits.py ``read_limit``).
    ``next_run_after``: also return (aggregation ``next_run_at``) the earliest runAt after it of any
    claimable idle task, in the same request, so a quiet claim loop knows how long it may rest.
    """
    must_not: list[dict[str, Any]] = [{"term": {"task.enabled": False}}, *_types(exclude_types)]
    if exclude_ids:
        must_not.append({"ids": {"values": sorted(exclude_ids)}})
    # Kibana claims a recurring task whatever its attempts; a one-shot one only below its maximum
    # (one at or over it is failed by the retry loop: see exhausted_one_shots).
    attempts = {
        "bool": {
            "should": [_is_recurring(), attempts_below_max(default_max_attempts, max_attempts_by_type)],
            "minimum_should_match": 1,
        }
    }
    query = _claimable_idle({"lte": format_date(now)}, attempts, must_not)
    if only_types:
        query["bool"]["filter"].append({"bool": {"should": _types(only_types), "minimum_should_match": 1}})
    if share is not None:
        query["bool"]["filter"].append(dict(share))
    body = {
        "query": query,
        "sort": [priority_sort(priority_by_type or {}), {"task.runAt": {"order": "asc"}}],
        "size": size,
        "seq_no_primary_term": True,
        "_source": False,
        # Each hit's type, from its doc values (no source loaded): its cost tells how many hits fill the room.
        "docvalue_fields": ["task.taskType"],
    }
    if next_run_after is not None:
        later = _claimable_idle({"gt": format_date(next_run_after)}, attempts, [{"term": {"task.enabled": False}}])
        # ``global``: the earliest later runAt is outside the query's own runAt range.
        body["aggs"] = {
            "later": {
                "global": {},
                "aggs": {"idle": {"filter": later, "aggs": {"next_run_at": {"min": {"field": "task.runAt"}}}}},
            }
        }
    return body


def next_run_at_ms(answer: Mapping[str, Any]) -> int | None:
    """The ``next_run_at`` aggregation of a ``due_tasks`` answer, in ms since the epoch (None: no later task)."""
    value = answer.get("aggregations", {}).get("later", {}).get("idle", {}).get("next_run_at", {}).get("value")
    return None if value is None else int(value)


#: The claim order's priority when types have their own (Kibana's getSortByPriority, plus the document's own).
PRIORITY_SCRIPT = (
    "if (doc['task.priority'].size() != 0) { return doc['task.priority'].value; } "
    "String t = doc['task.taskType'].size() != 0 ? doc['task.taskType'].value : ''; "
    "if (params.exact.containsKey(t)) { return params.exact[t]; } "
    "for (def p : params.prefixes) { if (t.startsWith(p[0])) { return p[1]; } } "
    "return params.fallback;"
)


def priority_sort(priority_by_type: Mapping[str, int]) -> dict[str, Any]:
    """Highest priority first: the document's own, else its type's, else 50 (a plain field sort when no
    type has one of its own: the engine's cheapest)."""
    if not priority_by_type:
        return {"task.priority": {"order": "desc", "missing": DEFAULT_PRIORITY, "unmapped_type": "integer"}}
    exact = {t: p for t, p in sorted(priority_by_type.items()) if not t.endswith("*")}
    patterns = sorted(((t[:-1], p) for t, p in priority_by_type.items() if t.endswith("*")), key=lambda tp: -len(tp[0]))
    return {
        "_script": {
            "type": "number",
            "order": "desc",
            "script": {
                "lang": "painless",
                "source": PRIORITY_SCRIPT,
                "params": {"exact": exact, "prefixes": [list(tp) for tp in patterns], "fallback": DEFAULT_PRIORITY},
            },
        }
    }


def _claimable_idle(run_at: dict[str, str], attempts: dict[str, Any], must_not: list[dict[str, Any]]) -> dict[str, Any]:
    """Idle tasks within a ``runAt`` range that a claim may take (attempts rule, exclusions)."""
    filters = [_is_task(), {"term": {"task.status": "idle"}}, {"range": {"task.runAt": run_at}}, attempts]
    return {"bool": {"filter": filters, "must_not": must_not}}


def _is_recurring() -> dict[str, Any]:
    return {"exists": {"field": "task.schedule.interval"}}


def exhausted_one_shots(
    *, size: int, default_max_attempts: int, max_attempts_by_type: Mapping[str, int]
) -> dict[str, Any]:
    """Idle one-shot tasks at or over their maximum attempts: never claimable, so the retry loop fails them."""
    return {
        "query": {
            "bool": {
                "filter": [_is_task(), {"term": {"task.status": "idle"}}],
                "must_not": [
                    _is_recurring(),
                    attempts_below_max(default_max_attempts, max_attempts_by_type),
                    {"term": {"task.enabled": False}},
                ],
            }
        },
        "size": size,
        "seq_no_primary_term": True,
    }


def expired_leases(*, grace_s: int, size: int, exclude_ids: Collection[str] = ()) -> dict[str, Any]:
    """Tasks claimed or running whose lease (retryAt) ran out, ``grace_s`` ago, without an outcome.

    "Ran out" is judged on the engine's clock (date math ``now``), the clock Kibana's own claimer
    uses too: a dispatcher machine whose clock runs ahead never takes back a task Kibana still runs.
    ``exclude_ids``: malformed documents already reported, so they never fill every batch.
    """
    must_not = [{"ids": {"values": sorted(exclude_ids)}}] if exclude_ids else []
    # Date math has no ms unit: whole seconds.
    query = _leased({"lte": f"now-{grace_s}s"}, size=size, must_not=must_not)
    return {**query, "sort": [{"task.retryAt": {"order": "asc"}}]}


def in_flight(now: datetime, owner_ids: Collection[str] | None, *, size: int) -> dict[str, Any]:
    """Tasks still leased to the given Kibana nodes, or to any node (``None``), to rebuild a lost ledger."""
    owners = [] if owner_ids is None else [{"terms": {"task.ownerId": sorted(owner_ids)}}]
    return _leased({"gt": format_date(now)}, size=size, also=owners)


def _leased(
    retry_at: dict[str, str], *, size: int, also: list[dict[str, Any]] | None = None, must_not: list[Any] | None = None
) -> dict[str, Any]:
    """Tasks claimed or running (with their versions) whose ``retryAt`` is in the given range."""
    condition: dict[str, Any] = {
        "filter": [
            _is_task(),
            {"terms": {"task.status": list(IN_FLIGHT_STATUSES)}},
            *(also or []),
            {"range": {"task.retryAt": retry_at}},
        ]
    }
    if must_not is not None:
        condition["must_not"] = must_not
    return {"query": {"bool": condition}, "size": size, "seq_no_primary_term": True}


def unclaimable(*, size: int) -> dict[str, Any]:
    """Task documents no loop would ever pick up: unknown status, or idle without a runAt."""
    return {
        "query": {
            "bool": {
                "filter": [_is_task()],
                "should": [
                    {"bool": {"must_not": [{"terms": {"task.status": sorted(STATUSES)}}]}},
                    {
                        "bool": {
                            "filter": [{"term": {"task.status": "idle"}}],
                            "must_not": [{"exists": {"field": "task.runAt"}}],
                        }
                    },
                ],
                "minimum_should_match": 1,
            }
        },
        "size": size,
        "_source": ["task.status", "task.runAt", "task.taskType"],
    }


def counts_by_status() -> dict[str, Any]:
    """Task counts per status (for status views)."""
    return {
        "query": {"bool": {"filter": [_is_task()]}},
        "size": 0,
        "aggs": {"status": {"terms": {"field": "task.status", "size": 20}}},
    }


#: Distinct schedule intervals the capacity estimation reads (Kibana's task types use a few dozen).
SCHEDULE_BUCKETS = 500


def recurring_schedules() -> dict[str, Any]:
    """Enabled recurring tasks counted per schedule interval (for the capacity estimation's demand)."""
    return {
        "query": {
            "bool": {
                "filter": [_is_task(), _is_recurring()],
                "must_not": [{"term": {"task.enabled": False}}, {"terms": {"task.status": ["failed", "unrecognized"]}}],
            }
        },
        "size": 0,
        "aggs": {"interval": {"terms": {"field": "task.schedule.interval", "size": SCHEDULE_BUCKETS}}},
    }


def recurring_per_minute(answer: Mapping[str, Any]) -> float:
    """Runs per minute the schedules of a ``recurring_schedules`` answer ask for (unreadable intervals skipped)."""
    total = 0.0
    for bucket in answer.get("aggregations", {}).get("interval", {}).get("buckets", []):
        try:
            total += bucket["doc_count"] * 60_000 / parse_interval_ms(str(bucket["key"]))
        except (KeyError, TypeError, ValueError):
            continue
    return total

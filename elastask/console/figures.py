"""The console's figures from what was read (pure: no Redis, no engine, no clock of its own).

Each figure is computed from the same inputs as ``elastask status``, ``/health`` and ``/metrics``:
the ledger's units in flight, the breakers, the pauses, the usage window, the recent pushes, and one
search with aggregations (``backlog_query``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from elastask.core import queries
from elastask.core.capacity_estimate import describe
from elastask.core.percentiles import percentile
from elastask.ops.recent import Start

#: Kibana's own pull claims every 500 ms (``poll_interval`` 500 since 8.16... 3 s idle): the drift a
#: puller cannot beat, drawn beside elastask's.
KIBANA_PULL_TARGET_MS = 500
#: Task types listed in the backlog (the rest summed as "other types").
BACKLOG_TYPES = 50
OLDEST_FIRST = {"task.runAt": {"order": "asc"}}


def backlog_query(due: Mapping[str, Any], overdue_before: str) -> dict[str, Any]:
    """One search for the whole page: counts by status, the due tasks by type with the oldest of each
    and those overdue (runAt before ``overdue_before``), and the recurring schedules (capacity demand).

    ``due``: the claim loop's own due query (``queries.due_tasks(...)["query"]``), so "due" means
    what the next claim cycle would look for.
    """
    overdue = {"range": {"task.runAt": {"lt": overdue_before}}}
    recurring = queries.recurring_schedules()
    return {
        "query": {"term": {"type": "task"}},
        "size": 0,
        "aggs": {
            "status": queries.counts_by_status()["aggs"]["status"],
            "recurring": {"filter": recurring["query"], "aggs": recurring["aggs"]},
            "due": {
                "filter": due,
                "aggs": {
                    "overdue": {"filter": overdue},
                    "types": {
                        "terms": {"field": "task.taskType", "size": BACKLOG_TYPES},
                        "aggs": {
                            "overdue": {"filter": overdue},
                            "oldest": {
                                "top_hits": {
                                    "size": 1,
                                    "sort": [{"task.runAt": {"order": "asc"}}],
                                    "_source": ["task.runAt"],
                                }
                            },
                        },
                    },
                },
            },
        },
    }


def backlog(answer: Mapping[str, Any], now_ms: int, parse_ms: Any) -> dict[str, Any]:
    """The due tasks of a ``backlog_query`` answer: totals and one row per task type, oldest first.

    ``parse_ms``: the date parser (a date the engine holds may not parse: that row says so).
    """
    aggs = answer.get("aggregations", {})
    due = aggs.get("due", {})
    rows = []
    for bucket in due.get("types", {}).get("buckets", []):
        hits = bucket.get("oldest", {}).get("hits", {}).get("hits", [])
        oldest = hits[0] if hits else None
        run_at = (oldest or {}).get("_source", {}).get("task", {}).get("runAt")
        try:
            late_s = None if run_at is None else round(max(0, now_ms - parse_ms(run_at)) / 1000, 1)
        except Exception:  # a malformed runAt: the claim loop quarantines it; here it only has no age
            late_s = None
        rows.append(
            {
                "task_type": bucket.get("key"),
                "due": bucket.get("doc_count", 0),
                "overdue": bucket.get("overdue", {}).get("doc_count", 0),
                "oldest_id": None if oldest is None else oldest.get("_id"),
                "oldest_run_at": run_at,
                "waiting_s": late_s,
            }
        )
    rows.sort(key=lambda r: -(r["waiting_s"] or 0))
    listed = sum(r["due"] for r in rows)
    total = due.get("doc_count", 0)
    return {
        "due_now": total,
        "overdue": due.get("overdue", {}).get("doc_count", 0),
        "by_type": rows,
        "other_types_due": max(0, total - listed),
    }


def status_counts(answer: Mapping[str, Any]) -> dict[str, int]:
    buckets = answer.get("aggregations", {}).get("status", {}).get("buckets", [])
    return {str(b["key"]): int(b["doc_count"]) for b in buckets}


def recurring_per_minute(answer: Mapping[str, Any]) -> float:
    """The recurring schedules' demand, from the ``recurring`` aggregation of a ``backlog_query`` answer."""
    return queries.recurring_per_minute({"aggregations": answer.get("aggregations", {}).get("recurring", {})})


def drift_series(starts: Iterable[Start], now_ms: int, minutes: int, bucket_s: int) -> dict[str, Any]:
    """Start drift p50/p99 per task type (and for all types) per time bucket over the last ``minutes``.

    Buckets without a start are left out (a chart draws a gap, not a zero).
    """
    bucket_ms = bucket_s * 1000
    first = (now_ms - minutes * 60_000) // bucket_ms * bucket_ms
    samples: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in starts:
        if start.at_ms < first:
            continue
        bucket = start.at_ms // bucket_ms * bucket_ms
        samples[start.task_type][bucket].append(start.drift_s)
        samples[""][bucket].append(start.drift_s)
    series = {
        task_type or "all types": [
            {
                "t": bucket,
                "p50_ms": _ms(percentile(values, 0.5)),
                "p99_ms": _ms(percentile(values, 0.99)),
                "n": len(values),
            }
            for bucket, values in sorted(buckets.items())
        ]
        for task_type, buckets in samples.items()
    }
    return {
        "from_ms": first,
        "to_ms": now_ms,
        "bucket_s": bucket_s,
        "kibana_pull_target_ms": KIBANA_PULL_TARGET_MS,
        "series": dict(sorted(series.items(), key=lambda kv: (kv[0] != "all types", kv[0]))),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def rotation(breaker: Mapping[str, int], now_ms: int) -> dict[str, Any]:
    """A node's breaker in words: ``in``; ``out`` (after failures, until its next probe); ``probing``."""
    open_until = breaker.get("open_until_ms", 0)
    if not open_until:
        return {"state": "in", "failures": breaker.get("failures", 0)}
    outage = breaker.get("outage_since_ms", 0)
    return {
        "state": "probing" if open_until <= now_ms else "out",
        "failures": breaker.get("failures", 0),
        "failed_probes": breaker.get("probes", 0),
        "out_for_s": round((now_ms - outage) / 1000, 1) if outage else None,
    }


def runs_per_minute(window_s: float, by_owner: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Runs started per minute per node over the usage window."""
    if window_s <= 0:
        return {}
    return {owner: round(values.get("runs", 0) * 60 / window_s, 1) for owner, values in by_owner.items()}


def headline(nodes: Sequence[Mapping[str, Any]], overdue: int | None, estimation: Mapping[str, Any]) -> dict[str, Any]:
    """The page's first sentence ("3 of 4 nodes' capacity in use; 0 overdue"), its level, and what to do."""
    in_rotation = [n for n in nodes if n["rotation"]["state"] == "in" and not n["paused"]]
    capacity = sum(n["capacity_units"] for n in in_rotation)
    used = sum(n["in_flight_units"] for n in nodes)
    in_use = used / capacity * len(in_rotation) if capacity else 0.0
    words = f"{in_use:.1f} of {len(in_rotation)} nodes' capacity in use"
    if len(in_rotation) != len(nodes):
        words += f" ({len(nodes) - len(in_rotation)} more out of rotation, paused or drained)"
    words += f"; {'unknown' if overdue is None else overdue} overdue"
    advice: list[str] = []
    level = "ok"
    proposed = estimation.get("proposed", {})
    needed = proposed.get("nodes_needed")
    if not in_rotation:
        level = "error"
        advice.append("no Kibana node takes tasks: bring a node back (undrain, resume) or check why it is out")
    if overdue:
        level = "error" if level == "error" else "warn"
        drain = proposed.get("minutes_to_drain_overdue")
        advice.append(
            f"{overdue} task(s) wait longer than they should: "
            + ("the fleet cannot drain them at this load" if drain is None else f"drained in about {drain} min")
        )
    if needed is not None and needed > len(in_rotation):
        level = "error" if level == "error" else "warn"
        advice.append(
            f"the observed load needs {needed} node(s) of this size, {len(in_rotation)} take tasks: add "
            f"{needed - len(in_rotation)} Kibana node(s) to kibana.hosts (or raise their capacity), "
            "or pause what can wait"
        )
    return {"words": words, "level": level, "advice": advice, "estimate_lines": describe(estimation)}


def group_use(groups: Mapping[str, Mapping[str, int]], limits: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Per node: per concurrency group, ``{in_use, limit}`` (groups with nothing in use and no limit left out)."""
    return {
        owner: {group: {"in_use": n, "limit": limits.get(group)} for group, n in sorted(counts.items()) if n}
        for owner, counts in groups.items()
    }

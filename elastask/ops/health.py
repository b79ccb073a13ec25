"""A health report modelled on Kibana's ``/api/task_manager/_health``: drift, load, claims, overdue, status.

Status thresholds (the same for ``elastask status --health`` and ``GET /health``):

- ``error``: no claim cycle finished within max(30 s, 10 x polling_interval); or no Kibana node in
  rotation; or the search engine or Redis cannot be read;
- ``warn``: start drift p99 over 60 s (Kibana's own delayed-start warning); or a node out of
  rotation; or tasks overdue (due for longer than max(60 s, 10 x polling_interval));
- ``OK`` otherwise.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from elastask.core import capacity_estimate, queries
from elastask.core.clock import epoch_ms
from elastask.core.intervals import format_date
from elastask.core.percentiles import percentile
from elastask.ops.metrics import MetricsReader
from elastask.ops.pausing import described as described_pauses
from elastask.ops.usage import UsageReader
from elastask.runtime import Runtime

DRIFT_WARN_S = 60.0


def _ms_percentiles(samples_s: list[float], points: tuple[float, ...]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for point in points:
        value = percentile(samples_s, point)
        result[f"p{round(point * 100)}"] = None if value is None else round(value * 1000, 1)
    return result


def overdue_after_s(polling_interval_ms: int) -> float:
    """A due task is overdue after this long without a start."""
    return max(60.0, 10 * polling_interval_ms / 1000)


def count_overdue(rt: Runtime, now: datetime) -> int:
    """Tasks due for longer than ``overdue_after_s`` (raises StoreError when the engine cannot be read)."""
    settings = rt.settings
    body = queries.due_tasks(
        now - timedelta(seconds=overdue_after_s(settings.polling_interval_ms)),
        size=0,
        default_max_attempts=settings.max_attempts,
        max_attempts_by_type={},
    )
    return rt.store.count(body["query"], "counting overdue tasks")


def capacity_estimation(rt: Runtime, now: datetime, overdue: int | None) -> dict[str, Any]:
    """Throughput, nodes needed and minutes to drain, estimated from the last minutes (see core/capacity_estimate.py).

    Raises StoreError or RedisError when a dependency cannot be read.
    """
    nodes, _ = rt.nodes.resolve()
    window = UsageReader(rt.redis).window(epoch_ms(now))
    answer = rt.store.search(queries.recurring_schedules(), "counting recurring tasks by schedule")
    observed = capacity_estimate.Observed(
        window_s=window.sampled_ms / 1000,
        nodes=capacity_estimate.node_usages({n.owner_id: n.capacity_units for n in nodes}, window.by_owner),
        overdue=overdue,
        recurring_per_minute=queries.recurring_per_minute(answer),
    )
    return capacity_estimate.estimate(observed, rt.settings.polling_interval_ms / 1000)


def health(rt: Runtime, now: datetime) -> dict[str, Any]:
    """The report; never raises for a dependency that is down (it says so, with status error)."""
    settings = rt.settings
    reasons: list[tuple[str, str]] = []
    report: dict[str, Any] = {"timestamp": format_date(now)}
    try:
        reader = MetricsReader(rt.redis)
        nodes, unresolved = rt.nodes.resolve()
        used = rt.ledger.used_units([n.owner_id for n in nodes])
        load = {n.owner_id: round(100 * used.get(n.owner_id, 0) / n.capacity_units, 1) for n in nodes}
        rotation = rt.nodes.in_rotation([n.owner_id for n in nodes])
        drift = reader.window("start_drift_seconds")
        cycles = reader.window("claim_duration_seconds")
        counters = reader.counters()
        last_ms = reader.last_claim_ms()
    except Exception as e:  # Redis or a node lookup failed
        return {**report, "status": "error", "reasons": [f"Redis cannot be read: {type(e).__name__}: {e}"]}
    report["drift_ms"] = _ms_percentiles(drift, (0.5, 0.9, 0.95, 0.99))
    report["load_percent"] = load
    report["nodes_in_rotation"] = rotation
    report["unresolved_nodes"] = unresolved
    report["claim_duration_ms"] = _ms_percentiles(cycles, (0.5, 0.99))
    report["claim_conflicts_total"] = counters.get("elastask_claim_conflicts_total", 0)
    report["claimed_total"] = counters.get("elastask_claimed_total", 0)
    stale_after = max(30.0, 10 * settings.polling_interval_ms / 1000)
    if last_ms is None:
        report["last_successful_claim"] = None
        reasons.append(("error", "no claim cycle has finished yet: is a beat and a worker running?"))
    else:
        age = now.timestamp() - last_ms / 1000
        report["last_successful_claim"] = format_date(datetime.fromtimestamp(last_ms / 1000, now.tzinfo))
        report["seconds_since_last_claim"] = round(age, 1)
        if age > stale_after:
            reasons.append(("error", f"no claim cycle finished for {age:.0f}s (limit {stale_after:.0f}s)"))
    if nodes and not any(rotation.values()):
        reasons.append(("error", "no Kibana node is in rotation"))
    for owner, ok in rotation.items():
        if not ok:
            reasons.append(("warn", f"Kibana node {owner} is out of rotation"))
    p99 = percentile(drift, 0.99)
    if p99 is not None and p99 > DRIFT_WARN_S:
        reasons.append(("warn", f"start drift p99 is {p99:.0f}s (over {DRIFT_WARN_S:.0f}s)"))
    overdue_after = overdue_after_s(settings.polling_interval_ms)
    try:
        overdue = count_overdue(rt, now)
        report["overdue"] = overdue
        if overdue:
            reasons.append(("warn", f"{overdue} task(s) due for more than {overdue_after:.0f}s"))
    except Exception as e:  # the engine is down or refuses
        report["overdue"] = None
        reasons.append(("error", f"the search engine cannot be read: {type(e).__name__}"))
    try:
        report.update(described_pauses(rt, now))
    except Exception as e:  # Redis is down: said above
        report["paused"] = None
        report["pauses_error"] = f"{type(e).__name__}: {e}"
    try:
        report["capacity_estimation"] = capacity_estimation(rt, now, report["overdue"])
    except Exception as e:  # an estimate is never worth failing the report for
        report["capacity_estimation"] = {"estimate": True, "error": f"{type(e).__name__}: {e}"}
    levels = {level for level, _ in reasons}
    report["status"] = "error" if "error" in levels else "warn" if "warn" in levels else "OK"
    report["reasons"] = [text for _, text in reasons]
    return report

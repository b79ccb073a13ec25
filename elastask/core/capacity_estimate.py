"""Capacity estimation from what the dispatcher observed: throughput, nodes needed, time to drain. Pure.

Kibana's health API estimates capacity from one node's view (its own load and the cluster's
schedules). elastask sees every node, so it estimates from the fleet's measured totals over a
window of minutes:

- throughput: runs started per minute, per node and overall;
- mean slot hold (push until elastask sees the outcome: the run plus the time to notice it), by
  Little's law: the average units in flight over the window divided by the units started per
  second (no per-task timestamps needed);
- demand: the observed throughput, or the recurring tasks' schedules when those ask for more
  (a saturated fleet runs less than is due, so what ran is only a lower bound);
- nodes needed: the fewest nodes (of the observed mean capacity) for which a task that becomes due
  waits for a free slot longer than the claim interval in at most 1 run in 100 — the Erlang C
  model of a queue with as many servers as there are slots;
- minutes to drain the overdue backlog: overdue tasks over the throughput left after new demand.

Every figure is an estimate, reported with the window it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Waiting longer than the claim interval for a slot is tolerated for at most this share of runs.
WAIT_TOLERANCE = 0.01
#: Never propose more nodes than this (the search stops; the estimate says "more than").
MAX_NODES = 1000


@dataclass(frozen=True)
class NodeUsage:
    """One node over the window: capacity, unit-milliseconds in flight, runs and units started."""

    owner_id: str
    capacity_units: int
    in_flight_unit_ms: float = 0.0
    runs: int = 0
    run_units: int = 0


@dataclass(frozen=True)
class Observed:
    """The window's totals as the loops recorded them."""

    window_s: float
    nodes: tuple[NodeUsage, ...]
    overdue: int | None = None
    #: Runs per minute the recurring tasks' schedules ask for (None when the engine was not asked).
    recurring_per_minute: float | None = None


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits, for ``servers`` slots and ``offered`` load (arrival rate x service time).

    1.0 when the load meets or exceeds the slots (the queue grows without end).
    """
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    blocked = 1.0  # Erlang B by its stable recurrence
    for k in range(1, servers + 1):
        blocked = offered * blocked / (k + offered * blocked)
    return servers * blocked / (servers - offered * (1 - blocked))


def wait_exceeds(servers: int, offered: float, mean_hold_s: float, wait_s: float) -> float:
    """Probability that a run waits longer than ``wait_s`` for a slot (M/M/c)."""
    if servers <= 0 or offered >= servers:
        return 1.0
    if mean_hold_s <= 0:
        return 0.0
    return erlang_c(servers, offered) * math.exp(-(servers - offered) * wait_s / mean_hold_s)


def nodes_needed(arrivals_per_s: float, mean_hold_s: float, slots_per_node: int, wait_s: float) -> int | None:
    """The fewest nodes that keep waits over ``wait_s`` under WAIT_TOLERANCE; None above MAX_NODES."""
    if slots_per_node <= 0:
        return None
    offered = arrivals_per_s * mean_hold_s
    if offered <= 0:
        return 1
    n = max(1, math.ceil(offered / slots_per_node))
    while n <= MAX_NODES:
        if wait_exceeds(n * slots_per_node, offered, mean_hold_s, wait_s) <= WAIT_TOLERANCE:
            return n
        n += 1
    return None


def estimate(observed: Observed, claim_interval_s: float) -> dict[str, Any]:
    """The capacity estimation section of ``/health`` and ``elastask status``."""
    window_s = max(observed.window_s, 1e-9)
    nodes = observed.nodes
    runs = sum(n.runs for n in nodes)
    run_units = sum(n.run_units for n in nodes)
    in_flight_units = sum(n.in_flight_unit_ms for n in nodes) / 1000 / window_s  # average units in flight
    by_node = {
        n.owner_id: {
            "throughput_per_minute": _round(n.runs * 60 / window_s),
            "average_load_percent": _round(100 * n.in_flight_unit_ms / 1000 / window_s / n.capacity_units)
            if n.capacity_units
            else None,
        }
        for n in nodes
    }
    throughput_per_min = runs * 60 / window_s
    result: dict[str, Any] = {
        "estimate": True,
        "window_seconds": round(observed.window_s),
        "observed": {
            "nodes": len(nodes),
            "throughput_per_minute": _round(throughput_per_min),
            "by_node": by_node,
            "recurring_required_per_minute": _round(observed.recurring_per_minute),
            "overdue": observed.overdue,
        },
    }
    notes: list[str] = []
    if runs == 0 or run_units == 0 or not nodes:
        result["observed"]["mean_hold_seconds"] = None
        result["proposed"] = {"nodes_needed": None, "minutes_to_drain_overdue": None}
        notes.append(f"no run started in the last {observed.window_s:.0f}s: nothing to estimate from yet")
        result["notes"] = notes
        return result
    units_per_s = run_units / window_s
    mean_hold_s = in_flight_units / units_per_s  # Little's law, in cost units
    mean_units = run_units / runs
    capacity_units = sum(n.capacity_units for n in nodes) / len(nodes)
    slots_per_node = max(1, math.floor(capacity_units / mean_units))
    max_per_min = len(nodes) * slots_per_node * 60 / mean_hold_s if mean_hold_s > 0 else None
    demand_per_min = max(throughput_per_min, observed.recurring_per_minute or 0.0)
    load_percent = 100 * in_flight_units / (capacity_units * len(nodes))
    if load_percent >= 90 or (observed.overdue or 0) > 0:
        notes.append(
            f"the fleet was {load_percent:.0f}% busy with {observed.overdue or 0} task(s) overdue: what ran is a "
            "lower bound on demand, so the nodes needed may be more"
        )
    if observed.recurring_per_minute and observed.recurring_per_minute > throughput_per_min:
        notes.append("the recurring schedules ask for more runs than ran: demand taken from the schedules")
    needed = nodes_needed(demand_per_min / 60, mean_hold_s, slots_per_node, claim_interval_s)
    if needed is None:
        notes.append(f"more than {MAX_NODES} nodes of this size would be needed")
    result["observed"].update(
        {
            "mean_hold_seconds": _round(mean_hold_s, 3),
            "mean_cost_units": _round(mean_units),
            "load_percent": _round(load_percent),
            "max_throughput_per_minute": _round(max_per_min),
        }
    )
    result["proposed"] = {
        "demand_per_minute": _round(demand_per_min),
        "nodes_needed": needed,
        "minutes_to_drain_overdue": _drain_minutes(observed.overdue, max_per_min, demand_per_min, notes),
    }
    result["notes"] = notes
    return result


def _drain_minutes(
    overdue: int | None, max_per_min: float | None, demand_per_min: float, notes: list[str]
) -> float | None:
    if overdue is None:
        return None
    if overdue == 0:
        return 0.0
    spare = (max_per_min or 0.0) - demand_per_min
    if spare <= 0:
        notes.append("the overdue backlog does not shrink at this load: add nodes (see nodes_needed)")
        return None
    return _round(overdue / spare, 2)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def node_usages(capacity_units: Mapping[str, int], totals: Mapping[str, Mapping[str, float]]) -> tuple[NodeUsage, ...]:
    """NodeUsage per configured node from per-owner totals (``in_flight_unit_ms``, ``runs``, ``run_units``)."""
    return tuple(
        NodeUsage(
            owner,
            capacity,
            float(totals.get(owner, {}).get("in_flight_unit_ms", 0.0)),
            int(totals.get(owner, {}).get("runs", 0)),
            int(totals.get(owner, {}).get("run_units", 0)),
        )
        for owner, capacity in capacity_units.items()
    )


def describe(section: Mapping[str, Any]) -> list[str]:
    """The estimation as lines for a person (no ``None``: a missing figure is said in words)."""
    if "error" in section:
        return [f"capacity estimation unavailable: {section['error']}"]
    observed, proposed = section.get("observed", {}), section.get("proposed", {})
    window = f"last {section.get('window_seconds', 0)}s"
    lines = [
        f"capacity estimation ({window}, an estimate): {observed.get('throughput_per_minute', 0)} runs/min started"
        + (
            f", mean slot hold (push to outcome seen) {observed['mean_hold_seconds']}s, "
            f"fleet load {observed.get('load_percent')}%"
            if observed.get("mean_hold_seconds") is not None
            else ""
        )
    ]
    needed, drain = proposed.get("nodes_needed"), proposed.get("minutes_to_drain_overdue")
    if observed.get("mean_hold_seconds") is not None:
        lines.append(
            f"  nodes needed: {needed if needed is not None else f'more than {MAX_NODES}'} "
            f"(have {observed.get('nodes')}; demand {proposed.get('demand_per_minute')} runs/min); "
            f"overdue {observed.get('overdue') if observed.get('overdue') is not None else 'unknown'}, drained in "
            + ("never at this load" if drain is None and observed.get("overdue") else f"{drain or 0} min")
        )
    lines += [f"  note: {note}" for note in section.get("notes", [])]
    return lines

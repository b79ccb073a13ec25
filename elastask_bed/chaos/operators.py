"""The operators' plan of a chaos run: restarts done the way the runbooks say, and what they cost. Pure.

Instead of faults drawn from a seed, ``elastask bench chaos --plan operators`` runs a fixed sequence
under the same steady load (docs/operations.md): a Kibana node restarted without a drain, another
restarted after ``elastask nodes drain --wait`` (and undrained once back), then a rolling restart of
every worker and beat (SIGTERM, one after another, each started again before the next). The safety
invariants are the chaos run's own; per step it reports the runs cut off, the leases that ran out
(the retry loop's log lines) and the start drift of the runs due meanwhile, next to the drift before
the first step. The drained restart and the rolling restart are checked: 0 runs lost, 0 leases expired
(a lease ended when the node's restart was noticed counts as expired: its attempt is used up too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime

from elastask_bed.chaos.model import RESTART, ROLL, Check, Fault, Run, Window

#: When each step starts (seconds into the run) and how long a restarted node stays down.
DOWNTIME_S = 5.0
STEPS: tuple[Fault, ...] = (
    Fault(RESTART, "node0", 40.0, DOWNTIME_S, "plain"),
    Fault(RESTART, "node1", 85.0, DOWNTIME_S, "drained"),
    Fault(ROLL, "fleet", 140.0, 0.0),
)
#: The fault phase of the plan: the last step plus time for its leases to run out and be seen.
FAULT_PHASE_S = 220.0
#: A run is counted in a step when its runAt falls in the step's window or this long after it.
SETTLE_S = 5.0

#: The line for each lease that ended without an outcome: run out (the retry loop), or ended when the
#: node's restart was noticed (loops/retry/node_restarts.py). Worker logs: ``[2026-12-01 14:16:04,396: INFO/...]``.
_EXPIRED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]*\] task '([^']+)' "
    r".*(?:without an outcome|lease ran out before any push|restarted \(the run was lost\))"
)


def schedule() -> list[Fault]:
    """The operators' steps, in order."""
    return list(STEPS)


def expired_leases(log_lines: Iterable[str]) -> list[tuple[float, str]]:
    """(epoch seconds, task id) of every lease the retry loop found run out, from worker log lines."""
    found = []
    for line in log_lines:
        match = _EXPIRED.match(line)
        if match:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the logs' local time
            found.append((at, match.group(2)))
    return found


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _drifts(runs: Sequence[Run], start: float, end: float) -> list[float]:
    return [r.received - r.run_at for r in runs if r.recurring and r.run_at is not None and start <= r.run_at < end]


def _drift_text(drifts: Sequence[float]) -> str:
    if not drifts:
        return "no recurring run due"
    return f"drift p50 {_percentile(drifts, 0.5) * 1000:.0f} ms p99 {_percentile(drifts, 0.99) * 1000:.0f} ms"


def step_checks(
    windows: Sequence[Window],
    runs: Sequence[Run],
    expired: Sequence[tuple[float, str]],
    *,
    t0: float,
    warm_up_s: float,
    until: float,
) -> list[Check]:
    """One line per step (and the drift before the first): runs cut off, leases expired, drift.

    A step owns the expired leases logged from its start to the next step's start (a lease runs out
    a task timeout after the run it covered was lost).
    """
    steps = sorted((w for w in windows if w.kind in (RESTART, ROLL)), key=lambda w: w.start)
    if not steps:
        return []
    before = _drifts(runs, t0 + warm_up_s, steps[0].start)
    checks = [
        Check("before-the-steps", None, f"{len(before)} recurring runs, {_drift_text(before)}", safety=False),
    ]
    for n, window in enumerate(steps):
        owns_until = steps[n + 1].start if n + 1 < len(steps) else until
        end = window.end if window.end is not None else until
        index = int(window.target.removeprefix("node")) if window.kind == RESTART else None
        cut = [r for r in runs if r.crashed and r.node == index and window.start <= _cut_at(r) <= end]
        lapsed = sorted({task for at, task in expired if window.start <= at < owns_until})
        drifts = _drifts(runs, window.start, end + SETTLE_S)
        name = f"{window.detail}-restart-{window.target}" if window.kind == RESTART else "rolling-restart"
        summary = (
            f"{len(cut)} runs lost, {len(lapsed)} leases expired, {len(drifts)} recurring runs due: "
            f"{_drift_text(drifts)} (from +{window.start - t0:.1f}s to +{end - t0:.1f}s)"
        )
        checked = window.kind == ROLL or window.detail == "drained"
        checks.append(
            Check(
                name,
                (not cut and not lapsed) if checked else None,
                summary,
                data={"lost": len(cut), "expired": lapsed, "drifts_s": sorted(drifts)},
            )
        )
    return checks


def _cut_at(run: Run) -> float:
    """When a crashed run was cut off (its end, or its start when the record has no end)."""
    return run.end if run.end is not None else run.started

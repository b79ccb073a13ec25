"""What the simulator measures per node: runs, concurrency, overlapping runs, start drift. Pure."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from elastask.core.intervals import format_date
from elastask.core.percentiles import percentile

#: Run spans kept per node (about 16 bytes each in memory, for the charts of a benchmark run).
MAX_SPANS = 50_000


@dataclass
class NodeStats:
    """Counters of one simulated node."""

    pushes: int = 0
    runs_started: int = 0
    runs_finished: int = 0
    runs_failed: int = 0
    rejected_over_capacity: int = 0
    answered_5xx: int = 0
    current: int = 0
    max_concurrency: int = 0
    overlapping_runs: int = 0
    outcome_write_errors: int = 0
    outcomes_written: int = 0  # outcome writes the engine acknowledged (update or delete)
    self_claimed: int = 0  # runs the node claimed itself (pull mode, or claiming left on in push mode)
    claim_conflicts: int = 0  # pull mode: 409s of this node's claims
    claim_stale: int = 0
    claim_missing: int = 0
    drift_ms: list[float] = field(default_factory=list)
    claim_cycles_ms: list[float] = field(default_factory=list)  # pull mode
    busy_claim_cycles_ms: list[float] = field(default_factory=list)  # pull mode: cycles that claimed a task
    #: Refill latency: a slot freed (the run's outcome written, or the run failed) -> the next run started.
    refill_ms: list[float] = field(default_factory=list)
    #: A run ended -> its outcome write acknowledged (Kibana's buffered task store): part of every
    #: slot's turnover that no dispatcher can shorten.
    outcome_ms: list[float] = field(default_factory=list)
    #: Runs at once per task type (or concurrency group), now and at most; cost units at once, now and at most.
    current_by_type: dict[str, int] = field(default_factory=dict)
    max_by_type: dict[str, int] = field(default_factory=dict)
    current_units: int = 0
    max_units: int = 0
    #: The run that started latest after its runAt: how late (ms) and which task.
    latest_start_ms: float = 0.0
    latest_start_task: str = ""
    #: Wall-clock seconds (time.time()) of the first run's start and the last run's end.
    first_start_s: float | None = None
    last_end_s: float | None = None
    #: (start, end) wall-clock seconds of the last MAX_SPANS runs: throughput and in flight over time.
    spans: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_SPANS))
    #: (when, drift ms) of the latest runs: the drift of the last minute (the demo's view).
    timed_drifts: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_SPANS))
    _freed_at: deque[float] = field(default_factory=deque)

    def slot_freed(self, now_s: float) -> None:
        """A run's slot came free (monotonic seconds): the next run to start on this node refills it."""
        self._freed_at.append(now_s)

    def slot_filled(self, now_s: float) -> None:
        """A run started (monotonic seconds): it refills the oldest freed slot, if any."""
        if self._freed_at:
            self.refill_ms.append((now_s - self._freed_at.popleft()) * 1000)

    def run_started(
        self,
        drift_ms: float | None,
        overlapping: bool,
        task: str = "",
        kind: tuple[str, int] = ("", 2),
        at_s: float | None = None,
    ) -> None:
        """A run began; ``overlapping`` when the same task was already running anywhere.

        ``task``: "id (type, attempt N)", kept for the run that started latest after its runAt.
        ``kind``: (its type or concurrency group, its cost units), counted at once per node.
        ``at_s``: when (wall-clock seconds), for the first run's start.
        """
        if at_s is not None and (self.first_start_s is None or at_s < self.first_start_s):
            self.first_start_s = at_s
        self.runs_started += 1
        self.current += 1
        self.max_concurrency = max(self.max_concurrency, self.current)
        group, units = kind
        self.current_by_type[group] = self.current_by_type.get(group, 0) + 1
        self.max_by_type[group] = max(self.max_by_type.get(group, 0), self.current_by_type[group])
        self.current_units += units
        self.max_units = max(self.max_units, self.current_units)
        if overlapping:
            self.overlapping_runs += 1
        if drift_ms is not None:
            self.drift_ms.append(drift_ms)
            if at_s is not None:
                self.timed_drifts.append((at_s, drift_ms))
            if drift_ms >= self.latest_start_ms:
                self.latest_start_ms, self.latest_start_task = drift_ms, task

    def run_ended(
        self,
        *,
        failed: bool,
        kind: tuple[str, int] = ("", 2),
        at_s: float | None = None,
        started_s: float | None = None,
    ) -> None:
        """A run ended (successfully or not); ``at_s``: when (wall-clock seconds), for the last run's end;
        ``started_s``: when it started, kept with ``at_s`` as the run's span."""
        if at_s is not None and (self.last_end_s is None or at_s > self.last_end_s):
            self.last_end_s = at_s
        if at_s is not None and started_s is not None:
            self.spans.append((round(started_s, 3), round(at_s, 3)))
        self.current -= 1
        group, units = kind
        self.current_by_type[group] = self.current_by_type.get(group, 1) - 1
        self.current_units -= units
        if failed:
            self.runs_failed += 1
        else:
            self.runs_finished += 1

    @property
    def outcomes_pending(self) -> int:
        """Finished runs whose outcome write has not been answered yet."""
        return max(0, self.runs_finished - self.outcomes_written - self.outcome_write_errors)

    def drifts_since(self, since_s: float) -> list[float]:
        """The start drifts (ms) of the runs that started at or after ``since_s`` (wall-clock seconds)."""
        return [drift for at, drift in self.timed_drifts if at >= since_s]

    def snapshot(self, *, with_drifts: bool = False, recent_s: float | None = None) -> dict[str, Any]:
        """The counters as JSON, with drift percentiles; ``recent_s``: also the drifts of the runs started
        in the last ``recent_s`` seconds (``recent_drifts``)."""
        skip: tuple[str, ...] = ("drift_ms", "claim_cycles_ms", "busy_claim_cycles_ms", "refill_ms", "outcome_ms")
        skip += ("_freed_at", "spans", "timed_drifts")
        data: dict[str, Any] = {key: value for key, value in self.__dict__.items() if key not in skip}
        data["outcomes_pending"] = self.outcomes_pending
        cycles = self.claim_cycles_ms
        data["claim_cycle_ms"] = {
            "count": len(cycles),
            "p50": percentile(cycles, 0.50),
            "p99": percentile(cycles, 0.99),
        }
        drifts = self.drift_ms
        data["drift_ms"] = {
            "count": len(drifts),
            "p50": percentile(drifts, 0.50),
            "p95": percentile(drifts, 0.95),
            "p99": percentile(drifts, 0.99),
            "max": max(drifts) if drifts else None,
        }
        refills = self.refill_ms
        data["refill_ms"] = {"count": len(refills), "p50": percentile(refills, 0.50), "p99": percentile(refills, 0.99)}
        writes = self.outcome_ms
        data["outcome_ms"] = {"count": len(writes), "p50": percentile(writes, 0.50), "p99": percentile(writes, 0.99)}
        if recent_s is not None:
            data["recent_drifts"] = self.drifts_since(time.time() - recent_s)
        if with_drifts:
            data["refills"] = list(refills)
            data["outcome_writes"] = list(writes)
            data["drifts"] = list(drifts)
            data["spans"] = [list(span) for span in self.spans]
            data["claim_cycles"] = list(cycles)
            data["busy_claim_cycles"] = list(self.busy_claim_cycles_ms)
        return data


def run_label(body: Mapping[str, Any], previous_end: datetime | None) -> str:
    """How a run names itself in ``latest_start`` (the run that explains the max drift).

    The claim's time (``startedAt``) tells a late claim from a job late in its queue, and the end of
    the task's previous run tells a recurring task that could not start before it (no overlap).
    """
    return (
        f"{body.get('id')} ({body.get('taskType')}, attempts {body.get('attempts')}, runAt {body.get('runAt')}, "
        f"claimed {body.get('startedAt')}, previous run ended {format_date(previous_end) if previous_end else '-'})"
    )

"""From what a chaos run collected to its checks: every invariant and liveness figure, in report order. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from elastask_bed.chaos import invariants, liveness, workload
from elastask_bed.chaos.liveness import Thresholds
from elastask_bed.chaos.model import Check, OneShot, ProcessExit, Run, Window


@dataclass
class Collected:
    """The records of one run, read at its end (times in epoch seconds)."""

    t0: float  # the fault phase's clock starts (the recurring tasks fall due from t0 + 2 s)
    quiet_start: float  # every fault healed
    collected_at: float
    nodes: int
    capacity: int
    runs: list[Run]
    windows: list[Window]
    one_shots: list[OneShot]
    recurring_ids: list[str]
    states: dict[str, str | None]  # one-shot id -> task.status at the end, None when the document is gone
    stuck: list[str]
    exits: list[ProcessExit]
    processes_started: int
    simulator_nodes: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    simulator_overlapping: int = 0
    #: Liveness is measured from t0 + warm_up_s: before it the fleet learns the nodes and the first runs
    #: of every recurring task fall due together (a burst over the fleet's capacity, not a fault).
    warm_up_s: float = 0.0
    #: Recurring task id -> its interval (s); the tasks whose pushes were in flight when their worker died
    #: (the workers' logs name them): for the lease-waits figure.
    intervals: Mapping[str, float] = field(default_factory=dict)
    in_flight: frozenset[str] = frozenset()


def evaluate(c: Collected, limits: Thresholds, check_liveness: bool) -> list[Check]:
    """The safety invariants, then the liveness figures (checked only with ``check_liveness``)."""
    until = c.collected_at
    one_shot_ids = {t.id for t in c.one_shots}
    started = {r.task for r in c.runs}
    never_started = [
        t.run_at for t in c.one_shots if t.id not in started and c.states.get(t.id) not in (None, "failed")
    ]
    excluded = liveness.stall_exclusions(c.windows, c.nodes, until)
    measured_from = c.t0 + c.warm_up_s
    stall = liveness.longest_stall(c.runs, never_started, measured_from, until, excluded)
    measured = [r for r in c.runs if r.run_at is not None and r.run_at >= measured_from]
    return [
        invariants.check_cap(c.runs, c.capacity, c.simulator_nodes, until),
        invariants.check_overlaps(c.runs, c.simulator_overlapping, until, c.t0),
        invariants.check_one_shots(c.one_shots, c.runs, c.states),
        invariants.check_double_completion(one_shot_ids, c.runs, c.t0),
        invariants.check_recurring_ran(c.recurring_ids, c.runs, c.quiet_start),
        invariants.check_stuck(c.stuck),
        invariants.check_exits(c.exits, c.processes_started, c.t0),
        liveness.check_stall(stall, limits, check_liveness, c.t0),
        liveness.check_heal(liveness.heal_to_push(c.windows, c.runs, until), limits, check_liveness, c.t0),
        liveness.check_drift(liveness.drifts_outside(measured, c.windows, until), limits, check_liveness),
        liveness.check_early_starts(c.runs, c.windows, until, c.t0),
        liveness.check_lease_waits(
            liveness.lease_waits(
                c.runs, c.one_shots, c.intervals, workload.PATIENT_TYPE, c.windows, c.in_flight, until
            ),
            workload.PATIENT_TYPE,
            check_liveness,
            c.t0,
        ),
    ]


def counts(c: Collected) -> dict[str, int]:
    """The run's sizes, for the report's first line."""
    return {
        "nodes": c.nodes,
        "recurring tasks": len(c.recurring_ids),
        "one-shot tasks": len(c.one_shots),
        "runs": len(c.runs),
        "runs completed": sum(1 for r in c.runs if r.completed),
        "runs failed or cut": sum(1 for r in c.runs if r.end is not None and not r.completed),
        "processes started": c.processes_started,
    }

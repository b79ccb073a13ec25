"""The chaos run's fault schedule and workload: drawn from a seed, within the limits. Pure."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from elastask_bed.chaos.model import ENGINE, KILL, NODE, PAUSE, PROCESS_KINDS, REDIS, SKEW, Fault
from elastask_bed.chaos.runner import ChaosOptions
from elastask_bed.chaos.schedule import GAP_S, Plan, make_schedule
from elastask_bed.chaos.workload import (
    PATIENT_TYPE,
    dispatcher_config,
    draw_type,
    interval_of,
    one_shot_tasks,
    recurring_tasks,
)
from tests.unit.helpers import NOW

PLAN = Plan(fault_phase_s=1800)


def active_at(faults: list[Fault], moment: float) -> list[Fault]:
    return [f for f in faults if f.start_s <= moment < f.end_s]


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    assert make_schedule(7, PLAN) == make_schedule(7, PLAN)
    assert make_schedule(7, PLAN) != make_schedule(8, PLAN)


@pytest.mark.parametrize("seed", range(20))
def test_faults_stay_in_the_fault_phase_and_one_target_has_one_fault_at_a_time(seed: int) -> None:
    faults = make_schedule(seed, PLAN)
    assert all(PLAN.warm_up_s <= f.start_s and f.end_s <= PLAN.fault_phase_s + 1e-6 for f in faults)
    assert faults == sorted(faults, key=lambda f: f.start_s)
    for target, group in itertools.groupby(sorted(faults, key=lambda f: (f.target, f.start_s)), key=lambda f: f.target):
        mine = list(group)
        for earlier, later in itertools.pairwise(mine):
            assert later.start_s >= earlier.end_s + GAP_S - 1e-6, f"{target}: {earlier} and {later} overlap"


@pytest.mark.parametrize("seed", range(20))
def test_one_worker_one_beat_and_half_the_nodes_stay_up_at_any_moment(seed: int) -> None:
    faults = make_schedule(seed, PLAN)
    for moment in (f.start_s + 0.001 for f in faults):
        active = active_at(faults, moment)
        processes = [f.target for f in active if f.kind in PROCESS_KINDS]
        assert sum(t.startswith("worker") for t in processes) <= 1
        assert sum(t.startswith("beat") for t in processes) <= 1
        assert sum(f.kind == NODE for f in active) <= PLAN.max_node_faults


def test_a_long_run_draws_every_kind_and_faults_overlap() -> None:
    faults = make_schedule(3, PLAN)
    kinds = Counter(f.kind for f in faults)
    assert set(kinds) == {KILL, PAUSE, REDIS, ENGINE, NODE, SKEW}
    assert {f.detail for f in faults if f.kind == NODE} == {"refuse", "5xx", "hang", "error", "crash"}
    assert {f.detail.split(":")[0] for f in faults if f.kind == ENGINE} == {"latency", "status", "down"}
    assert any(len(active_at(faults, f.start_s + 0.001)) >= 3 for f in faults), "faults never overlap"


def test_a_pause_outlasts_the_claim_lock_and_a_skew_is_two_to_five_seconds() -> None:
    faults = make_schedule(5, PLAN)
    assert all(f.duration_s > PLAN.lock_ttl_s for f in faults if f.kind == PAUSE)
    skews = [int(f.detail.removesuffix("s")) for f in faults if f.kind == SKEW]
    assert skews and all(2 <= abs(s) <= 5 for s in skews)


def test_without_skew_no_clock_fault_is_drawn() -> None:
    faults = make_schedule(3, Plan(fault_phase_s=1800, skew=False))
    assert not [f for f in faults if f.kind == SKEW]


def test_the_workload_spreads_recurring_tasks_over_intervals_and_types() -> None:
    docs = recurring_tasks(random.Random(1), NOW, 150)
    assert len({d.id for d in docs}) == 150
    intervals = Counter(d.schedule.interval for d in docs if d.schedule)
    assert set(intervals) == {"5s", "10s", "30s"} and sum(intervals.values()) == 150
    assert {d.task_type for d in docs} == set(dispatcher_config()["task_types"])
    assert all(2 <= (d.run_at - NOW).total_seconds() <= 32 for d in docs)
    assert interval_of(0, 150)[0] == "5s" and interval_of(149, 150)[0] == "30s"


def test_one_shot_tasks_are_numbered_on_and_fall_due_within_three_seconds() -> None:
    docs = one_shot_tasks(random.Random(2), NOW, 10, 5)
    assert [d.id for d in docs] == [f"task:chaos-once-{n}" for n in range(10, 15)]
    assert all(d.schedule is None and 0 <= (d.run_at - NOW).total_seconds() <= 3 for d in docs)


def test_the_operators_plan_has_no_task_of_kibanas_5m_timeout() -> None:
    # Its steps own the leases that run out after them: a 5-minute one would land in a later step.
    rng = random.Random(3)
    drawn = {draw_type(rng, patient=False) for _ in range(500)}
    assert PATIENT_TYPE not in drawn and len(drawn) == 3
    assert PATIENT_TYPE in {draw_type(rng) for _ in range(500)}
    assert ChaosOptions(seed=1).patient and not ChaosOptions(seed=1, plan="operators").patient

"""The chaos run's safety invariants over hand-made runs: each violation is reported with its evidence. Pure."""

from __future__ import annotations

from typing import Any

from elastask_bed.chaos.invariants import (
    check_cap,
    check_double_completion,
    check_exits,
    check_one_shots,
    check_overlaps,
    check_recurring_ran,
    check_stuck,
    max_concurrency,
    overlapping_runs,
)
from elastask_bed.chaos.model import OneShot, ProcessExit, Run

T0 = 1_000_000.0


def run(task: str, node: int, start: float, end: float | None, **fields: Any) -> Run:
    values: dict[str, Any] = {
        "task": task,
        "node": node,
        "started": T0 + start,
        "received": T0 + start,
        "end": None if end is None else T0 + end,
        "run_at": T0 + start,
        "ok": True,
        "outcome_ok": True,
        "recurring": False,
    }
    values.update(fields)
    return Run(**values)


def test_two_runs_of_one_task_at_once_are_reported_even_on_different_nodes() -> None:
    runs = [run("task:a", 0, 0, 5), run("task:a", 1, 4, 6), run("task:b", 0, 0, 1), run("task:b", 0, 1, 2)]
    found = overlapping_runs(runs, until=T0 + 10)
    assert [(o.task, o.first.node, o.second.node) for o in found] == [("task:a", 0, 1)]
    check = check_overlaps(runs, 0, T0 + 10, T0)
    assert check.ok is False and "task:a: node0 +0.0s..+5.0s and node1 from +4.0s" in check.data["overlaps"]


def test_a_run_inside_a_longer_earlier_run_overlaps_and_one_still_going_lasts_until_the_end() -> None:
    runs = [run("task:a", 0, 0, 10), run("task:a", 1, 2, 3), run("task:a", 2, 5, 6)]
    assert len(overlapping_runs(runs, until=T0 + 20)) == 2
    still = [run("task:c", 0, 0, None), run("task:c", 1, 15, 16)]
    assert len(overlapping_runs(still, until=T0 + 20)) == 1


def test_the_simulators_own_overlap_count_fails_the_check_too() -> None:
    assert check_overlaps([], 1, T0).ok is False
    assert check_overlaps([run("task:a", 0, 0, 1), run("task:a", 0, 1, 2)], 0, T0 + 5).ok is True


def test_more_runs_at_once_on_a_node_than_its_capacity_break_the_cap() -> None:
    runs = [run(f"task:{n}", 0, n * 0.1, 5) for n in range(3)] + [run("task:x", 1, 0, 1)]
    assert max_concurrency(runs, T0 + 5)[0] == (3, T0 + 0.2)
    nodes = {0: {"max_concurrency": 3, "rejected_over_capacity": 0}, 1: {"max_concurrency": 1}}
    assert check_cap(runs, 3, nodes, T0 + 5).ok is True
    broken = check_cap(runs, 2, nodes, T0 + 5)
    assert broken.ok is False and broken.data["max_concurrency"] == {"node0": 3, "node1": 1}


def test_a_run_ending_as_another_starts_does_not_count_twice_and_a_rejected_push_breaks_the_cap() -> None:
    runs = [run("task:a", 0, 0, 1), run("task:b", 0, 1, 2)]
    assert max_concurrency(runs, T0 + 2)[0][0] == 1
    assert check_cap(runs, 1, {0: {"max_concurrency": 1, "rejected_over_capacity": 1}}, T0 + 2).ok is False


def test_every_one_shot_task_ran_or_is_failed_or_it_is_reported_lost() -> None:
    tasks = [OneShot(f"task:{n}", T0, T0) for n in range(4)]
    runs = [run("task:0", 0, 0, 1), run("task:3", 0, 0, 1, ok=False)]
    states: dict[str, str | None] = {"task:0": None, "task:1": None, "task:2": "failed", "task:3": "idle"}
    check = check_one_shots(tasks, runs, states)
    assert check.ok is False
    assert (check.data["ran"], check.data["gone"], check.data["failed"]) == (1, 1, 1)
    assert check.data["lost"] == ["task:3 (idle)"]
    states["task:3"] = "failed"
    assert check_one_shots(tasks, runs, states).ok is True


def test_a_one_shot_task_completed_twice_is_a_violation_unless_the_first_outcome_was_lost() -> None:
    ids = {"task:a", "task:b", "task:c"}
    runs = [
        run("task:a", 0, 0, 1, outcome_ok=True),
        run("task:a", 1, 20, 21),
        run("task:b", 0, 0, 1, outcome_ok=False),  # the engine refused the outcome: the lease brings it back
        run("task:b", 1, 20, 21),
        run("task:c", 0, 0, 1, ok=False),  # a failed run, then a good one
        run("task:c", 1, 20, 21),
        run("task:d", 0, 0, 1, crashed=True, outcome_ok=None),  # cut off by a crash: not a completion
        run("task:d", 1, 20, 21),
    ]
    check = check_double_completion(ids | {"task:d"}, runs, T0)
    assert check.ok is False
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in check.data["twice"]] == ["task:a"]
    assert check.data["after_lost_outcome"] == 1


def test_recurring_tasks_must_start_again_after_the_quiet_phase_began() -> None:
    runs = [run("task:r1", 0, 5, 6, recurring=True), run("task:r2", 0, 50, 51, recurring=True)]
    check = check_recurring_ran(["task:r1", "task:r2"], runs, since=T0 + 30)
    assert check.ok is False and check.data["missing"] == ["task:r1"]


def test_stuck_leases_and_processes_that_exited_by_themselves_are_violations() -> None:
    assert check_stuck([]).ok is True
    assert check_stuck(["task:x ({'status': 'running'})"]).ok is False
    assert check_exits([], 5).ok is True
    exited = check_exits([ProcessExit("beat1", 42, T0 + 3, 1, "Traceback ...")], 5, T0)
    assert exited.ok is False and exited.data["exits"][0]["role"] == "beat1"

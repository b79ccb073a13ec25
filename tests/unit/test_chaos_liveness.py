"""The chaos run's liveness figures and report over hand-made runs and fault windows. Pure."""

from __future__ import annotations

import json
from typing import Any

from elastask_bed.chaos.evaluate import Collected, evaluate
from elastask_bed.chaos.liveness import (
    Thresholds,
    all_nodes_out,
    check_drift,
    check_early_starts,
    check_heal,
    check_lease_waits,
    check_stall,
    drifts_outside,
    heal_to_push,
    lease_waits,
    longest_stall,
    merge,
    stall_exclusions,
    subtract,
)
from elastask_bed.chaos.logs import in_flight_ids
from elastask_bed.chaos.model import Check, OneShot, Run, Window
from elastask_bed.chaos.report import LIVENESS_VIOLATION, SAFETY_VIOLATION, ChaosResult

T0 = 1_000_000.0


def run(task: str, node: int, start: float, *, run_at: float | None = None, **fields: Any) -> Run:
    values: dict[str, Any] = {
        "task": task,
        "node": node,
        "started": T0 + start,
        "received": T0 + start,
        "end": T0 + start + 0.1,
        "run_at": T0 + (start if run_at is None else run_at),
        "ok": True,
        "outcome_ok": True,
        "recurring": True,
    }
    values.update(fields)
    return Run(**values)


def window(kind: str, target: str, start: float, end: float | None, detail: str = "") -> Window:
    return Window(kind, target, detail, T0 + start, None if end is None else T0 + end)


def test_intervals_merge_and_subtract() -> None:
    assert merge([(5, 6), (0, 2), (1, 3)]) == [(0, 3), (5, 6)]
    assert subtract(0, 10, [(2, 3), (5, 12)]) == [(0, 2), (3, 5)]
    assert subtract(0, 10, []) == [(0, 10)]


def test_a_stall_is_time_with_a_task_due_and_no_run_starting() -> None:
    # Runs every second, then a task due at 10 s that starts only at 18 s: an 8 s stall.
    runs = [run(f"t{n}", 0, n) for n in range(11)] + [run("late", 1, 18, run_at=10)]
    stall = longest_stall(runs, [], T0, T0 + 20, [])
    assert round(stall.seconds, 6) == 8 and stall.start == T0 + 10 and stall.end == T0 + 18


def test_an_idle_gap_with_nothing_due_is_no_stall_and_engine_faults_are_excluded() -> None:
    runs = [run("a", 0, 0), run("b", 0, 30, run_at=29.5)]
    assert round(longest_stall(runs, [], T0, T0 + 31, []).seconds, 6) == 0.5
    late = [run("a", 0, 0), run("b", 0, 30, run_at=10)]
    assert round(longest_stall(late, [], T0, T0 + 31, [(T0 + 12, T0 + 28)]).seconds, 6) == 2


def test_a_task_that_never_started_is_due_until_the_end() -> None:
    stall = longest_stall([run("a", 0, 0)], [T0 + 5], T0, T0 + 20, [])
    assert round(stall.seconds, 6) == 15


def test_stalls_are_not_blamed_while_every_node_is_out_or_the_engine_or_redis_is() -> None:
    windows = [
        window("node", "node0", 0, 10),
        window("node", "node1", 5, 15),
        window("engine", "engine", 20, 25, "down"),
        window("redis", "redis", 40, None),
    ]
    assert all_nodes_out(windows, 2, T0 + 60) == [(T0 + 5, T0 + 10)]
    assert stall_exclusions(windows, 2, T0 + 60) == [(T0 + 5, T0 + 10), (T0 + 20, T0 + 25), (T0 + 40, T0 + 60)]


def test_heal_to_push_is_the_time_to_the_nodes_next_run() -> None:
    windows = [
        window("node", "node0", 0, 10, "refuse"),
        window("node", "node1", 0, 10, "5xx"),
        window("node", "node1", 11, 20, "hang"),
        window("node", "node2", 0, 10, "crash"),
    ]
    runs = [run("a", 0, 13), run("b", 1, 25), run("c", 3, 12)]
    heals = {(h.node, h.detail): h for h in heal_to_push(windows, runs, T0 + 30)}
    assert heals[(0, "refuse")].seconds == 3
    assert heals[(1, "5xx")].seconds is None and heals[(1, "5xx")].refaulted
    assert heals[(1, "hang")].seconds == 5
    assert heals[(2, "crash")].seconds is None and not heals[(2, "crash")].refaulted
    limits = Thresholds(max_heal_s=6)
    check = check_heal(list(heals.values()), limits, True, T0)
    assert check.ok is False  # node2 never got a run after its crash
    assert check_heal([heals[(0, "refuse")]], limits, True, T0).ok is True
    assert check_heal([heals[(0, "refuse")]], Thresholds(max_heal_s=2), True, T0).ok is False
    assert check_heal(list(heals.values()), limits, False, T0).ok is None


def test_a_heal_followed_by_an_engine_or_redis_fault_is_listed_but_not_checked() -> None:
    windows = [window("node", "node0", 0, 10, "refuse"), window("redis", "redis", 11, 14)]
    (heal,) = heal_to_push(windows, [run("a", 0, 20)], T0 + 30)
    assert heal.seconds == 10 and heal.blocked
    check = check_heal([heal], Thresholds(max_heal_s=6), True, T0)
    assert check.ok is True and "node0 refuse 10.0s*" in check.summary


def test_a_node_that_stayed_in_rotation_hung_or_failing_runs_is_listed_but_not_checked() -> None:
    windows = [window("node", "node0", 0, 10, "error"), window("node", "node1", 0, 10, "hang")]
    heals = heal_to_push(windows, [run("a", 0, 22), run("b", 1, 23)], T0 + 30)
    assert [h.seconds for h in heals] == [12, 13]
    assert check_heal(heals, Thresholds(max_heal_s=6), True, T0).ok is True


def test_drift_counts_recurring_runs_away_from_fault_windows_only() -> None:
    runs = [
        run("r1", 0, 5.2, run_at=5),
        run("r2", 0, 30.0, run_at=22),  # late because of the fault at 20-25 s: left out
        run("r3", 0, 40.5, run_at=40),
        run("o1", 0, 50, run_at=45, recurring=False),
    ]
    drifts = drifts_outside(runs, [window("kill", "worker1", 20, 25)], T0 + 60)
    assert [round(d, 3) for d in drifts] == [0.2, 0.5]
    check = check_drift(drifts, Thresholds(max_drift_p99_s=0.4), True)
    assert check.ok is False and check.data["p99_s"] == 0.5
    assert check_drift(drifts, Thresholds(), False).ok is None


def test_stall_check_and_early_starts() -> None:
    stall = longest_stall([run("a", 0, 0), run("b", 0, 9, run_at=1)], [], T0, T0 + 10, [])
    assert check_stall(stall, Thresholds(max_stall_s=5), True, T0).ok is False
    assert check_stall(stall, Thresholds(max_stall_s=9), True, T0).ok is True
    early = [run("e1", 0, 10, run_at=12), run("e2", 0, 31, run_at=32)]
    check = check_early_starts(early, [window("skew", "skew", 30, 40, "+3s")], T0 + 50, T0)
    assert check.data["early"] == 2 and check.data["outside_skew"] == ["e1 on node0 at +10.0s"]


def test_the_result_fails_on_a_safety_violation_and_on_liveness_only_when_checked() -> None:
    def result(*checks: Check) -> ChaosResult:
        return ChaosResult(7, 150, 60, {}, T0, [window("node", "node0", 1, 2, "hang")], list(checks))

    ok = Check("cap", True, "fine")
    assert result(ok, Check("stall", None, "reported", safety=False)).exit_status == 0
    assert result(ok, Check("stall", False, "long", safety=False)).exit_status == LIVENESS_VIOLATION
    broken = result(Check("no-overlap", False, "2 overlapping"), Check("stall", False, "long", safety=False))
    assert broken.exit_status == SAFETY_VIOLATION
    lines = broken.lines()
    assert lines[0].startswith("chaos: seed 7") and "invariant no-overlap: VIOLATED: 2 overlapping" in lines
    assert lines[-1].startswith("result: FAIL: no-overlap (exit 1)")
    data = json.loads(broken.to_json())
    assert data["violations"] == ["no-overlap"] and data["faults"][0] == {
        "kind": "node",
        "target": "node0",
        "detail": "hang",
        "from_s": 1.0,
        "to_s": 2.0,
    }


def test_every_check_comes_in_report_order_and_the_warm_up_is_not_measured() -> None:
    runs = [run("task:r", 0, 5, run_at=1), run("task:r", 1, 20.1, run_at=20), run("task:r", 2, 40, run_at=40)]
    collected = Collected(
        t0=T0,
        quiet_start=T0 + 30,
        collected_at=T0 + 50,
        nodes=4,
        capacity=10,
        runs=runs,
        windows=[],
        one_shots=[],
        recurring_ids=["task:r"],
        states={},
        stuck=[],
        exits=[],
        processes_started=4,
        warm_up_s=10,
    )
    checks = evaluate(collected, Thresholds(), True)
    assert [c.name for c in checks] == [
        "cap",
        "no-overlap",
        "one-shots-accounted",
        "no-double-completion",
        "recurring-ran-after-quiet",
        "no-stuck-lease",
        "no-unexpected-exit",
        "stall",
        "heal-to-push",
        "drift",
        "early-starts",
        "lease-waits",
    ]
    by_name = {c.name: c for c in checks}
    assert all(c.ok for c in checks if c.safety)
    assert by_name["drift"].data["count"] == 2  # the run due in the warm-up (4 s late) is left out
    assert by_name["stall"].ok is True


# --- lease waits: a task of Kibana's 5m timeout that started minutes late, and why ---

PATIENT = "chaos:patient"


def patient(task: str, node: int, start: float, **fields: Any) -> Run:
    return run(task, node, start, task_type=PATIENT, **fields)


def test_a_recurring_task_that_waited_out_a_lease_after_a_clean_run_is_unexplained() -> None:
    runs = [patient("task:r", 0, 10.0), patient("task:r", 1, 20.0), patient("task:r", 2, 330.0)]
    waits = lease_waits(runs, [], {"task:r": 10.0}, PATIENT, [], frozenset(), until=T0 + 400)
    assert [(w.task, round(w.due - T0), round(w.seconds)) for w in waits] == [("task:r", 30, 300)]
    assert waits[0].why == ""  # its last run wrote its outcome: nothing made the lease stand
    check = check_lease_waits(waits, PATIENT, enabled=True, t0=T0)
    assert check.ok is False and not check.safety and "UNEXPLAINED" in check.data["waits"][0]


def test_a_lease_wait_after_a_run_kibana_lost_or_a_push_in_flight_at_a_death_is_explained() -> None:
    lost = [patient("task:a", 0, 10.0, outcome_ok=None, ok=None, end=None), patient("task:a", 1, 320.0)]
    in_flight = [patient("task:b", 0, 10.0), patient("task:b", 1, 330.0)]
    waits = lease_waits([*lost, *in_flight], [], {"task:a": 5.0, "task:b": 5.0}, PATIENT, [], {"task:b"}, T0 + 340)
    assert {w.task: w.why.split(" ")[0] for w in waits} == {"task:a": "its", "task:b": "pushed,"}
    assert check_lease_waits(waits, PATIENT, enabled=True).ok is True


def test_a_lease_wait_is_explained_by_a_fault_that_makes_leases_stand_around_when_the_task_fell_due() -> None:
    runs = [patient("task:r", 0, 100.0), patient("task:r", 1, 410.0)]  # due at 110
    for fault, explained in [
        (window("redis", "redis", 108.0, 112.0), True),  # Redis emptied: claims before it wait their leases
        (window("engine", "engine", 150.0, 160.0, "down"), True),  # within a minute of falling due
        (window("node", "node1", 90.0, 115.0, "hang"), True),  # a push may have reached it, unanswered
        (window("node", "node1", 90.0, 115.0, "refuse"), False),  # refused: given back at once
        (window("kill", "worker1", 109.0, 111.0), False),  # a dead worker's unpushed claims go back in seconds
        (window("redis", "redis", 300.0, 305.0), False),  # long after it fell due
    ]:
        waits = lease_waits(runs, [], {"task:r": 10.0}, PATIENT, [fault], frozenset(), T0 + 430)
        assert len(waits) == 1 and bool(waits[0].why) == explained, fault


def test_a_one_shot_falls_due_at_its_run_at_and_other_types_or_short_waits_are_not_lease_waits() -> None:
    one_shots = [OneShot("task:o", T0 + 50.0, T0 + 49.0, PATIENT), OneShot("task:p", T0 + 50.0, T0 + 49.0, PATIENT)]
    runs = [
        patient("task:o", 0, 200.0, recurring=False),  # 150 s after its runAt
        patient("task:p", 0, 80.0, recurring=False),  # 30 s: a slow start, not a lease
        run("task:x", 0, 400.0, task_type="chaos:fast"),  # another type
    ]
    waits = lease_waits(runs, one_shots, {}, PATIENT, [], frozenset(), T0 + 500)
    assert [(w.task, round(w.seconds)) for w in waits] == [("task:o", 150)]
    assert check_lease_waits(waits, PATIENT, enabled=False).ok is None  # reported only without --check-liveness


def test_a_task_still_waiting_at_the_end_is_a_lease_wait_too() -> None:
    # A recurring task whose next run never came (its claim waits out a lease past the end), and a one-shot
    # that never ran; a one-shot whose run wrote its outcome is done, however long ago.
    runs = [patient("task:r", 0, 100.0), patient("task:done", 1, 60.0, recurring=False)]
    one_shots = [OneShot(t, T0 + 50.0, T0 + 49.0, PATIENT) for t in ("task:never", "task:done")]
    waits = lease_waits(runs, one_shots, {"task:r": 30.0}, PATIENT, [], frozenset(), T0 + 240)
    assert [(w.task, round(w.seconds), w.waiting) for w in waits] == [("task:never", 190, True), ("task:r", 110, True)]
    assert "still waiting after 110 s: UNEXPLAINED" in check_lease_waits(waits, PATIENT, True, T0).data["waits"][1]


def test_the_workers_logs_name_the_pushes_in_flight_at_a_death() -> None:
    lines = [
        "[12:00:01] WARNING worker celery@w1 died with 2 push(es) in flight, unanswered: Kibana may be running them, "
        "so they are never pushed again; each is retried when its lease ends (the last at 2026-12-06T12:05:01+00:00, "
        "the task type's timeout): 'task:chaos-once-7', 'task:chaos-recurring-12'",
        "[12:00:02] INFO claim cycle: found=3 claimed=3",
        "[12:00:03] WARNING task 'task:chaos-recurring-115': this claim was already pushed once (redelivered job); "
        "its lease decides",
    ]
    assert in_flight_ids(lines) == {"task:chaos-once-7", "task:chaos-recurring-12", "task:chaos-recurring-115"}

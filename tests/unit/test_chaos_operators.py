"""The operators' plan of the chaos run (elastask_bed/chaos/operators.py): its steps and per-step figures. Pure."""

from __future__ import annotations

import itertools
from datetime import datetime

from elastask_bed.chaos import operators
from elastask_bed.chaos.model import RESTART, ROLL, Run, Window

T0 = 1_000_000.0


def run(node: int, run_at: float, received: float, *, crashed: bool = False) -> Run:
    end = received + 0.5
    return Run("task:r", node, received, received, end, run_at, not crashed, None, recurring=True, crashed=crashed)


def test_the_plan_restarts_a_node_without_then_with_a_drain_then_rolls_the_fleet() -> None:
    steps = operators.schedule()
    assert [(s.kind, s.detail) for s in steps] == [(RESTART, "plain"), (RESTART, "drained"), (ROLL, "")]
    assert all(a.start_s < b.start_s for a, b in itertools.pairwise(steps))
    assert steps[-1].start_s < operators.FAULT_PHASE_S


def test_expired_leases_are_read_from_the_retry_loops_log_lines_with_their_time() -> None:
    lines = [
        "[2026-12-01 14:16:04,396: INFO/ForkPoolWorker-2] task 'task:a' (chaos:fast): lease expired without an "
        "outcome (attempt 1 of 3)\n",
        "[2026-12-01 14:16:05,000: WARNING/ForkPoolWorker-1] task 'task:b' (chaos:slow) failed for good: 3 runs "
        "of 3 ended without an outcome from Kibana (lease expired without an outcome)\n",
        "[2026-12-01 14:16:05,500: INFO/Thread-3] task 'task:c' (chaos:fast): Kibana node http://127.0.0.1:1 "
        "restarted (the run was lost) (attempt 1 of 3)\n",
        "[2026-12-01 14:16:06,000: INFO/MainProcess] claim cycle: claimed=3\n",
    ]
    found = operators.expired_leases(lines)
    assert [task for _, task in found] == ["task:a", "task:b", "task:c"]
    assert found[0][0] == datetime(2026, 12, 1, 14, 16, 4, 396_000).timestamp()


def test_each_step_reports_runs_cut_leases_expired_and_drift_and_the_drained_one_is_checked() -> None:
    plain = Window(RESTART, "node0", "plain", T0 + 40, T0 + 46)
    drained = Window(RESTART, "node1", "drained", T0 + 85, T0 + 95)
    roll = Window(ROLL, "fleet", "", T0 + 140, T0 + 180)
    runs = [
        run(0, T0 + 20, T0 + 20.05),  # before the steps
        run(0, T0 + 41, T0 + 41.02, crashed=True),  # cut off by the plain restart
        run(2, T0 + 90, T0 + 90.3),
        run(1, T0 + 150, T0 + 151.0),
    ]
    expired = [(T0 + 55, "task:x"), (T0 + 56, "task:y"), (T0 + 150, "task:z")]

    checks = {
        c.name: c
        for c in operators.step_checks([roll, plain, drained], runs, expired, t0=T0, warm_up_s=10, until=T0 + 260)
    }

    assert list(checks) == ["before-the-steps", "plain-restart-node0", "drained-restart-node1", "rolling-restart"]
    assert checks["before-the-steps"].summary.startswith("1 recurring runs, drift p50 50 ms")
    plain_check = checks["plain-restart-node0"]
    assert (
        plain_check.ok is None and plain_check.data["lost"] == 1 and plain_check.data["expired"] == ["task:x", "task:y"]
    )
    assert checks["drained-restart-node1"].ok is True and "drift p50 300 ms" in checks["drained-restart-node1"].summary
    assert checks["rolling-restart"].ok is False and checks["rolling-restart"].data["expired"] == ["task:z"]

"""The benchmark's workloads: the realistic mix's documents and run times, the refill metric. Pure."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from elastask.core.intervals import parse_date
from elastask.core.percentiles import percentile
from elastask_bed.bench.scenarios import MIX, SCENARIOS, documents, priorities, run_times
from elastask_bed.simulator.node import RunTimes
from elastask_bed.simulator.stats import NodeStats, run_label
from tests.unit.helpers import NOW


def test_long_tailed_run_times_have_the_median_and_99th_percentile_asked_for() -> None:
    times = RunTimes(default="logn:150:5000")
    rng = random.Random(1)
    draws = [times.draw_ms("any", rng) for _ in range(20_000)]
    assert 135 < (percentile(draws, 0.5) or 0) < 165
    assert 4000 < (percentile(draws, 0.99) or 0) < 6200


def test_the_mix_has_every_type_recurring_tasks_spread_bursts_and_priorities() -> None:
    scenario = SCENARIOS["mix"]
    docs = documents(scenario, NOW)
    by_type = Counter(doc.task_type for doc in docs)
    assert set(by_type) == set(MIX)
    recurring = [doc for doc in docs if doc.schedule is not None]
    assert {doc.schedule.interval for doc in recurring if doc.schedule} == {"10s", "30s", "1m", "5m"}
    # Recurring tasks start spread over their interval; actions come in bursts due at once.
    starts = {parse_date(doc.to_source()["task"]["runAt"]) for doc in recurring}
    assert len(starts) > 1000
    bursts = Counter(doc.run_at for doc in docs if doc.task_type == "mix:action")
    assert len(bursts) == scenario.duration_s // 10 + 1 and set(bursts.values()) == {60}
    assert {doc.priority for doc in docs} == {20, 50, 80}
    _default, by_type_args = run_times(scenario)
    assert "mix:rule=logn:150:5000" in by_type_args and "mix:report=4000-9000" in by_type_args
    assert "mix:action=80" in priorities(scenario) and priorities(SCENARIOS["backlog"]) == []


def test_refill_latency_pairs_each_freed_slot_with_the_next_run_started() -> None:
    stats = NodeStats()
    stats.slot_filled(0.0)  # the first runs fill empty slots: no refill
    stats.slot_freed(1.0)
    stats.slot_freed(1.5)
    stats.slot_filled(1.1)
    stats.slot_filled(2.0)
    assert [round(ms) for ms in stats.refill_ms] == [100, 500]
    assert stats.snapshot()["refill_ms"]["count"] == 2


def test_the_latest_start_names_the_task_that_explains_the_max_drift() -> None:
    stats = NodeStats()
    stats.run_started(12.0, False, "task:a (x, attempts 1, runAt t)")
    stats.run_started(900.0, False, "task:b (y, attempts 1, runAt t)")
    stats.run_started(40.0, False, "task:c (x, attempts 1, runAt t)")
    snapshot = stats.snapshot()
    assert snapshot["latest_start_ms"] == 900.0 and snapshot["latest_start_task"].startswith("task:b")


def test_runs_keep_their_span_and_the_drift_of_the_last_seconds_for_the_charts_and_the_demo() -> None:
    stats = NodeStats()
    stats.run_started(5000.0, False, at_s=100.0)  # a start-up drift, long ago
    stats.run_ended(failed=False, at_s=100.2, started_s=100.0)
    stats.run_started(20.0, False, at_s=170.0)
    stats.run_ended(failed=False, at_s=170.5, started_s=170.0)
    assert stats.drifts_since(120.0) == [20.0]  # the start-up's drift has aged out
    assert list(stats.spans) == [(100.0, 100.2), (170.0, 170.5)]
    assert (stats.first_start_s, stats.last_end_s) == (100.0, 170.5)
    assert stats.snapshot(with_drifts=True)["spans"] == [[100.0, 100.2], [170.0, 170.5]]


def test_a_run_label_names_its_claim_and_the_end_of_the_task_s_previous_run() -> None:
    body = {"id": "task:r", "taskType": "rule", "attempts": 1, "runAt": "T0", "startedAt": "T2"}
    ended = datetime(2026, 1, 1, 0, 0, 21, tzinfo=UTC)
    assert run_label(body, ended) == (
        "task:r (rule, attempts 1, runAt T0, claimed T2, previous run ended 2026-01-01T00:00:21.000Z)"
    )
    assert run_label(body, None).endswith("previous run ended -)")


def test_a_plain_worker_has_a_process_for_dispatch_beside_a_refill_session_on_a_small_machine() -> None:
    from elastask.config import Settings
    from elastask.entry.celeryapp import create_app

    app = create_app(Settings())
    assert app.conf.worker_concurrency >= 4  # Celery's own default would be the CPU count (2 here)


def test_the_burst_scenario_starts_the_dispatcher_with_the_burst() -> None:
    from elastask_bed.bench.scenarios import SCENARIOS

    burst = SCENARIOS["burst"]
    assert burst.cold_start and burst.one_shot_tasks == 300 and burst.nodes == 3 and burst.run_ms == 200
    assert "started with the burst" in burst.description


def test_the_fleet_runs_a_backlog_and_a_steady_load_at_each_size() -> None:
    from elastask_bed.bench.scenarios import fleet

    runs = fleet((10, 30, 50))
    backlogs = [r for r in runs if r.name == "fleet-backlog"]
    steady = [r for r in runs if r.name == "fleet-steady"]
    assert [(r.nodes, r.one_shot_tasks, r.run_ms) for r in backlogs] == [
        (10, 4000, 100),
        (30, 6000, 100),
        (50, 8000, 100),
    ]
    # 70 % of the ceiling: 30 nodes x 10 slots of 1 s runs every 10 s -> 2,100 recurring tasks.
    assert [(r.nodes, r.recurring_tasks) for r in steady] == [(10, 700), (30, 2100), (50, 3500)]
    assert all(r.duration_s == 60 and r.interval == "10s" for r in steady)
    small = fleet((2,), tasks=40, duration_s=5)
    assert [(r.name, r.one_shot_tasks, r.recurring_tasks, r.duration_s) for r in small] == [
        ("fleet-backlog", 40, 0, 0.0),
        ("fleet-steady", 0, 140, 5),
    ]

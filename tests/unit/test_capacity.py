"""The capacity estimation: queueing arithmetic, the usage buckets on fakeredis, the report on a stub engine."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from elastask.core import capacity_estimate, queries
from elastask.core.capacity_estimate import NodeUsage, Observed
from elastask.core.documents import new_task
from elastask.ops.health import capacity_estimation, health
from elastask.ops.usage import LAST_SAMPLE, MAX_SAMPLE_GAP_MS, UsageReader, UsageRecorder
from elastask.runtime import Runtime
from tests.unit.helpers import NOW
from tests.unit.stubs import StubEngine


def test_erlang_c_matches_the_textbook_values() -> None:
    # Two servers at one Erlang: P(wait) = 1/3; one server: P(wait) = utilisation.
    assert capacity_estimate.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert capacity_estimate.erlang_c(1, 0.6) == pytest.approx(0.6)
    assert capacity_estimate.erlang_c(10, 10.0) == 1.0  # saturated: everyone waits
    assert capacity_estimate.erlang_c(10, 0.0) == 0.0


def test_the_chance_of_a_long_wait_falls_with_the_wait_and_with_more_slots() -> None:
    short = capacity_estimate.wait_exceeds(20, 15.0, 1.0, 0.1)
    long = capacity_estimate.wait_exceeds(20, 15.0, 1.0, 1.0)
    more_slots = capacity_estimate.wait_exceeds(30, 15.0, 1.0, 0.1)
    assert 0 < long < short < 1 and more_slots < short


def test_nodes_needed_covers_the_load_with_headroom_and_grows_with_it() -> None:
    # 100 runs/s of 200 ms is 20 slots busy on average; 10 slots a node.
    needed = capacity_estimate.nodes_needed(100, 0.2, 10, 0.5)
    assert needed is not None and needed >= 3  # 2 nodes would be 100 % busy
    assert capacity_estimate.wait_exceeds(needed * 10, 20.0, 0.2, 0.5) <= capacity_estimate.WAIT_TOLERANCE
    assert capacity_estimate.wait_exceeds((needed - 1) * 10, 20.0, 0.2, 0.5) > capacity_estimate.WAIT_TOLERANCE
    bigger = capacity_estimate.nodes_needed(400, 0.2, 10, 0.5)
    assert bigger is not None and bigger > needed
    assert capacity_estimate.nodes_needed(0, 0.2, 10, 0.5) == 1
    assert capacity_estimate.nodes_needed(1e9, 1.0, 10, 0.5) is None  # beyond MAX_NODES


def _observed(runs_per_node: int, busy_units: float, overdue: int = 0, recurring: float | None = None) -> Observed:
    # Window of 60 s; each node averages ``busy_units`` units in flight; runs cost 2 units each.
    nodes = tuple(NodeUsage(f"kibana:{i}", 20, busy_units * 60_000, runs_per_node, 2 * runs_per_node) for i in range(3))
    return Observed(60.0, nodes, overdue=overdue, recurring_per_minute=recurring)


def test_given_a_lightly_loaded_fleet_the_estimate_reads_little_law_and_says_how_many_nodes_suffice() -> None:
    # 300 runs/min per node, 4 units (2 runs) in flight on average: mean run = 2 runs / 5 runs/s = 0.4 s.
    section = capacity_estimate.estimate(_observed(300, 4.0), 0.5)
    observed, proposed = section["observed"], section["proposed"]
    assert section["estimate"] is True and section["window_seconds"] == 60
    assert observed["throughput_per_minute"] == 900
    assert observed["mean_hold_seconds"] == pytest.approx(0.4)
    assert observed["load_percent"] == pytest.approx(20)
    assert observed["by_node"]["kibana:0"] == {"throughput_per_minute": 300, "average_load_percent": 20}
    assert observed["max_throughput_per_minute"] == pytest.approx(3 * 10 * 60 / 0.4)
    assert proposed["nodes_needed"] == 1  # 15 runs/s x 0.4 s = 6 slots busy: one node of 10 holds it
    assert proposed["minutes_to_drain_overdue"] == 0 and section["notes"] == []


def test_given_a_saturated_fleet_with_a_backlog_the_estimate_warns_and_drains_only_with_spare_room() -> None:
    nearly = capacity_estimate.estimate(_observed(300, 19.5, overdue=1200), 0.5)
    assert any("lower bound" in note for note in nearly["notes"])
    assert nearly["proposed"]["minutes_to_drain_overdue"] == pytest.approx(1200 / (3 * 10 * 60 / 1.95 - 900), abs=0.1)
    section = capacity_estimate.estimate(_observed(300, 20.0, overdue=1200), 0.5)
    # Running flat out, what ran is all it can run: the backlog never drains.
    assert section["proposed"]["minutes_to_drain_overdue"] is None
    assert section["proposed"]["nodes_needed"] > 3
    assert any("does not shrink" in note for note in section["notes"])


def test_given_schedules_asking_more_than_ran_the_demand_comes_from_the_schedules() -> None:
    quiet = capacity_estimate.estimate(_observed(60, 1.0), 0.5)
    asked = capacity_estimate.estimate(_observed(60, 1.0, recurring=6000.0), 0.5)
    assert asked["proposed"]["demand_per_minute"] == 6000
    assert asked["proposed"]["nodes_needed"] > quiet["proposed"]["nodes_needed"]


def test_given_spare_room_the_backlog_drains_at_the_spare_rate() -> None:
    section = capacity_estimate.estimate(_observed(300, 4.0, overdue=900), 0.5)
    spare = section["observed"]["max_throughput_per_minute"] - section["proposed"]["demand_per_minute"]
    assert section["proposed"]["minutes_to_drain_overdue"] == pytest.approx(900 / spare, abs=0.01)


def test_given_no_runs_the_estimate_says_so_and_describe_shows_no_none() -> None:
    section = capacity_estimate.estimate(Observed(120.0, (NodeUsage("kibana:a", 20),), overdue=0), 0.5)
    assert section["proposed"]["nodes_needed"] is None
    assert "nothing to estimate from" in section["notes"][0]
    lines = capacity_estimate.describe(section)
    assert lines and not any("None" in line for line in lines)
    busy = capacity_estimate.describe(capacity_estimate.estimate(_observed(300, 20.0, overdue=1200), 0.5))
    assert "never at this load" in busy[1] and not any("None" in line for line in busy)


def test_recurring_demand_sums_each_schedule_per_minute_and_skips_unreadable_ones() -> None:
    answer = {
        "aggregations": {
            "interval": {
                "buckets": [
                    {"key": "10s", "doc_count": 5},
                    {"key": "5m", "doc_count": 10},
                    {"key": "every tuesday", "doc_count": 99},
                ]
            }
        }
    }
    assert queries.recurring_per_minute(answer) == pytest.approx(5 * 6 + 10 / 5)
    assert queries.recurring_per_minute({}) == 0


def test_in_flight_samples_are_weighted_by_the_time_they_stand_for(rt: Runtime) -> None:
    recorder, reader = UsageRecorder(rt.redis), UsageReader(rt.redis)
    now_ms = rt.ledger.now_ms()
    recorder.sample_in_flight({"kibana:a": 4}, now_ms)  # the first sample stands for nothing
    assert reader.window(now_ms).sampled_ms == 0
    rt.redis.set(LAST_SAMPLE, rt.ledger.now_ms() - 1000)  # as if the last cycle ran a second ago
    recorder.sample_in_flight({"kibana:a": 4, "kibana:b": 0}, now_ms)
    window = reader.window(now_ms)
    assert 1000 <= window.sampled_ms < 1100
    assert window.by_owner["kibana:a"]["in_flight_unit_ms"] == 4 * window.sampled_ms
    assert "kibana:b" not in window.by_owner  # nothing in flight, nothing stored
    # A dispatcher stopped for a minute does not count as a minute idle.
    rt.redis.set(LAST_SAMPLE, rt.ledger.now_ms() - 60_000)
    recorder.sample_in_flight({"kibana:a": 0}, now_ms)
    assert reader.window(now_ms).sampled_ms <= window.sampled_ms + MAX_SAMPLE_GAP_MS


def test_runs_are_counted_per_minute_and_the_window_forgets_old_minutes(rt: Runtime) -> None:
    recorder, reader = UsageRecorder(rt.redis), UsageReader(rt.redis)
    now_ms = int(NOW.timestamp() * 1000)
    recorder.runs_started("kibana:a", 3, 6, now_ms - 10 * 60_000)  # ten minutes ago: outside the window
    recorder.runs_started("kibana:a", 2, 4, now_ms - 60_000)
    recorder.runs_started("kibana:a", 1, 2, now_ms)
    recorder.runs_started("kibana:a", 0, 0, now_ms)
    totals = reader.window(now_ms).by_owner["kibana:a"]
    assert totals["runs"] == 3 and totals["run_units"] == 6


def test_health_and_status_carry_the_estimate_from_the_recorded_window(engine: StubEngine, rt: Runtime) -> None:
    for i in range(30):
        doc = new_task(f"r{i}", "sample", now=NOW, interval="10s")
        engine.put(doc.id, doc.to_source())
    recorder = UsageRecorder(rt.redis)
    now_ms = rt.ledger.now_ms()
    rt.redis.set(LAST_SAMPLE, now_ms - 10_000)
    recorder.sample_in_flight({"kibana:a": 4}, now_ms)
    recorder.runs_started("kibana:a", 50, 100, now_ms)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    section = capacity_estimation(rt, now, overdue=0)
    assert section["observed"]["recurring_required_per_minute"] == pytest.approx(30 * 6)
    assert section["observed"]["throughput_per_minute"] == pytest.approx(50 * 60 / 10, rel=0.05)
    assert math.isclose(section["observed"]["mean_hold_seconds"], 4 / (100 / 10), rel_tol=0.05)
    report = health(rt, now + timedelta(milliseconds=1))
    assert report["capacity_estimation"]["proposed"]["nodes_needed"] >= 1

"""The pull baseline's rules, pinned to worked examples from Kibana's task manager code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from elastask_bed.simulator.kibana_rules import (
    ManagedConfiguration,
    assigned_partitions,
    claim_retry_at,
    next_run_at,
    partition_map,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def test_next_run_of_an_on_time_run_keeps_the_schedule_from_run_at() -> None:
    # runAt 12:00:00, started 0.2 s later with a 500 ms poll interval: next at 12:01:00, not 12:01:00.2.
    assert next_run_at(T0, T0 + s(0.2), 60_000, T0 + s(1), 500) == T0 + s(60)


def test_next_run_of_a_late_run_counts_from_when_it_started() -> None:
    assert next_run_at(T0, T0 + s(5), 60_000, T0 + s(6), 500) == T0 + s(65)


def test_next_run_is_never_before_now() -> None:
    assert next_run_at(T0, T0 + s(0.1), 1_000, T0 + s(30), 500) == T0 + s(30)


def test_the_one_shot_lease_is_thirty_seconds_plus_the_timeout_on_the_first_run() -> None:
    assert claim_retry_at(T0, 1, 300_000, None) == T0 + s(30 + 300)
    assert claim_retry_at(T0, 2, 300_000, None) == T0 + s(300 + 300)  # 5 m before the second retry
    assert claim_retry_at(T0, 1, 60_000, 300_000) == T0 + s(300)  # recurring: max(interval, timeout)


def test_partition_map_for_3_and_4_nodes() -> None:
    three = partition_map(["c", "a", "b"], range(4))
    assert three == {0: ["a", "b"], 1: ["c", "a"], 2: ["b", "c"], 3: ["a", "b"]}
    four = partition_map(["d", "b", "a", "c"], range(3))
    assert four == {0: ["a", "b"], 1: ["c", "d"], 2: ["a", "b"]}
    assert assigned_partitions("d", ["a", "b", "c", "d"])[:3] == [1, 3, 5]
    assert len(assigned_partitions("a", ["a", "b", "c"])) == 171  # 2 of every 3 partitions, about


def test_a_quiet_ten_second_window_stretches_the_interval_to_three_seconds_and_load_brings_it_back() -> None:
    config = ManagedConfiguration()
    assert config.poll_interval_ms == 500
    for t in range(0, 10_000, 500):
        config.record_utilization(t, 10.0)
    config.adjust()
    assert config.poll_interval_ms == 3000
    for t in range(10_000, 25_001, 500):
        config.record_utilization(t, 80.0)
    config.adjust()
    assert config.poll_interval_ms == 500


def test_backpressure_on_429_shrinks_capacity_and_stretches_the_interval_then_recovers() -> None:
    config = ManagedConfiguration()
    config.record_utilization(0, 90.0)
    config.record_error()
    config.adjust()
    assert config.capacity == 8 and config.poll_interval_ms == 600
    config.record_error()
    config.adjust()
    assert config.capacity == 6 and config.poll_interval_ms == 720
    config.record_utilization(20_000, 90.0)
    config.adjust()  # no errors: back toward the configured values
    assert config.capacity == 7 and config.poll_interval_ms == 500

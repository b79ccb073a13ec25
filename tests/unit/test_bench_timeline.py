"""The benchmark's charts over time: the series they draw, and that a chart is drawn. Pure, no services."""

from __future__ import annotations

from pathlib import Path

from elastask_bed.bench.timeline import cdf, chart, in_flight, runs_started_per_s


def test_runs_started_are_counted_per_second() -> None:
    times, rates = runs_started_per_s([(0.1, 0.5), (0.2, 0.9), (1.5, 2.0), (3.2, 3.4)])
    assert times == [0.0, 1.0, 2.0, 3.0] and rates == [2.0, 1.0, 0.0, 1.0]
    assert runs_started_per_s([]) == ([], [])


def test_in_flight_is_a_step_series_of_starts_and_ends() -> None:
    times, counts = in_flight([(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)])
    # At 1.0 one run ends and another starts: two stay in flight.
    assert times == [0.0, 0.5, 1.0, 1.5, 2.0] and counts == [1, 2, 2, 1, 0]


def test_the_cdf_rises_to_one_over_the_sorted_values() -> None:
    assert cdf([30.0, 10.0, 20.0, 40.0]) == ([10.0, 20.0, 30.0, 40.0], [0.25, 0.5, 0.75, 1.0])


def test_a_chart_is_drawn_for_runs_with_a_timeline_and_not_without(tmp_path: Path) -> None:
    run = {
        "scenario": "burst",
        "capacity": 2,
        "ceiling_per_s": 10.0,
        "timeline": {"kibana:a": [[0.0, 0.2], [0.1, 0.3]], "kibana:b": [[0.05, 0.25]]},
    }
    runs = [{**run, "mode": "push", "drifts_ms": [5.0, 9.0]}, {**run, "mode": "pull-kibana", "drifts_ms": [50.0]}]
    assert chart(tmp_path / "t.png", runs)
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert not chart(tmp_path / "none.png", [{"scenario": "idle", "mode": "push", "timeline": {}}])

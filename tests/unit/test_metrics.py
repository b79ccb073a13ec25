"""The metrics' write side on fakeredis: a batch of observations is recorded as one at a time would be."""

from __future__ import annotations

import fakeredis

from elastask.ops.metrics import Metrics, MetricsReader


def test_observations_of_a_job_land_in_their_buckets_sum_count_and_window_in_order() -> None:
    client = fakeredis.FakeRedis()
    values = [0.01, 0.2, 0.2, 7.0, 400.0]
    Metrics(client).record(counts={"claimed": 3}, observations=[("start_drift_seconds", v) for v in values])
    Metrics(client).record(observations=[("start_drift_seconds", 0.02)])
    reader = MetricsReader(client)
    cumulative, total, count = reader.histogram("start_drift_seconds")
    by_bound = dict(cumulative)
    assert (by_bound[0.05], by_bound[0.25], by_bound[10.0], by_bound[300.0]) == (2, 4, 5, 5)
    assert by_bound[float("inf")] == 6 and count == 6
    assert abs(total - (sum(values) + 0.02)) < 1e-9
    assert reader.window("start_drift_seconds") == [0.02, *reversed(values)]  # newest first
    assert reader.counters() == {"claimed": 3}

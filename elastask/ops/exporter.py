"""Prometheus ``/metrics`` of ``elastask serve`` (console/app.py serves it), read from Redis and the engine.

One exporter serves the whole dispatcher, however many workers and machines: the loops record in
Redis (see metrics.py), so the numbers are right under Celery's prefork pool without
multiprocess mode.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from elastask.errors import StoreError
from elastask.ops.health import capacity_estimation, count_overdue
from elastask.ops.metrics import MetricsReader, parse_counter_field
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

HELP = {
    "elastask_claim_cycles": "Claim cycles that ran to their end.",
    "elastask_claimed": "Tasks claimed (conditional bulk update succeeded).",
    "elastask_claim_conflicts": "Claims that lost a race (HTTP 409).",
    "elastask_claim_stale": "Search hits dropped as stale before claiming.",
    "elastask_released": "Ledger slots freed because Kibana wrote an outcome.",
    "elastask_malformed": "Malformed task documents skipped.",
    "elastask_too_costly": "Tasks failed because their own task.cost is more than any Kibana node holds.",
    "elastask_dispatched": "Pushes to _run_now, by outcome.",
    "elastask_dead_worker_claims": "Claims of a worker that stopped beating, never pushed, given back to idle.",
    "elastask_dead_worker_in_flight": "Pushes in flight, unanswered, when their worker died: left to their leases.",
    "elastask_retried": "Expired leases handled, by outcome (retry, failed, rescheduled).",
}


class ElastaskCollector:
    """Reads Redis (and the ledger) at scrape time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        reader = MetricsReader(self.rt.redis)
        families: dict[str, CounterMetricFamily] = {}
        grouped: dict[str, list[tuple[dict[str, str], int]]] = defaultdict(list)
        for field, value in reader.counters().items():
            name, labels = parse_counter_field(field)
            grouped[name.removesuffix("_total")].append((labels, value))
        for name, samples in sorted(grouped.items()):
            label_names = sorted({k for labels, _ in samples for k in labels})
            family = CounterMetricFamily(name, HELP.get(name, name), labels=label_names)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in label_names], value)
            families[name] = family
        yield from families.values()
        for name, help_text in (
            ("start_drift_seconds", "Push time minus runAt of accepted pushes."),
            ("claim_duration_seconds", "Duration of claim cycles."),
        ):
            buckets, total, _count = reader.histogram(name)
            yield HistogramMetricFamily(
                f"elastask_{name}",
                help_text,
                buckets=[("+Inf" if b == float("inf") else str(b), c) for b, c in buckets],
                sum_value=total,
            )
        nodes, _ = self.rt.nodes.resolve()
        used = self.rt.ledger.used_units([n.owner_id for n in nodes])
        in_rotation = self.rt.nodes.in_rotation([n.owner_id for n in nodes])
        in_flight = GaugeMetricFamily(
            "elastask_node_in_flight_units", "Capacity units leased to a node now.", labels=["owner_id", "url"]
        )
        capacity = GaugeMetricFamily(
            "elastask_node_capacity_units", "A node's capacity in cost units.", labels=["owner_id", "url"]
        )
        rotation = GaugeMetricFamily(
            "elastask_node_in_rotation", "1 while the node gets tasks.", labels=["owner_id", "url"]
        )
        for node in nodes:
            node_labels = [node.owner_id, node.url]
            in_flight.add_metric(node_labels, used.get(node.owner_id, 0))
            capacity.add_metric(node_labels, node.capacity_units)
            rotation.add_metric(node_labels, 1 if in_rotation[node.owner_id] else 0)
        yield in_flight
        yield capacity
        yield rotation
        yield from self.pauses()
        last = reader.last_claim_ms()
        if last is not None:
            yield GaugeMetricFamily(
                "elastask_last_claim_timestamp_seconds", "When a claim cycle last finished.", value=last / 1000
            )
        yield from self.dependencies()

    def pauses(self) -> Iterator[Metric]:
        """What is paused (1 each) and since when: the "paused too long" alert reads them."""
        paused = GaugeMetricFamily(
            "elastask_paused",
            "1 per thing paused: all, a task type or a node (elastask pause, elastask.yaml paused:, Kibana).",
            labels=["scope", "name", "source"],
        )
        since = GaugeMetricFamily(
            "elastask_paused_since_timestamp_seconds",
            "When it was paused (elastask pause, Kibana's execution pause; elastask.yaml's paused: has no start).",
            labels=["scope", "name", "source"],
        )
        for pause in (
            PauseStore(self.rt.redis, self.rt.settings.paused, seen=self.rt.memory).read(self.rt.ledger.now_ms()).pauses
        ):
            paused.add_metric([pause.scope, pause.name, pause.source], 1)
            if pause.since_ms is not None:
                since.add_metric([pause.scope, pause.name, pause.source], pause.since_ms / 1000)
        yield paused
        yield since

    def dependencies(self) -> Iterator[Metric]:
        """Whether Redis and the engine answer, and the tasks overdue (what the alert rules read)."""
        up = GaugeMetricFamily("elastask_dependency_up", "1 while the dependency answers.", labels=["dependency"])
        try:
            self.rt.redis.ping()
            up.add_metric(["redis"], 1)
        except redis.RedisError:
            up.add_metric(["redis"], 0)
        try:
            now = datetime.now(UTC)
            overdue = count_overdue(self.rt, now)
            up.add_metric(["elasticsearch"], 1)
            yield GaugeMetricFamily(
                "elastask_tasks_overdue", "Tasks due for longer than max(60 s, 10 x polling_interval).", value=overdue
            )
            yield from self.capacity(now, overdue)
        except StoreError:
            up.add_metric(["elasticsearch"], 0)
        yield up

    def capacity(self, now: datetime, overdue: int) -> Iterator[Metric]:
        """The capacity estimation's figures, when the window had runs to estimate from (core/capacity_estimate.py)."""
        try:
            section = capacity_estimation(self.rt, now, overdue)
        except (StoreError, redis.RedisError):
            return
        proposed, observed = section["proposed"], section["observed"]
        if proposed.get("nodes_needed") is not None:
            yield GaugeMetricFamily(
                "elastask_capacity_nodes_needed",
                "Estimate: Kibana nodes that keep the wait for a slot under polling_interval (last 5 minutes).",
                value=proposed["nodes_needed"],
            )
        if observed.get("mean_hold_seconds") is not None:
            yield GaugeMetricFamily(
                "elastask_capacity_mean_hold_seconds",
                "Estimate: how long a run holds its slot, push to outcome seen (last 5 minutes).",
                value=observed["mean_hold_seconds"],
            )

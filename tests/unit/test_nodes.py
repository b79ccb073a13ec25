"""The node registry: ownerIds, the circuit breaker and rotation (fakeredis, a scripted Kibana)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from elastask.parts.nodes import Node
from tests.unit.stubs import StubEngine, stub_runtime

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_a_configured_id_is_the_owner_id_without_asking_the_node() -> None:
    rt = stub_runtime(StubEngine())
    nodes, problems = rt.nodes.resolve()
    assert [n.owner_id for n in nodes] == ["kibana:a"] and problems == []


def test_failures_in_a_row_open_the_breaker_and_a_success_closes_it() -> None:
    rt = stub_runtime(StubEngine(), node_failure_threshold=3, node_probe_interval_ms=5000)
    [node] = rt.nodes.resolve()[0]
    for _ in range(2):
        rt.nodes.record_failure(node, NOW, "answered 503", hard=False)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": True}
    rt.nodes.record_failure(node, NOW, "answered 503", hard=False)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": False}
    assert rt.nodes.breaker("kibana:a") == {"failures": 3, "open_until_ms": _ms(NOW) + 5000, "backoff_ms": 5000}
    assert rt.nodes.available([node], NOW) == []  # out of rotation until its probe is due
    rt.nodes.record_success(node)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": True}
    assert rt.nodes.breaker("kibana:a") == {"failures": 0, "open_until_ms": 0, "backoff_ms": 0}


def test_a_refused_connection_opens_the_breaker_at_once_and_the_backoff_doubles() -> None:
    rt = stub_runtime(StubEngine(), node_probe_interval_ms=1000)
    node: Node = rt.nodes.resolve()[0][0]
    rt.nodes.record_failure(node, NOW, "connection refused", hard=True)
    assert rt.nodes.breaker("kibana:a")["backoff_ms"] == 1000
    rt.nodes.record_failure(node, NOW + timedelta(seconds=1), "still refused", hard=True)
    assert rt.nodes.breaker("kibana:a")["backoff_ms"] == 2000


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)

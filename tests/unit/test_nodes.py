"""The node registry: ownerIds, the circuit breaker and rotation (fakeredis, a scripted Kibana)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from elastask import keys
from elastask.config import KibanaNode
from elastask.parts.nodes import Node
from elastask.runtime import Runtime
from tests.unit.helpers import NOW
from tests.unit.stubs import MakeRuntime


def test_a_configured_id_is_the_owner_id_without_asking_the_node(rt: Runtime) -> None:
    nodes, problems = rt.nodes.resolve()
    assert [n.owner_id for n in nodes] == ["kibana:a"] and problems == []


def test_failures_in_a_row_open_the_breaker_and_a_success_closes_it(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(node_failure_threshold=3, node_probe_interval_ms=5000)
    [node] = rt.nodes.resolve()[0]
    for _ in range(2):
        rt.nodes.record_failure(node, "answered 503", hard=False)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": True}
    rt.nodes.record_failure(node, "answered 503", hard=False)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": False}
    breaker = rt.nodes.breaker("kibana:a")
    assert breaker["failures"] == 3
    assert breaker["open_until_ms"] - breaker["outage_since_ms"] == 5000  # first probe one interval later
    assert rt.nodes.available([node], NOW) == []  # out of rotation until its probe is due
    rt.nodes.record_success(node)
    assert rt.nodes.in_rotation(["kibana:a"]) == {"kibana:a": True}
    assert rt.nodes.breaker("kibana:a") == {"failures": 0, "open_until_ms": 0, "outage_since_ms": 0, "probes": 0}


def test_every_nodes_breaker_is_read_in_one_round_trip(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(node_failure_threshold=3)
    [node] = rt.nodes.resolve()[0]
    rt.nodes.record_failure(node, "answered 503", hard=False)
    commands: list[object] = []
    rt.nodes.redis.execute_command = lambda *args, **kw: commands.append(args)  # type: ignore[method-assign]
    pipelined = rt.nodes.breakers(["kibana:a", "kibana:b"])
    assert commands == []  # no command outside the one pipeline
    assert pipelined["kibana:a"]["failures"] == 1 and pipelined["kibana:b"] == dict.fromkeys(pipelined["kibana:b"], 0)


def test_given_an_open_breaker_when_more_pushes_of_the_same_outage_fail_then_its_next_probe_does_not_move(
    make_runtime: MakeRuntime,
) -> None:
    # Pushes sent before the breaker opened answer after it did: the outage is counted once, so a
    # short outage never benches the node for longer than one probe interval.
    rt = make_runtime(node_probe_interval_ms=1000)
    node: Node = rt.nodes.resolve()[0][0]
    rt.nodes.record_failure(node, "connection refused", hard=True)
    opened = rt.nodes.breaker("kibana:a")
    for _ in range(20):
        rt.nodes.record_failure(node, "still refused", hard=True)
    assert rt.nodes.breaker("kibana:a") == opened


def test_given_a_node_out_of_rotation_when_its_probe_is_due_then_it_is_probed_once_in_the_background_and_back(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(node_probe_interval_ms=1)
    node: Node = rt.nodes.resolve()[0][0]
    probes: list[float] = []

    def answering(_node: object, timeout_s: float = 2.0) -> bool:
        probes.append(timeout_s)
        return True

    monkeypatch.setattr(rt.kibana, "is_available", answering)
    rt.nodes.record_failure(node, "connection refused", hard=True)
    time.sleep(0.01)  # the probe falls due (1 ms, on Redis's clock)
    assert rt.nodes.available([node], NOW) == []  # this cycle goes on without it: the probe runs apart
    rt.nodes.wait_for_probes()
    assert len(probes) == 1 and probes[0] <= 2.0
    assert rt.nodes.available([node], NOW) == [node]  # the next cycle has it back


def test_given_a_node_that_does_not_answer_its_probe_then_it_is_probed_again_each_interval_not_later(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(node_probe_interval_ms=5000)
    node: Node = rt.nodes.resolve()[0][0]
    monkeypatch.setattr(rt.kibana, "is_available", lambda _node, timeout_s=2.0: False)
    rt.nodes.record_failure(node, "connection refused", hard=True)
    rt.redis.hset(keys.health("kibana:a"), "open_until_ms", 0)  # its probe is due now
    assert rt.nodes.available([node], NOW) == []
    rt.nodes.wait_for_probes()
    assert rt.nodes.available([node], NOW) == []  # the turn is taken until the next interval
    breaker = rt.nodes.breaker("kibana:a")
    assert breaker["probes"] == 1
    redis_now_ms = rt.ledger.now_ms()
    assert redis_now_ms < breaker["open_until_ms"] <= redis_now_ms + 5000  # fixed interval, no growing backoff


def test_given_a_node_whose_owner_id_is_not_known_when_it_does_not_answer_then_resolving_waits_a_bounded_time(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = KibanaNode(url="http://kibana-b:5601")
    rt.settings = replace(rt.settings, kibana=replace(rt.settings.kibana, hosts=(*rt.settings.kibana.hosts, config)))
    rt.nodes.settings = rt.settings
    release = threading.Event()

    def hanging(_node: object, timeout_s: float = 5.0) -> str:
        release.wait(5)
        return "b-uuid"

    monkeypatch.setattr(rt.kibana, "status_uuid", hanging)
    started = time.monotonic()
    nodes, problems = rt.nodes.resolve(wait_s=0.05)
    assert time.monotonic() - started < 2  # bounded by wait_s, not by the node
    assert [n.owner_id for n in nodes] == ["kibana:a"] and "kibana-b" in problems[0]
    release.set()
    for _ in range(100):
        nodes, problems = rt.nodes.resolve(wait_s=0.05)
        if len(nodes) == 2:
            break
        time.sleep(0.02)  # a later look does not wait for the question already asked
    assert [n.owner_id for n in nodes] == ["kibana:a", "kibana:b-uuid"] and problems == []


def test_given_a_node_whose_owner_id_is_not_known_and_that_never_answers_then_only_the_first_look_waits(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refill session looks every ~10 ms and learns the nodes every 100 ms: a look that waited 0.5 s
    # each time for a hung node's ownerId (defect 10) would starve every other node of claims.
    rt = make_runtime(node_probe_interval_ms=60_000)
    config = KibanaNode(url="http://kibana-b:5601")
    rt.settings = replace(rt.settings, kibana=replace(rt.settings.kibana, hosts=(*rt.settings.kibana.hosts, config)))
    rt.nodes.settings = rt.settings
    asked: list[float] = []

    def never_answers(_node: object, timeout_s: float = 5.0) -> str:
        asked.append(time.monotonic())
        time.sleep(0.3)
        raise TimeoutError("no answer")

    monkeypatch.setattr(rt.kibana, "status_uuid", never_answers)
    started = time.monotonic()
    rt.nodes.resolve(wait_s=0.2)  # the first look asks, and waits its bounded time
    assert time.monotonic() - started >= 0.19
    for _ in range(5):
        started = time.monotonic()
        nodes, problems = rt.nodes.resolve(wait_s=0.2)
        assert time.monotonic() - started < 0.1, "a later look waited for a question already asked"
        assert [n.owner_id for n in nodes] == ["kibana:a"] and "kibana-b" in problems[0]
        time.sleep(0.1)
    assert len(asked) == 1  # failed once: asked again only after the probe interval

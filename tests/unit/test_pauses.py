"""Pauses: the rules, Redis's copy and its loss, and the claim cycle and dispatch jobs honouring them.

On fakeredis and the stub engine; the same on real processes is in tests/integration/test_pauses.py.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import fakeredis
import pytest

from elastask import keys
from elastask.config import load_settings
from elastask.core.messages import DispatchJob
from elastask.core.pauses import PauseSet, parse_entry
from elastask.errors import ConfigError
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.ops import pausing
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime
from tests.unit.helpers import NOW, claimed, running, seeded_two_types
from tests.unit.stubs import OWNER, URL, StubEngine

NOW_MS = int(NOW.timestamp() * 1000)


def store_of(*configured: str) -> PauseStore:
    return PauseStore(fakeredis.FakeRedis(), configured)


def test_a_pause_is_everything_a_task_type_or_pattern_or_a_node_by_any_of_its_names() -> None:
    assert parse_entry("all") == ("all", "")
    assert parse_entry("type:alerting:.es-query") == ("type", "alerting:.es-query")
    for bad in ("everything", "type:", "node", "kind:x"):
        with pytest.raises(ValueError, match="expected all, type:"):
            parse_entry(bad)
    store = store_of()
    store.pause(["type:reports:*", "node:kibana-2"], NOW_MS)
    pauses = store.read(NOW_MS)
    assert pauses.type_paused("reports:generate") and not pauses.type_paused("alerting:.es-query")
    assert pauses.node_paused(("kibana:uuid-2", "http://k2:5601", "kibana-2"))
    assert not pauses.node_paused(("kibana:uuid-1", "http://k1:5601", None))
    assert pauses.types() == {"reports:*"} and not pauses.everything
    assert not PauseSet()
    store.pause(["all"], NOW_MS)
    assert store.read(NOW_MS).type_paused("anything") and store.read(NOW_MS).node_paused(("x",))


def test_pausing_again_keeps_when_it_started_and_resume_lifts_only_what_is_named() -> None:
    store = store_of("type:fleet:*")
    store.pause(["type:a"], NOW_MS)
    store.pause(["type:a", "type:b"], NOW_MS + 5000)
    since = {p.text: p.since_ms for p in store.read(NOW_MS).pauses}
    assert since == {"type:a": NOW_MS, "type:b": NOW_MS + 5000, "type:fleet:*": None}
    assert store.resume(["type:a", "type:never"]) == ["type:a"]
    assert sorted(p.text for p in store.read(NOW_MS).pauses) == ["type:b", "type:fleet:*"]
    assert store.resume() == ["type:b"]  # everything Redis holds; elastask.yaml's paused: stays
    assert [p.source for p in store.read(NOW_MS).pauses] == ["config"]


def test_pauses_redis_lost_are_written_back_from_what_a_worker_remembers_and_said_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeRedis()
    store = PauseStore(client)
    store.pause(["type:reports:generate"], NOW_MS)
    store.read(NOW_MS)  # a worker's claim cycle saw it
    client.flushall()  # Redis restarted without its data
    with caplog.at_level(logging.ERROR):
        pauses = store.read(NOW_MS + 1000)
    assert pauses.type_paused("reports:generate")  # never lifted by accident
    assert "Redis lost the pauses" in caplog.text and "type:reports:generate" in caplog.text
    assert client.hget(keys.PAUSED, "type:reports:generate") == str(NOW_MS).encode()  # back for every worker
    assert store.restored_at_ms() == NOW_MS + 1000


def test_a_resume_is_not_taken_for_a_loss() -> None:
    client = fakeredis.FakeRedis()
    store = PauseStore(client)
    store.pause(["all"], NOW_MS)
    store.read(NOW_MS)
    store.resume()
    assert not store.read(NOW_MS) and store.restored_at_ms() is None


def test_elastask_yaml_paused_is_read_and_a_bad_entry_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "elastask.yaml"
    path.write_text("paused: [type:reports:generate, node:kibana-2]\n")
    assert load_settings(path, env={}).paused == ("type:reports:generate", "node:kibana-2")
    assert load_settings(path, env={"ELASTASK_PAUSED": "all"}).paused == ("all",)
    path.write_text("paused: [reports]\n")
    with pytest.raises(ConfigError, match=r"paused: expected a list of all, type:"):
        load_settings(path, env={})


def test_a_paused_type_is_not_claimed_the_others_are_and_resume_claims_it_with_its_attempts(
    engine: StubEngine, rt: Runtime
) -> None:
    seeded_two_types(engine)
    pausing.pause(rt, ["type:report"])
    sent: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert running(engine) == {"task:sample-0", "task:sample-1", "task:sample-2"}
    assert {doc["_source"]["task"]["attempts"] for d, doc in engine.docs.items() if "report" in d} == {0}
    pausing.resume(rt, ["type:report"])
    claim_available_tasks(rt, NOW + timedelta(seconds=1), sent.append, sessions=False)
    assert {d for d in running(engine) if "report" in d} == {"task:report-0", "task:report-1", "task:report-2"}


def test_everything_paused_claims_nothing_and_a_paused_node_gets_no_tasks(engine: StubEngine, rt: Runtime) -> None:
    seeded_two_types(engine)
    sent: list[DispatchJob] = []
    pausing.pause(rt, [])  # no names: everything
    claim_available_tasks(rt, NOW, sent.append, sessions=False)
    assert running(engine) == set() and sent == []
    pausing.resume(rt, [])
    pausing.pause(rt, ["node:kibana:a"])  # the stub's only node, by its ownerId
    claim_available_tasks(rt, NOW + timedelta(seconds=1), sent.append, sessions=False)
    assert running(engine) == set() and sent == []


def test_a_dispatch_job_gives_back_the_tasks_paused_since_their_claim_with_their_attempt(
    engine: StubEngine, rt: Runtime
) -> None:
    job = claimed(engine, rt, "task:late", attempts=1)
    pausing.pause(rt, ["type:sample"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        report = push_claimed_tasks(rt, DispatchJob(OWNER, URL, (job,)), NOW, pool)
    assert report.outcomes == {"task:late": "paused"}
    task = engine.docs["task:late"]["_source"]["task"]
    assert task["status"] == "idle" and task["attempts"] == 0  # never reached Kibana: attempt returned
    assert rt.ledger.leases([OWNER]) == []


def test_draining_a_node_pauses_it_and_waits_until_kibana_finished_its_runs(engine: StubEngine, rt: Runtime) -> None:
    from elastask.ops import draining

    for doc_id in ("task:one", "task:two"):
        task = claimed(engine, rt, doc_id, attempts=1)
        rt.ledger.confirm(OWNER, 20, [(doc_id, 2, datetime.fromisoformat(task.retry_at), None, None)], NOW)
    node = draining.drain(rt, "kibana:a")
    assert [p.text for p in PauseStore(rt.redis).read(NOW_MS).pauses] == ["node:kibana:a"]
    looks: list[tuple[int, int]] = []

    def kibana_finishes_one_run_a_second(_s: float) -> None:
        engine.docs.pop(next(iter(sorted(engine.docs))))  # one-shot runs: Kibana deletes the document

    done = draining.wait_until_empty(rt, node, 30, lambda units, leases: looks.append((units, leases)),
                                     sleep=kibana_finishes_one_run_a_second)  # fmt: skip
    assert done and looks == [(4, 2), (2, 1), (0, 0)]
    assert draining.undrain(rt, "kibana:a") == ["node:kibana:a"]
    with pytest.raises(draining.ElastaskError, match="no configured Kibana node is called 'kibana-9'"):
        draining.drain(rt, "kibana-9")


def test_waiting_on_a_drain_gives_up_after_its_timeout(engine: StubEngine, rt: Runtime) -> None:
    from elastask.ops import draining

    claimed(engine, rt, "task:long", attempts=1)
    node = draining.drain(rt, "http://kibana-a:5601")  # by its URL
    assert not draining.wait_until_empty(rt, node, 0, lambda _u, _l: None, sleep=lambda _s: None)

"""Fixtures: the real test bed (OpenSearch, proxy, Redis) once per session, simulators per test.

Integration tests never skip: if a part cannot start, the session errors with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from elasticsearch import Elasticsearch

from elastask.config import ElasticsearchSettings
from elastask.parts.store import TaskStore, build_client
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import INDEX, SimulatorProcess, empty_task_index
from tests.integration.harness import FAST_ENV, Dispatcher


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """Engine + proxy + Redis, no simulator (tests start the nodes they need)."""
    bed = Testbed(kibana_nodes=0)
    bed.start()
    yield bed
    bed.stop()


@pytest.fixture
def es(testbed: Testbed) -> Iterator[Elasticsearch]:
    """The official client, through the compatibility proxy."""
    client = build_client(ElasticsearchSettings(host=testbed.es_url))
    yield client
    client.close()


@pytest.fixture
def store(es: Elasticsearch) -> Iterator[TaskStore]:
    """The task index, emptied before each test."""
    task_store = TaskStore(es, INDEX)
    empty_task_index(es)
    yield task_store


@pytest.fixture
def redis_client(testbed: Testbed) -> Iterator[redis.Redis]:
    """A client of the test bed's real Redis, flushed before each test."""
    client = redis.Redis.from_url(testbed.redis.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def simulator(testbed: Testbed) -> Iterator[Callable[..., SimulatorProcess]]:
    """Factory: start simulated Kibana nodes for this test; all stopped afterwards."""
    started: list[SimulatorProcess] = []

    def start(nodes: int = 3, **options: Any) -> SimulatorProcess:
        sim = testbed.start_simulator(nodes, **options)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def dispatcher_factory(
    testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Dispatcher]]:
    """Factory: workers and beats for this test (config as a dict, ELASTASK_* as env); stopped after."""
    made: list[Dispatcher] = []

    def make(simulator: SimulatorProcess, **options: Any) -> Dispatcher:
        options["env"] = {**FAST_ENV, **(options.get("env") or {})}
        dispatcher = Dispatcher(tmp_path_factory.mktemp("dispatcher"), testbed, simulator, **options)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop()

"""A stub search engine (conditional writes and real-time reads, in memory) and a scripted Kibana.

For fast tests of the loops' rules only; races and faults are proven on the real engine in
tests/integration.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import fakeredis

from elastask.config import KibanaNode, KibanaSettings, Settings
from elastask.parts.kibana import KibanaClient, PushOutcome, PushResult
from elastask.parts.ledger import Ledger
from elastask.parts.nodes import NodeRegistry
from elastask.parts.store import TaskStore
from elastask.runtime import Runtime
from elastask_bed.simulation.engine import Answer as Answer
from elastask_bed.simulation.engine import StubEngine as StubEngine

INDEX = ".kibana_task_manager"
#: The stub runtime's one Kibana node: its ownerId and URL.
OWNER, URL = "kibana:a", "http://kibana-a:5601"


class ScriptedKibana(KibanaClient):
    """Answers every push with the result ``answer(body)`` gives, and remembers the pushes."""

    def __init__(self, settings: KibanaSettings, answer: Callable[[Mapping[str, Any]], PushResult]) -> None:
        super().__init__(settings)
        self.answer = answer
        self.pushed: list[Mapping[str, Any]] = []

    def push(self, node: KibanaNode, body: Mapping[str, Any]) -> PushResult:
        self.pushed.append(body)
        return self.answer(body)


#: How the scripted Kibana node answers a push (its body).
Answerer = Callable[[Mapping[str, Any]], PushResult]


def accepted(_body: Mapping[str, Any]) -> PushResult:
    return PushResult(PushOutcome.ACCEPTED, "204", 204)


def stub_runtime(engine: StubEngine, answer: Answerer = accepted, **settings: Any) -> Runtime:
    """A Runtime on the stub engine, fakeredis and a scripted Kibana node ``kibana:a``."""
    node = KibanaNode(url=URL, id=OWNER)
    base = replace(Settings(), kibana=KibanaSettings(hosts=(node,)), **settings)
    client = fakeredis.FakeRedis()
    kibana = ScriptedKibana(base.kibana, answer)
    Ledger(client).mark_built(datetime.now(UTC))  # as after the first cycle: no rebuild first
    return Runtime(
        settings=base,
        store=TaskStore(engine, INDEX),  # type: ignore[arg-type]
        redis=client,
        ledger=Ledger(client),
        nodes=NodeRegistry(base, client, kibana),
        kibana=kibana,
        rng=random.Random(7),
    )


class MakeRuntime(Protocol):
    """The ``make_runtime`` fixture (conftest.py): ``stub_runtime`` on the test's ``engine`` (or the one
    given), closed after the test."""

    def __call__(
        self, answer: Answerer = accepted, *, engine: StubEngine | None = None, **settings: Any
    ) -> Runtime: ...

"""Fixtures of the unit tests: the stub engine, a Runtime on it (closed after the test), a push pool."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from elastask.runtime import Runtime
from tests.unit.stubs import Answerer, MakeRuntime, StubEngine, accepted, stub_runtime


@pytest.fixture
def engine() -> StubEngine:
    """The test's stub engine (empty)."""
    return StubEngine()


@pytest.fixture
def make_runtime(engine: StubEngine) -> Iterator[MakeRuntime]:
    """``stub_runtime`` on the test's engine (or the one given); every Runtime made is closed after the test."""
    made: list[Runtime] = []
    tests_engine = engine

    def make(answer: Answerer = accepted, *, engine: StubEngine | None = None, **settings: Any) -> Runtime:
        rt = stub_runtime(engine if engine is not None else tests_engine, answer, **settings)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def rt(make_runtime: MakeRuntime) -> Runtime:
    """A Runtime on the test's engine whose Kibana node accepts every push."""
    return make_runtime()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """The threads a dispatch job pushes on."""
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor

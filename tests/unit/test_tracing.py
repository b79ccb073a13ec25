"""Traces: a span per claim cycle and per push, the push's parent the task's traceparent; off, no import."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from elastask import tracing
from elastask.core.documents import new_task
from elastask.core.messages import DispatchJob
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.parts.kibana import PushOutcome, PushResult
from tests.unit.helpers import NOW
from tests.unit.stubs import MakeRuntime, StubEngine

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def tracer_to(exporter: InMemorySpanExporter) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("elastask")


def test_a_claim_cycle_and_each_push_are_spans_and_a_push_is_a_child_of_the_tasks_traceparent(
    engine: StubEngine, make_runtime: MakeRuntime, spans: InMemorySpanExporter
) -> None:
    doc = new_task("traced", "sample", now=NOW - timedelta(seconds=5))
    source = doc.to_source()
    source["task"]["traceparent"] = f"00-{TRACE_ID}-{PARENT_ID}-01"
    engine.put(doc.id, source)
    sent: list[Mapping[str, Any]] = []

    def kibana(body: Mapping[str, Any]) -> PushResult:
        sent.append(body)
        return PushResult(PushOutcome.ACCEPTED, "204", 204)

    rt = make_runtime(kibana)
    rt.tracer = tracer_to(spans)
    jobs: list[DispatchJob] = []
    claim_available_tasks(rt, NOW, jobs.append, sessions=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job in jobs:
            push_claimed_tasks(rt, job, NOW, pool)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert by_name["elastask.claim_cycle"].attributes["elastask.claimed"] == 1
    push = by_name["elastask.push"]
    assert push.parent is not None
    assert (f"{push.context.trace_id:032x}", f"{push.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
    assert push.attributes["elastask.task_id"] == "task:traced" and push.attributes["elastask.outcome"] == "accepted"
    # Kibana gets the push span as the parent of its run.
    assert sent[0]["traceparent"] == f"00-{TRACE_ID}-{push.context.span_id:016x}-01"


def test_with_tracing_off_nothing_of_opentelemetry_is_imported() -> None:
    # elastask imports none of it (no SDK, exporter or propagator); the Elasticsearch client imports the
    # bare API (opentelemetry.trace) by itself whenever the package is installed, tracing on or not.
    program = (
        "import sys, elastask.entry.tasks\n"
        "from elastask import tracing\n"
        "from elastask.runtime import Runtime\n"
        "assert tracing.from_environment() is None\n"
        "with tracing.span(None, 'x') as s: assert s is None\n"
        "assert tracing.current_traceparent(None) is None\n"
        "ours = ('opentelemetry.sdk', 'opentelemetry.exporter', 'opentelemetry.propagate')\n"
        "print(sorted(m for m in sys.modules if m.startswith(ours)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_standard_variables_decide() -> None:
    assert not tracing.enabled_by_environment({})
    assert tracing.enabled_by_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.enabled_by_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled_by_environment({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})

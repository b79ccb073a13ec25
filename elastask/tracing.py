"""Optional traces (OpenTelemetry): a span per claim cycle and per push, a push's parent the task's own.

Off unless the ``tracing`` extra is installed and the standard variables ask for traces:
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP), or
``OTEL_TRACES_EXPORTER=console``; the service is ``OTEL_SERVICE_NAME`` (default ``elastask``). Off,
nothing of OpenTelemetry is imported. A push's span takes the task's ``traceparent`` as its parent,
and Kibana gets the push span's own ``traceparent``, so a trace shows elastask's push above Kibana's run.

The tracer is the runtime's (``Runtime.tracer``: ``from_environment()`` when a process builds its
runtime; a test or an application that embeds elastask sets its own), None while tracing is off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def enabled_by_environment(env: Mapping[str, str] | None = None) -> bool:
    """True when the standard OTEL_* variables ask for traces."""
    env = os.environ if env is None else env
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    return exporter != "none" and bool(endpoint or exporter)


def from_environment() -> Any:
    """The tracer the standard variables ask for, or None (tracing off)."""
    return _setup() if enabled_by_environment() else None


def _setup() -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        log.warning("OTEL_* asks for traces but the tracing extra is missing (pip install 'elastask[tracing]'): %s", e)
        return None
    exporter: Any
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # its endpoint and headers from the OTEL_EXPORTER_OTLP_* variables
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "elastask")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer("elastask")


@contextmanager
def span(
    tracer: Any, name: str, *, traceparent: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A span of ``tracer`` (None while tracing is off), a child of ``traceparent`` when one is given."""
    if tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract

    context = extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, attributes=dict(attributes or {})) as current:
        yield current


def current_traceparent(tracer: Any) -> str | None:
    """The W3C ``traceparent`` of the current span (to hand to Kibana), or None while tracing is off."""
    if tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")

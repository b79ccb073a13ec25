"""Optional traces (OpenTelemetry): a span per claim cycle and per push, a push's parent the task's own.

Off unless the ``tracing`` extra is installed and the standard variables ask for traces:
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP), or
``OTEL_TRACES_EXPORTER=console``; the service is ``OTEL_SERVICE_NAME`` (default ``elastask``). Off,
nothing of OpenTelemetry is imported. A push's span takes the task's ``traceparent`` as its parent,
and Kibana gets the push span's own ``traceparent``, so a trace shows elastask's push above Kibana's run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"checked": False, "tracer": None}


def enabled_by_environment(env: Mapping[str, str] | None = None) -> bool:
    """True when the standard OTEL_* variables ask for traces."""
    env = os.environ if env is None else env
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    return exporter != "none" and bool(endpoint or exporter)


def _tracer() -> Any:
    if _state["checked"]:
        return _state["tracer"]
    with _lock:
        if not _state["checked"]:
            _state["tracer"] = _setup() if enabled_by_environment() else None
            _state["checked"] = True
    return _state["tracer"]


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


def use_provider(provider: Any) -> None:
    """Trace to a provider of one's own (a test's in-memory exporter, an application that embeds elastask)."""
    with _lock:
        _state["tracer"] = None if provider is None else provider.get_tracer("elastask")
        _state["checked"] = True


@contextmanager
def span(name: str, *, traceparent: str | None = None, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span (None while tracing is off), a child of ``traceparent`` when one is given."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract

    context = extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, attributes=dict(attributes or {})) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (to hand to Kibana), or None while tracing is off."""
    if _tracer() is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")

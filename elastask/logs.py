"""Logging: readable lines by default, or one JSON object per line (``log_format: json``) with the
task id and ownerId being worked on bound as context."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("elastask_log_context", default=None)


@contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Attach fields (e.g. task_id, owner_id) to every log record made inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.task_id`` ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            setattr(record, key, value)
        record.elastask_context = dict(_context.get() or {})
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            **getattr(record, "elastask_context", {}),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


#: Client libraries that log every request at INFO: thousands of lines a second under load.
QUIET_LOGGERS = ("elastic_transport.transport", "urllib3.connectionpool")


def configure(root: logging.Logger, log_format: str) -> None:
    """Install the context filter on every handler, and the JSON formatter when asked for.

    The engine client's per-request lines are kept to warnings; a worker run with ``-l debug`` shows them.
    """
    if root.getEffectiveLevel() > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())

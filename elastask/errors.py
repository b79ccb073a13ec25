"""One exception hierarchy for elastask; callers branch on the class, never on the message."""

from __future__ import annotations

from typing import Any


class ElastaskError(Exception):
    """Base of every error elastask raises on purpose."""


class ConfigError(ElastaskError):
    """The configuration is wrong (file, key or value): final until a person fixes it."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}")


class DocumentError(ElastaskError):
    """A task document is malformed: final for that document, which is skipped and reported."""

    def __init__(self, doc_id: str, field: str, problem: str, raw: Any = None) -> None:
        self.doc_id = doc_id
        self.field = field
        self.problem = problem
        self.raw = raw
        super().__init__(f"task document {doc_id!r}: field {field!r}: {problem}")


class StoreError(ElastaskError):
    """The search engine failed or could not be reached: retryable on the next cycle.

    ``status``: the HTTP status the engine answered the whole request with, or None when no answer
    came (unreachable, timed out, connection lost): then a write may or may not have applied.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ConflictError(StoreError):
    """A conditional write lost its race (HTTP 409): the document changed since it was read."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        super().__init__(f"task document {doc_id!r} changed since it was read (version conflict)", 409)


class DocumentMissingError(StoreError):
    """The document is gone (HTTP 404): Kibana finished or removed the task."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        super().__init__(f"task document {doc_id!r} not found", 404)


class TaskIndexError(StoreError):
    """The task index is missing or its mapping lacks fields elastask queries: final until fixed."""


class LedgerError(ElastaskError):
    """Redis, which holds the in-flight ledger, failed or could not be reached: retryable."""


class PushMarkersUnknown(LedgerError):
    """A dispatch job's push-marker write failed and may have applied: nothing of the job was pushed, and
    a retry of it under ``token`` (``DispatchJob.retried_after``) takes the markers set as its own."""

    def __init__(self, message: str, token: str) -> None:
        self.token = token
        super().__init__(message)

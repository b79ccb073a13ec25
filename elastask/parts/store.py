"""The search engine: the task index, read and written with conditional writes only.

One module over 300 lines: every engine call elastask makes is here (so every one maps its errors to
StoreError the same way and none writes without a version), the client's construction included.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import Elasticsearch

from elastask.config import ElasticsearchSettings
from elastask.core import mapping
from elastask.core.documents import TaskDocument, parse_hit
from elastask.errors import ConflictError, DocumentMissingError, StoreError, TaskIndexError

log = logging.getLogger(__name__)


def build_client(settings: ElasticsearchSettings) -> Elasticsearch:
    """The one Elasticsearch client of a process, from the ``elasticsearch.*`` settings."""
    options: dict[str, Any] = {
        "request_timeout": settings.request_timeout_s,
        "retry_on_timeout": False,  # a claim must never be sent twice behind our back
        "max_retries": 0,
    }
    if settings.api_key is not None:
        options["api_key"] = settings.api_key.reveal()
    elif settings.username is not None:
        password = settings.password.reveal() if settings.password is not None else ""
        options["basic_auth"] = (settings.username, password)
    if settings.host.startswith("https"):
        options["verify_certs"] = settings.verify_certs
        if settings.ca_certs:
            options["ca_certs"] = settings.ca_certs
        if not settings.verify_certs:
            options["ssl_show_warn"] = False
    return Elasticsearch(settings.host, **options)


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Map the client's transport errors to StoreError, naming what was being done."""
    try:
        yield
    except elasticsearch.ApiError as e:
        if e.meta.status in (404, 409):
            raise  # callers map these to DocumentMissingError / ConflictError
        raise StoreError(f"{what}: the search engine answered {e.meta.status} ({_reason(e)})", e.meta.status) from e
    except elasticsearch.TransportError as e:
        raise StoreError(f"{what}: the search engine could not be reached ({type(e).__name__}: {e})") from e


def _reason(error: elasticsearch.ApiError) -> str:
    body = error.body if isinstance(error.body, Mapping) else {}
    inner = body.get("error", {})
    if isinstance(inner, Mapping):
        return str(inner.get("reason") or inner.get("type") or error.message)
    return str(inner or error.message)


class TaskStore:
    """Reads and conditionally writes task documents of one index (or alias)."""

    def __init__(self, client: Elasticsearch, index: str) -> None:
        self.client = client
        self.index = index

    # ---- single documents ------------------------------------------------------------------------

    def get(self, doc_id: str) -> TaskDocument:
        """One task document with its version; DocumentMissingError if it is gone."""
        try:
            with engine_errors(f"reading {doc_id!r} from {self.index}"):
                hit = self.client.get(index=self.index, id=doc_id)
        except elasticsearch.NotFoundError as e:
            raise DocumentMissingError(doc_id) from e
        return parse_hit(dict(hit))

    def create(self, doc: TaskDocument, *, refresh: bool = False) -> TaskDocument:
        """Index a new task document (fails with ConflictError if the id exists)."""
        try:
            with engine_errors(f"creating {doc.id!r} in {self.index}"):
                answer = self.client.create(
                    index=self.index, id=doc.id, document=doc.to_source(), refresh=refresh or None
                )
        except elasticsearch.ConflictError as e:
            raise ConflictError(doc.id) from e
        return doc.with_changes(seq_no=answer["_seq_no"], primary_term=answer["_primary_term"])

    def update_task(self, doc: TaskDocument, task_fields: Mapping[str, Any], *, refresh: bool = False) -> TaskDocument:
        """Partially update ``task.*`` only if the document is still at the version ``doc`` was read at."""
        if doc.seq_no is None or doc.primary_term is None:
            raise ValueError(f"task document {doc.id!r} has no version; read it before writing it")
        seq_no, primary_term = self.update_if_unchanged(
            doc.id, doc.seq_no, doc.primary_term, task_fields, refresh=refresh
        )
        return doc.with_changes(seq_no=seq_no, primary_term=primary_term)

    def update_if_unchanged(
        self, doc_id: str, seq_no: int, primary_term: int, task_fields: Mapping[str, Any], *, refresh: bool = False
    ) -> tuple[int, int]:
        """Partially update ``task.*`` if the document is at (seq_no, primary_term); the new version.

        Raises ConflictError (it changed: a lost race) or DocumentMissingError (it is gone).
        """
        try:
            with engine_errors(f"updating {doc_id!r} in {self.index}"):
                answer = self.client.update(
                    index=self.index,
                    id=doc_id,
                    doc={"task": dict(task_fields)},
                    if_seq_no=seq_no,
                    if_primary_term=primary_term,
                    refresh=refresh or None,
                )
        except elasticsearch.ConflictError as e:
            raise ConflictError(doc_id) from e
        except elasticsearch.NotFoundError as e:
            raise DocumentMissingError(doc_id) from e
        return int(answer["_seq_no"]), int(answer["_primary_term"])

    def raw(self, doc_id: str) -> dict[str, Any]:
        """One document as the engine returns it (``_source``, ``_seq_no``...); DocumentMissingError if gone."""
        try:
            with engine_errors(f"reading {doc_id!r} from {self.index}"):
                return dict(self.client.get(index=self.index, id=doc_id))
        except elasticsearch.NotFoundError as e:
            raise DocumentMissingError(doc_id) from e

    def count(self, query: Mapping[str, Any], what: str) -> int:
        """How many documents of the index match ``query``."""
        with engine_errors(what):
            return int(self.client.count(index=self.index, query=dict(query))["count"])

    def info(self) -> dict[str, Any]:
        """The engine's ``GET /`` answer (name, version); raises the client's errors (``elastask check`` names them)."""
        return dict(self.client.info())

    def refresh(self) -> None:
        """Make every write so far visible to search (tests and tools only)."""
        with engine_errors(f"refreshing {self.index}"):
            self.client.indices.refresh(index=self.index)

    # ---- the index itself --------------------------------------------------------------------

    def bootstrap(self) -> bool:
        """Create the index behind the alias with Kibana's mapping, for dev and test; False if it exists."""
        with engine_errors(f"checking {self.index}"):
            if self.client.indices.exists(index=self.index):
                return False
        physical = self.index + mapping.INDEX_SUFFIX
        try:
            with engine_errors(f"creating {physical}"), warnings.catch_warnings():
                # Kibana's own index names start with a dot; the engine warns about that, and we know.
                warnings.simplefilter("ignore", elasticsearch.ElasticsearchWarning)
                self.client.indices.create(
                    index=physical,
                    mappings=mapping.MAPPINGS,
                    settings={"number_of_shards": 1, "auto_expand_replicas": "0-1", "refresh_interval": "1s"},
                    aliases={self.index: {"is_write_index": True}},
                )
        except elasticsearch.BadRequestError as e:
            if "already_exists" in str(e):  # another process bootstrapped it first
                return False
            raise StoreError(f"creating {physical}: {_reason(e)}") from e
        log.info("created index %r behind alias %r with Kibana's task mapping", physical, self.index)
        return True

    def check_index(self) -> list[str]:
        """Raise TaskIndexError if the index is missing; return a warning per unindexed queried field."""
        try:
            with engine_errors(f"reading the mapping of {self.index}"):
                answer = self.client.indices.get_mapping(index=self.index)
        except elasticsearch.NotFoundError as e:
            raise TaskIndexError(
                f"index or alias {self.index!r} does not exist: start Kibana once so it creates it, "
                f"or run 'elastask index create' for a dev/test cluster"
            ) from e
        warnings = []
        for physical, body in dict(answer).items():
            for field in mapping.missing_fields(body.get("mappings", {})):
                warnings.append(
                    f"index {physical!r}: mapping does not index {field!r}, which elastask queries; "
                    f"tasks may be missed. Is this Kibana's task index?"
                )
        return warnings

    def search_hits(self, body: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
        """The hits of one search on the task index."""
        return [dict(hit) for hit in self.search(body, what)["hits"]["hits"]]

    def search(self, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        """One search on the task index: the whole answer (hits and aggregations)."""
        with engine_errors(what):
            answer = self.client.search(index=self.index, body=dict(body))
        return dict(answer.body)

    def bulk_update_tasks(
        self, updates: Sequence[tuple[TaskDocument, Mapping[str, Any]]], *, refresh: bool = False
    ) -> list[WriteResult]:
        """Partial ``task.*`` updates, each conditional on the version its document was read at (one request)."""
        versioned = []
        for doc, fields in updates:
            if doc.seq_no is None or doc.primary_term is None:
                raise ValueError(f"task document {doc.id!r} has no version; read it before writing it")
            versioned.append(VersionedUpdate(doc.id, doc.seq_no, doc.primary_term, fields))
        return self.bulk_update_versions(versioned, refresh=refresh)

    def bulk_update_versions(self, updates: Sequence[VersionedUpdate], *, refresh: bool = False) -> list[WriteResult]:
        """Conditional partial updates in one ``_bulk`` request; one result per update, in order."""
        if not updates:
            return []
        operations: list[dict[str, Any]] = []
        for update in updates:
            operations.append(
                {"update": {"_id": update.doc_id, "if_seq_no": update.seq_no, "if_primary_term": update.primary_term}}
            )
            operations.append({"doc": {"task": dict(update.fields)}})
        with engine_errors(f"bulk update of {len(updates)} task(s) in {self.index}"):
            answer = self.client.bulk(index=self.index, operations=operations, refresh=refresh or None)
        return _bulk_results(answer.body)

    def mget_sources(
        self, ids: Sequence[str], *, fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """Real-time reads of several documents: id -> hit (with version), or None if it is gone.

        An id whose read failed (an error item: shard unavailable) is left out: unknown, never "gone".

        ``fields``: only these source fields (e.g. ``task.status``), for reads that need a few; ``()``:
        no source at all, only whether each document exists and its version (``_seq_no``,
        ``_primary_term``) -- the cheapest read the engine serves.
        """
        if not ids:
            return {}
        options: dict[str, Any] = {}
        if fields == ():
            options["source"] = False
        elif fields is not None:
            options["source_includes"] = list(fields)
        with engine_errors(f"reading {len(ids)} task(s) from {self.index}"):
            answer = self.client.mget(index=self.index, ids=list(ids), **options)
        result: dict[str, dict[str, Any] | None] = {}
        for doc in answer["docs"]:
            if "error" in doc:
                # A shard relocating or unavailable: the document's state is unknown, not "deleted".
                log.warning("reading %r from %s: %s; left out of this cycle", doc.get("_id"), self.index, doc["error"])
                continue
            result[str(doc["_id"])] = dict(doc) if doc.get("found") else None
        return result

    def close(self) -> None:
        """Close the engine client's connections."""
        self.client.close()


class WriteResult:
    """Outcome of one conditional write in a bulk request."""

    __slots__ = ("doc_id", "error", "primary_term", "seq_no", "status")

    def __init__(self, doc_id: str, status: int, seq_no: int | None, primary_term: int | None, error: str) -> None:
        self.doc_id = doc_id
        self.status = status
        self.seq_no = seq_no
        self.primary_term = primary_term
        self.error = error

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def missing(self) -> bool:
        return self.status == 404


def _bulk_results(answer: Mapping[str, Any]) -> list[WriteResult]:
    results = []
    for item in answer.get("items", []):
        (_action, body), *_ = item.items()
        error = body.get("error")
        reason = error.get("reason", str(error)) if isinstance(error, Mapping) else str(error or "")
        results.append(
            WriteResult(
                str(body.get("_id")), int(body.get("status", 0)), body.get("_seq_no"), body.get("_primary_term"), reason
            )
        )
    return results


@dataclass(frozen=True)
class VersionedUpdate:
    """A partial ``task.*`` update that applies only if the document is still at this version."""

    doc_id: str
    seq_no: int
    primary_term: int
    fields: Mapping[str, Any]

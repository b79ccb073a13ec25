"""A stub search engine: documents with versions, conditional writes and real-time reads, in memory.

For the fast tests of the loops' rules (tests/unit) and the deterministic simulation (simulation/):
it answers the query DSL the loops use, honours ``if_seq_no``/``if_primary_term`` on every update,
and its clock (date math) is the caller's. Races and faults on the real engine: tests/integration.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import elasticsearch
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig


class Answer(dict[str, Any]):
    """What the elasticsearch client returns: a mapping with ``.body``."""

    @property
    def body(self) -> dict[str, Any]:
        return dict(self)


class _StubIndices:
    """``client.indices``: a refresh changes nothing (every write is visible at once here)."""

    def refresh(self, *, index: str) -> Answer:
        return Answer()


class StubEngine:
    """Documents with versions; ``bulk`` updates honour ``if_seq_no``; ``mget`` may answer error items."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        #: The engine's clock, for date math ("now-5m"): the simulation's virtual time there.
        self.clock = clock
        self.indices = _StubIndices()
        self.docs: dict[str, dict[str, Any]] = {}
        self.seq_no = 0
        self.mget_errors: set[str] = set()  # ids whose mget item is an error (shard unavailable)
        self.mget_calls: list[tuple[list[str], bool]] = []  # (ids, versions only) per mget
        self.writes: list[dict[str, Any]] = []
        self.before_bulk: Callable[[], None] | None = None  # runs once, before the next bulk applies
        #: Runs after every write that applied, before it answers (the simulation's interleavings and faults).
        self.after_write: Callable[[], None] | None = None
        #: Runs after every real-time read, before it answers (the simulation's interleavings).
        self.after_read: Callable[[], None] | None = None

    def search(self, *, index: str, body: Mapping[str, Any]) -> Answer:
        """The query DSL the loops use (bool, term, terms, range, exists, ids), sorted by runAt or retryAt."""
        matches_query = _compile(body["query"], self.clock())
        matches = [doc_id for doc_id, doc in self.docs.items() if matches_query(doc_id, doc["_source"])]
        sort_field = "retryAt" if "retryAt" in json.dumps(body.get("sort", [])) else "runAt"
        matches.sort(key=lambda d: str(self.docs[d]["_source"].get("task", {}).get(sort_field) or ""))
        first = (body.get("sort") or [{}])[0]
        if "_script" in first or "task.priority" in first:
            matches.sort(key=lambda d: -_priority_of(self.docs[d]["_source"].get("task", {}), first))
        hits: list[dict[str, Any]] = [
            {"_id": d, "_seq_no": self.docs[d]["_seq_no"], "_primary_term": 1} for d in matches[: body.get("size", 10)]
        ]
        if body.get("_source", True) is not False:  # a copy, as the engine's answer is
            for hit in hits:
                hit["_source"] = json.loads(json.dumps(self.docs[hit["_id"]]["_source"]))
        aggregations = {
            name: {"buckets": _terms_buckets([self.docs[d]["_source"] for d in matches], agg["terms"]["field"])}
            for name, agg in body.get("aggs", {}).items()
            if "terms" in agg
        }
        return Answer(hits={"hits": hits}, aggregations=aggregations)

    def get(self, *, index: str, id: str) -> Answer:
        doc = self.docs[id]
        return Answer(_id=id, found=True, **doc)

    def put(self, doc_id: str, source: dict[str, Any]) -> int:
        """Index a document (a new version); returns its seq_no."""
        self.seq_no += 1
        self.docs[doc_id] = {"_source": source, "_seq_no": self.seq_no, "_primary_term": 1}
        return self.seq_no

    def bulk(self, *, index: str, operations: Sequence[Mapping[str, Any]], refresh: Any = None) -> Answer:
        hook, self.before_bulk = self.before_bulk, None
        if hook is not None:
            hook()
        items = []
        for action, body in zip(operations[::2], operations[1::2], strict=True):
            meta = action["update"]
            doc_id = meta["_id"]
            current = self.docs.get(doc_id)
            if current is None:
                items.append({"update": {"_id": doc_id, "status": 404, "error": {"reason": "document missing"}}})
            elif (current["_seq_no"], current["_primary_term"]) != (meta["if_seq_no"], meta["if_primary_term"]):
                items.append({"update": {"_id": doc_id, "status": 409, "error": {"reason": "version conflict"}}})
            else:
                task = {**current["_source"]["task"], **body["doc"]["task"]}
                seq_no = self.put(doc_id, {**current["_source"], "task": task})
                self.writes.append({"_id": doc_id, **body["doc"]["task"]})
                items.append({"update": {"_id": doc_id, "status": 200, "_seq_no": seq_no, "_primary_term": 1}})
        if self.after_write is not None and any(i["update"]["status"] == 200 for i in items):
            self.after_write()
        return Answer(items=items, errors=any(i["update"]["status"] >= 300 for i in items))

    def update(
        self, *, index: str, id: str, doc: Mapping[str, Any], if_seq_no: int, if_primary_term: int, refresh: Any = None
    ) -> Answer:
        """A conditional partial update (``task.*``); a stale version is a 409, as the engine answers."""
        current = self.docs.get(id)
        if current is None or (current["_seq_no"], current["_primary_term"]) != (if_seq_no, if_primary_term):
            status = 404 if current is None else 409
            meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "stub", 9200))
            error = elasticsearch.NotFoundError if current is None else elasticsearch.ConflictError
            raise error(f"stub engine: {status}", meta, {})
        seq_no = self.put(id, {**current["_source"], "task": {**current["_source"]["task"], **doc["task"]}})
        self.writes.append({"_id": id, **doc["task"]})
        if self.after_write is not None:
            self.after_write()
        return Answer(_id=id, _seq_no=seq_no, _primary_term=1, result="updated")

    def mget(self, *, index: str, ids: Sequence[str], source_includes: Any = None, source: Any = None) -> Answer:
        self.mget_calls.append((list(ids), source is False))
        docs: list[dict[str, Any]] = []
        for doc_id in ids:
            if doc_id in self.mget_errors:
                docs.append({"_id": doc_id, "error": {"type": "no_shard_available_action_exception"}})
            elif doc_id in self.docs:
                doc = {k: v for k, v in self.docs[doc_id].items() if not (source is False and k == "_source")}
                docs.append({"_id": doc_id, "found": True, **doc})
            else:
                docs.append({"_id": doc_id, "found": False})
        if self.after_read is not None:
            self.after_read()
        return Answer(docs=docs)

    def close(self) -> None:
        pass


def _terms_buckets(sources: Sequence[Mapping[str, Any]], path: str) -> list[dict[str, Any]]:
    """A ``terms`` aggregation's buckets over the matching documents, most frequent first."""
    counts: dict[Any, int] = {}
    field_of = _getter(path)
    for source in sources:
        value = field_of(source)
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return [{"key": k, "doc_count": n} for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _date(text: str, now: datetime) -> datetime:
    if text.startswith("now"):
        # Date math as the engine parses it: units y M w d h H m s only ("ms" is a 400 there).
        match = re.fullmatch(r"now(?:([+-])(\d+)([yMwdhHms]))?", text)
        if match is None or text.endswith("ms"):
            raise ValueError(f"stub engine: date math {text!r} would be refused by the engine")
        sign, amount, unit = match.groups()
        if sign is None:
            return now
        seconds = int(amount) * {"s": 1, "m": 60, "h": 3600, "H": 3600, "d": 86400}[unit]
        return now + timedelta(seconds=-seconds if sign == "-" else seconds)
    return _iso(text)


@functools.lru_cache(maxsize=1 << 16)
def _iso(text: str) -> datetime:
    # The engine's own date parsing: any year (elastask's parse_date refuses dates it cannot add to).
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _priority_of(task: Mapping[str, Any], sort: Mapping[str, Any]) -> int:
    """The claim sort's priority of one task: queries.PRIORITY_SCRIPT's rule, or the plain field sort's."""
    if task.get("priority") is not None:
        return int(task["priority"])
    if "_script" not in sort:
        return int(sort["task.priority"]["missing"])
    params = sort["_script"]["script"]["params"]
    task_type = str(task.get("taskType") or "")
    if task_type in params["exact"]:
        return int(params["exact"][task_type])
    for prefix, priority in params["prefixes"]:
        if task_type.startswith(prefix):
            return int(priority)
    return int(params["fallback"])


Predicate = Callable[[str, Mapping[str, Any]], bool]


def _compile(query: Mapping[str, Any], now: datetime) -> Predicate:
    """``query`` as a predicate over (id, source), read once per search (bool, ids, term(s), prefix, exists, range)."""
    (kind, spec), *_ = query.items()
    if kind == "bool":
        required = [_compile(q, now) for q in spec.get("filter", []) + spec.get("must", [])]
        excluded = [_compile(q, now) for q in spec.get("must_not", [])]
        should = [_compile(q, now) for q in spec.get("should", [])]
        needed = spec.get("minimum_should_match", 1 if should and not spec.get("filter") else 0)

        def matches_bool(doc_id: str, source: Mapping[str, Any]) -> bool:
            return (
                all(q(doc_id, source) for q in required)
                and not any(q(doc_id, source) for q in excluded)
                and (needed == 0 or sum(q(doc_id, source) for q in should) >= needed)
            )

        return matches_bool
    if kind == "ids":
        ids = set(spec["values"])
        return lambda doc_id, source: doc_id in ids
    if kind == "exists":
        field_of = _getter(spec["field"])
        return lambda doc_id, source: field_of(source) is not None
    if kind not in ("term", "terms", "prefix", "range"):

        def refused(doc_id: str, source: Mapping[str, Any]) -> bool:
            raise NotImplementedError(f"stub engine: query {kind!r}")

        return refused
    (path, value), *_ = spec.items()
    field_of = _getter(path)
    if kind == "term":
        return lambda doc_id, source: bool(field_of(source) == value)
    if kind == "terms":
        return lambda doc_id, source: field_of(source) in value
    if kind == "prefix":
        return lambda doc_id, source: isinstance(actual := field_of(source), str) and actual.startswith(value)
    checks = [(_COMPARE[op], bound) for op, bound in value.items()]
    dated_checks: list[tuple[Callable[[Any, Any], bool], datetime]] = []

    def in_range(doc_id: str, source: Mapping[str, Any]) -> bool:
        actual = field_of(source)
        if actual is None:
            return False
        if isinstance(actual, str):  # a date: compared as the engine does, date math on its clock
            if not dated_checks:
                dated_checks.extend((compare, _date(bound, now)) for compare, bound in checks)
            left = _date(actual, now)
            return all(compare(left, bound) for compare, bound in dated_checks)
        return all(compare(actual, bound) for compare, bound in checks)

    return in_range


def _getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    parts = path.split(".")

    def field_of(source: Mapping[str, Any]) -> Any:
        value: Any = source
        for part in parts:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    return field_of

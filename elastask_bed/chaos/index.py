"""The harness's own way to the task index: straight to the engine, past the proxy and its faults.

Tasks are created and the final state read here, so an engine fault injected for elastask never
stops the workload or falsifies the checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import requests

from elastask.core.documents import TaskDocument
from elastask_bed.testbed.bed import INDEX


class TaskIndex:
    """The task index on the engine itself (plain REST: OpenSearch speaks it without the proxy)."""

    def __init__(self, engine_url: str, index: str = INDEX) -> None:
        self.url = f"{engine_url.rstrip('/')}/{quote(index, safe='')}"
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _post(self, path: str, body: Any, *, ndjson: bool = False, timeout_s: float = 60) -> dict[str, Any]:
        headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
        data = body if ndjson else json.dumps(body)
        answer = self.session.post(f"{self.url}/{path}", data=data, headers=headers, timeout=timeout_s)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def create(self, docs: Sequence[TaskDocument], *, refresh: bool = False) -> None:
        """Index new task documents as Kibana's ``schedule`` would (``create``: never over an existing one)."""
        lines = []
        for doc in docs:
            lines += [json.dumps({"create": {"_id": doc.id}}), json.dumps(doc.to_source())]
        answer = self._post(f"_bulk?refresh={'true' if refresh else 'false'}", "\n".join(lines) + "\n", ndjson=True)
        if answer.get("errors"):
            failed = [item for item in answer["items"] if "error" in next(iter(item.values()))]
            raise RuntimeError(f"creating {len(failed)} task(s) failed, first: {failed[:1]}")

    def clear(self) -> None:
        """Delete every document (a shared test bed starts the run empty)."""
        # Refreshed first: a document written since the last refresh would be a version conflict, kept.
        self._post("_refresh", {})
        self._post("_delete_by_query?refresh=true&conflicts=proceed", {"query": {"match_all": {}}}, timeout_s=120)

    def statuses(self, ids: Sequence[str]) -> dict[str, str | None]:
        """Each document's ``task.status`` (real time), None for a document that is gone."""
        states: dict[str, str | None] = {}
        for start in range(0, len(ids), 1000):
            docs = self._post("_mget?_source_includes=task.status", {"ids": list(ids[start : start + 1000])})["docs"]
            for doc in docs:
                states[doc["_id"]] = doc["_source"]["task"].get("status") if doc.get("found") else None
        return states

    def stuck(self, grace_s: int) -> list[str]:
        """Tasks still ``running``/``claiming`` more than ``grace_s`` after their retryAt (engine clock)."""
        self._post("_refresh", {})
        query = {
            "bool": {
                "filter": [
                    {"term": {"type": "task"}},
                    {"terms": {"task.status": ["running", "claiming"]}},
                    {"range": {"task.retryAt": {"lt": f"now-{grace_s}s"}}},
                ]
            }
        }
        hits = self._post("_search", {"query": query, "size": 100, "_source": ["task.status", "task.retryAt"]})
        return [f"{h['_id']} ({h['_source']['task']})" for h in hits["hits"]["hits"]]

    def held_longer_than(self, task_type: str, seconds: int, timeout_s: int) -> list[str]:
        """Tasks of ``task_type`` still ``running``/``claiming`` from a claim over ``seconds`` old (engine clock).

        Kibana's mapping leaves ``startedAt`` out (``dynamic: false``): a claim's age is read from its lease,
        ``retryAt`` = the claim + the type's ``timeout_s`` + a slack of a few seconds (a little younger, then).
        """
        self._post("_refresh", {})
        query = {
            "bool": {
                "filter": [
                    {"term": {"type": "task"}},
                    {"term": {"task.taskType": task_type}},
                    {"terms": {"task.status": ["running", "claiming"]}},
                    {"range": {"task.retryAt": {"lt": f"now+{timeout_s - seconds}s"}}},
                ]
            }
        }
        hits = self._post("_search", {"query": query, "size": 100, "_source": False})
        return [str(h["_id"]) for h in hits["hits"]["hits"]]

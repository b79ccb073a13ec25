"""Engine load from the engine's own node statistics, not from elastask's counters."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineCounters:
    """Cumulative operation counts of the search engine (all nodes, all indices)."""

    search: int
    get: int
    index: int
    delete: int
    search_requests: int  # search thread-pool tasks completed: requests, not documents
    write_requests: int  # write thread-pool tasks completed (a bulk is one per shard)
    get_requests: int

    def minus(self, earlier: EngineCounters) -> EngineCounters:
        """The counts between ``earlier`` and this snapshot."""
        return EngineCounters(**{k: getattr(self, k) - getattr(earlier, k) for k in self.__dataclass_fields__})

    @property
    def operations(self) -> int:
        """Search queries + document gets + documents indexed or updated + documents deleted."""
        return self.search + self.get + self.index + self.delete

    @property
    def requests(self) -> int:
        """Requests the engine's search, get and write thread pools served."""
        return self.search_requests + self.write_requests + self.get_requests


def read_counters(engine_url: str) -> EngineCounters:
    """``GET _nodes/stats/indices,thread_pool`` summed over nodes."""
    url = f"{engine_url}/_nodes/stats/indices,thread_pool"
    with urllib.request.urlopen(url, timeout=30) as answer:
        nodes = json.load(answer)["nodes"]
    totals = dict.fromkeys(EngineCounters.__dataclass_fields__, 0)
    for node in nodes.values():
        indices, pools = node["indices"], node.get("thread_pool", {})
        totals["search"] += indices["search"]["query_total"]
        totals["get"] += indices["get"]["total"]
        totals["index"] += indices["indexing"]["index_total"]
        totals["delete"] += indices["indexing"]["delete_total"]
        totals["search_requests"] += pools.get("search", {}).get("completed", 0)
        totals["write_requests"] += pools.get("write", {}).get("completed", 0)
        totals["get_requests"] += pools.get("get", {}).get("completed", 0)
    return EngineCounters(**totals)

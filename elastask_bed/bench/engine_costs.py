"""What single engine requests cost the engine in CPU: the micro-benchmark behind two design choices.

Run against the test bed (the engine's own URL and process, from ``elastask testbed run``)::

    elastask testbed run --kibana-nodes 1 -- python -m elastask_bed.bench.engine_costs

It measures, on a warm engine (each kind repeated for several rounds; the last round is reported),
the engine's CPU (user + system of its process, from /proc) per request for:

- real-time ``mget`` of 20 task documents with a ``_source_includes`` filter (what lease reads
  used until 0.5), with the whole source, and with no source (versions only: what they use now);
- deleting a task document with a request of its own (how the simulator wrote a pushed run's
  outcome until 0.5) and deleting 20 in one ``_bulk`` (how Kibana's buffered task store writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import requests

from elastask_bed.bench.cpu import process_cpu_seconds

INDEX = "elastask-engine-costs"
DOCS = 30_000
ROUNDS = 4
REQUESTS = 200
FOUR_FIELDS = "task.ownerId,task.status,task.attempts,task.runAt"


def engine_pid() -> int:
    """The OpenSearch process the test bed started."""
    out = subprocess.run(["pgrep", "-f", "EngineLauncher"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> None:
    engine = os.environ["ELASTASK_TESTBED_ENGINE"]
    pid = engine_pid()
    http = requests.Session()
    http.delete(f"{engine}/{INDEX}")
    http.put(f"{engine}/{INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    task = {"taskType": "report", "status": "running", "runAt": "2026-01-01T00:00:00Z", "params": '{"a":1}'}
    doc = {"type": "task", "task": {**task, "state": "{}", "attempts": 1, "ownerId": "kibana:a", "scope": ["x"]}}
    ndjson = {"Content-Type": "application/x-ndjson"}
    for start in range(0, DOCS, 2000):
        lines = [x for i in range(start, start + 2000) for x in ({"index": {"_index": INDEX, "_id": f"t{i}"}}, doc)]
        http.post(f"{engine}/_bulk", data="\n".join(map(json.dumps, lines)) + "\n", headers=ndjson)
    http.post(f"{engine}/{INDEX}/_refresh")

    def mget(params: dict[str, str]) -> Callable[[int], object]:
        return lambda i: http.post(
            f"{engine}/{INDEX}/_mget", params=params, json={"ids": [f"t{(i * 20 + j) % 2000}" for j in range(20)]}
        )

    next_id = iter(range(2000, DOCS))

    def delete_one(_i: int) -> object:
        return http.delete(f"{engine}/{INDEX}/_doc/t{next(next_id)}")

    def bulk_delete(_i: int) -> object:
        lines = [json.dumps({"delete": {"_index": INDEX, "_id": f"t{next(next_id)}"}}) for _ in range(20)]
        return http.post(f"{engine}/_bulk", data="\n".join(lines) + "\n", headers=ndjson)

    kinds: list[tuple[str, int, Callable[[int], object]]] = [
        ("mget of 20, _source_includes of 4 fields", 20, mget({"_source_includes": FOUR_FIELDS})),
        ("mget of 20, whole _source", 20, mget({})),
        ("mget of 20, no _source (versions only)", 20, mget({"_source": "false"})),
        ("DELETE of one document, its own request", 1, delete_one),
        ("DELETE of 20 documents in one _bulk", 20, bulk_delete),
    ]
    print("| request | documents | engine CPU per request | per document |")
    print("|---|---|---|---|")
    for name, docs, call in kinds:
        per_request = 0.0
        for _ in range(ROUNDS):  # the engine's JIT compiles the new code path in the first rounds
            before = process_cpu_seconds(pid)
            for i in range(REQUESTS):
                call(i)
            per_request = (process_cpu_seconds(pid) - before) / REQUESTS * 1000
            time.sleep(0.5)
        print(f"| {name} | {docs} | {per_request:.2f} ms | {per_request / docs:.3f} ms |")
    http.delete(f"{engine}/{INDEX}")


if __name__ == "__main__":
    main()

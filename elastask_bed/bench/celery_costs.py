"""What one Celery job costs the dispatcher's processes in CPU, with nothing in it: the floor under a dispatch job.

Run on its own (it starts a redis-server of its own and a worker with elastask's Celery settings)::

    python -m elastask_bed.bench.celery_costs [JOBS]

It publishes JOBS no-op jobs carrying a dispatch job's arguments (a node's ten claimed tasks) with
``apply_async`` and one producer, as a claim cycle sends them, spread over 1 and then 10 queues (one per
node), to a worker started as ``celery worker`` with elastask's defaults (prefork, at least 4 processes,
late acknowledgement, prefetch 1, no events, no results). It reports the publishing process's CPU per job
and the worker's (main process and pool, from /proc) per job. A dispatch job in a 10-node backlog carries
~10 tasks, so a tenth of the sum is what the Celery hop alone costs per task there (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import redis
from celery import Celery

from elastask.entry import celery_defaults
from elastask_bed.bench.cpu import cpu_between, tree_cpu_seconds
from elastask_bed.testbed.redis_server import RedisServer

JOBS = 2000
SETTINGS = {
    name: getattr(celery_defaults, name)
    for name in (
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_concurrency",
        "worker_prefetch_multiplier",
        "task_ignore_result",
        "worker_send_task_events",
        "task_send_sent_event",
        "task_serializer",
        "accept_content",
        "worker_hijack_root_logger",
    )
}

MODULE = "elastask_bed.bench.celery_costs"  # not __name__: run with -m, that is "__main__"
app = Celery(MODULE, broker=os.environ.get("CELERY_COSTS_BROKER", "memory://"))
app.conf.update(SETTINGS, broker_transport_options={"visibility_timeout": 3600})


@app.task(name="celery_costs.noop")
def noop(_job: dict[str, Any]) -> None:
    """Nothing: the job's cost is Celery's own."""


def dispatch_like_job() -> dict[str, Any]:
    """The arguments of a dispatch job for one node with ten tasks (``DispatchJob.as_dict``'s fields)."""
    owner, url = "kibana:5b2de169-2785-441b-ae8c-186a1936b17d", "http://127.0.0.1:5601"
    body = {"taskType": "alerting:.index-threshold", "params": {"alertId": "a"}, "state": {}, "scope": ["alerting"]}
    task = {"owner_id": owner, "node_url": url, "seq_no": 1, "primary_term": 1, "attempts": 1, "lease_ms": 300_000}
    tasks = [
        {**task, "doc_id": f"task:{i:08d}", "retry_at": "2026-01-01T00:05:00.000Z", "body": body} for i in range(10)
    ]
    return {"owner_id": owner, "node_url": url, "tasks": tasks, "not_before": None}


def measure(broker: str, jobs: int, queues: int) -> tuple[float, float]:
    """(publishing CPU ms per job, worker CPU ms per job) for ``jobs`` no-op jobs over ``queues`` queues."""
    names = [f"node{i}" for i in range(queues)]
    env = {**os.environ, "CELERY_COSTS_BROKER": broker}
    argv = [sys.executable, "-m", "celery", "-A", MODULE, "worker", "-l", "warning", "-Q", ",".join(names)]
    with tempfile.TemporaryFile() as log:
        client = redis.Redis.from_url(broker)
        client.flushdb()
        worker = subprocess.Popen([*argv, "--without-gossip", "--without-mingle"], env=env, stdout=log, stderr=log)
        try:
            # The worker's start-up (imports, forks) is not counted: until it bound its queues, and a second.
            deadline = time.monotonic() + 60
            while not all(client.exists(f"_kombu.binding.{name}") for name in names):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start: {_tail(log)}")
                time.sleep(0.1)
            time.sleep(1)
            job = dispatch_like_job()
            before = tree_cpu_seconds([worker.pid])
            started = time.process_time()
            with app.producer_or_acquire() as producer:
                for i in range(jobs):
                    noop.apply_async(args=[job], queue=names[i % queues], producer=producer)
            publish_s = time.process_time() - started
            while any(client.llen(name) for name in names) or client.hlen("unacked"):
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode}): {_tail(log)}")
                time.sleep(0.1)
            time.sleep(0.5)  # the last acknowledgement
            worker_s = cpu_between(before, tree_cpu_seconds([worker.pid]))
        finally:
            worker.terminate()
            worker.wait(30)
    return 1000 * publish_s / jobs, 1000 * worker_s / jobs


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-2000:].decode(errors="replace")


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else JOBS
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        try:
            app.conf.broker_url = server.url
            print(f"{jobs} no-op jobs of a dispatch job's size, elastask's Celery settings, CPU per job:")
            print("| queues | publishing | worker (main process and pool) | both |")
            print("|---|---|---|---|")
            for queues in (1, 10):
                publish_ms, worker_ms = measure(server.url, jobs, queues)
                print(f"| {queues} | {publish_ms:.2f} ms | {worker_ms:.2f} ms | {publish_ms + worker_ms:.2f} ms |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

"""Celery settings that make a Redis broker safe for dispatching Kibana tasks (each says why).

The top-level ``celeryconfig.py`` imports these; a deployment overrides them there.
"""

from __future__ import annotations

import os as _os

# A dispatch job is acknowledged only after it ran, so a worker killed mid-push leaves the job
# in Redis for another worker instead of losing it. Dispatch is idempotent per lease (it checks
# the document's version before pushing), so running a redelivered job is safe.
task_acks_late = True
# ... and a job whose worker process died (SIGKILL, OOM) is requeued, not marked failed.
task_reject_on_worker_lost = True
# The pool stays Celery's default, prefork: with the threads pool, a broker connection lost while
# jobs run (Redis restarted) crashed the worker in kombu's ack path (seen in the fault tests).
# Processes per worker: at least 4, whatever the number of CPUs (Celery's default is one per CPU).
# The dispatcher's work waits on the network (pushes run on threads, claim cycles on the engine), not
# on the CPU, and a refill session holds one process for up to 10 s: on a 2-CPU machine Celery's 2
# would leave a single process for every claim cycle and dispatch job of every node. Measured on a
# burst of 300 tasks of 200 ms on 3 nodes (BENCHMARKS.md, `elastask bench burst`). Each process costs
# its memory (about 60 MB); `celery -A elastask worker --concurrency N` still decides.
worker_concurrency = max(4, _os.cpu_count() or 1)
# One job at a time per worker process: a prefetched job would hold a claimed task hostage
# while its worker is busy, and its lease would run out before the push.
worker_prefetch_multiplier = 1
# Redis redelivers an unacknowledged job after this many seconds. It must be longer than any
# dispatch (a push takes at most kibana.request_timeout_s) or a slow job would run twice.
# A worker reads the claim and retry queues before the nodes' dispatch queues (kombu's default
# round robin put a claim cycle behind every node's queue; see elastask/queue_order.py).
broker_transport_options = {"visibility_timeout": 3600, "queue_order_strategy": "elastask.entry.queue_order:LoopsFirst"}
# A cold shutdown (SIGQUIT, a second Ctrl+C) with jobs running first waits this long (Celery 5.5's
# soft shutdown: a plain sleep of this length) instead of cutting pushes off mid-request, whose
# leases would then have to run out and whose jobs would be redelivered: Kibana answers a push at
# once, so a few seconds settle every push but one to a hung node. A warm shutdown (SIGTERM) waits
# for the running jobs anyway; the ETA jobs a worker holds go back to their queue either way (kombu
# restores unacknowledged Redis messages when the worker closes its channel).
worker_soft_shutdown_timeout = 5.0
# Workers and beat wait for Redis at start-up instead of crashing (Celery 6 changes the default).
broker_connection_retry_on_startup = True
# ... and however long it is away: a lost broker connection is retried at least every second
# (entry/broker_connection.py), so Celery's 100 retries would give up after about 100 s of outage.
broker_connection_max_retries = None
# Results are not needed: outcomes live in the task documents. Saves a Redis write per job.
task_ignore_result = True
# Task events off until someone watches: Flower turns them on in every worker while it runs (its
# enable_events option, on by default, repeats Celery's enable_events command every few seconds),
# so its task view is live all the same. Unwatched, they cost the worker's main process a Redis
# publish and its encoding per job and event (about a quarter of its busy time in the mix,
# measured with py-spy). `celery -A elastask worker -E` turns them on from the start. No "sent"
# events either way: one more Redis publish per job, half the cost of enqueueing a claim cycle's jobs.
worker_send_task_events = False
task_send_sent_event = False
# JSON only: job arguments are task ids and small dicts, never pickles.
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
timezone = "UTC"
enable_utc = True
# The claim loop logs one line per cycle; Celery's own "Task ... succeeded" lines would drown it.
worker_hijack_root_logger = False

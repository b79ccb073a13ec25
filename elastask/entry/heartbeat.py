"""A worker's life in Redis: its id, its heartbeat, and the dispatch jobs it received (parts/worker_claims.py).

- At ``worker_init`` (the main process, before the pool forks: the children inherit the id) the
  worker takes a new id and beats once.
- ``Heartbeat``, a consumer step, beats every second from a thread of the main process while the
  worker consumes; after a SIGKILL, an OOM kill or a freeze the beat stops, and the retry loop gives
  back within seconds the claims this worker never pushed.
- Every dispatch job the worker receives (``task_received``, the main process: a job waiting for its
  runAt or for a free pool process counts too) is recorded as held by it.

Redis errors are logged, never raised: a worker that cannot record what it holds is as before, its
claims wait for their leases.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

import redis
from celery import bootsteps, signals

from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date
from elastask.core.messages import DispatchJob
from elastask.parts.redis_client import build_redis
from elastask.parts.worker_claims import BEAT_MS, KEEP_MS, WorkerClaims, new_worker_id

log = logging.getLogger(__name__)

DISPATCH_TASK = "elastask.dispatch"


class WorkerLife:
    """This worker's id and the Redis client its main process records with (one per process)."""

    def __init__(self) -> None:
        self.worker_id: str | None = None
        self._client: redis.Redis | None = None
        self._warned = False

    def start(self, settings: Any) -> None:
        self.worker_id = new_worker_id()
        self._client = build_redis(settings, socket_timeout_s=2)
        self.beat()

    def store(self) -> WorkerClaims | None:
        return WorkerClaims(self._client) if self._client is not None else None

    def beat(self) -> None:
        store = self.store()
        if store is None or self.worker_id is None:
            return
        self._quietly(lambda: store.beat(self.worker_id or "", int(time.time() * 1000)), "beating")

    def hold(self, job: DispatchJob) -> None:
        store = self.store()
        if store is None or self.worker_id is None:
            return
        now_ms = int(time.time() * 1000)
        try:  # a job claimed ahead is held until its runAt
            starts_ms = max([now_ms, *(epoch_ms(parse_date(task.body["runAt"])) for task in job.tasks)])
        except (KeyError, ValueError):
            starts_ms = now_ms
        self._quietly(lambda: store.hold(self.worker_id or "", [job], starts_ms + KEEP_MS), "recording a job")

    def _quietly(self, call: Any, what: str) -> None:
        try:
            call()
            self._warned = False
        except (redis.RedisError, OSError) as e:
            if not self._warned:
                log.warning(
                    "worker %s: %s in Redis failed (its claims wait for their leases if it dies): %s",
                    self.worker_id,
                    what,
                    e,
                )
                self._warned = True


def life_of(app: Any) -> WorkerLife:
    """The worker's life this process belongs to, kept on the Celery app (entry/celeryapp.py ``WorkerProcess``)."""
    life: WorkerLife = app.elastask_process.life
    return life


@signals.worker_init.connect
def _name_this_worker(sender: Any = None, **_kwargs: Any) -> None:
    life_of(sender.app).start(sender.app.conf.elastask_settings)


@signals.task_received.connect
def _hold_received_job(request: Any = None, **_kwargs: Any) -> None:
    if request is None or request.name != DISPATCH_TASK or not request.args:
        return
    try:
        job = DispatchJob.from_dict(request.args[0])
    except (TypeError, KeyError, ValueError):
        return  # the job itself reports a bad message
    life_of(request.app).hold(job)


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Beats every BEAT_MS from a thread of the worker's main process while it consumes."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopped = threading.Event()  # set by tests only
        self.thread: threading.Thread | None = None
        self.life = life_of(parent.app)

    def start(self, consumer: Any) -> None:
        # Once per process: a consumer restarted after a lost broker connection keeps the same thread.
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="elastask-heartbeat", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(BEAT_MS / 1000):
            self.life.beat()

    def stop(self, consumer: Any) -> None:
        """Nothing: a warm shutdown goes on beating until the process exits, while its jobs still push."""

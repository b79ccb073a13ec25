"""Dispatch jobs sent from a thread of their own, so the claim loop does not wait for the broker.

Sending one Celery message is a Redis round trip or two; a claim cycle that fills ten nodes sends
ten, and under load that was a fifth of every cycle (profiled with py-spy in the 200 ms backlog
benchmark: ~20 of ~100 ms). The claim loop only hands each job over and goes on to its next look;
this thread sends them in order on a producer of its own (kombu connections are not shared between
threads).

Nothing changes for a failure: a job that could not be sent is a claimed task no node received, as
when the claim job itself fails after its claim write, and its lease expiry brings it back (retry).
The first error is raised again to the claim loop at its next hand-over, and by ``close``, so a lost
broker still ends the cycle as it did.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from elastask.core.messages import DispatchJob

log = logging.getLogger(__name__)

#: What sends one job on a producer (tasks.enqueue_dispatch).
Send = Callable[[DispatchJob, Any], None]
#: A producer for the thread's own use (app.producer_or_acquire).
ProducerFactory = Callable[[], contextlib.AbstractContextManager[Any]]


class BackgroundPublisher:
    """Hand dispatch jobs over with ``publisher(job)``; ``close()`` waits until every one was sent."""

    def __init__(self, send: Send, producer: ProducerFactory) -> None:
        self._send = send
        self._producer = producer
        self._jobs: queue.SimpleQueue[DispatchJob | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="elastask-publisher", daemon=True)
        self._thread.start()

    def __call__(self, job: DispatchJob) -> None:
        self._raise_if_failed()
        self._jobs.put(job)

    def close(self) -> None:
        """Send what is queued, stop the thread, and raise the first error it met."""
        self._jobs.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            with self._producer() as producer:
                while (job := self._jobs.get()) is not None:
                    self._send(job, producer)
        except BaseException as e:  # handed to the claim loop's thread, raised there
            self._error = e
            log.error("sending dispatch jobs failed (their tasks come back when their leases expire): %s", e)
            while self._jobs.get() is not None:  # drain: close() must not wait on a dead thread
                pass


@contextlib.contextmanager
def background_publisher(send: Send, producer: ProducerFactory) -> Iterator[BackgroundPublisher]:
    """A publisher for one claim job; every job handed over is sent (or its error raised) on exit."""
    publisher = BackgroundPublisher(send, producer)
    try:
        yield publisher
    finally:
        publisher.close()

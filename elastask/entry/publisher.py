"""Dispatch jobs sent from a thread of their own, so the claim loop does not wait for the broker.

Sending one Celery message is a Redis round trip or two; a claim cycle that fills ten nodes sends
ten, a fifth of a busy cycle (BENCHMARKS.md). The claim loop only hands each job over and goes on to its next look;
this thread sends them in order on a producer of its own (kombu connections are not shared between
threads).

A job that could not be sent is handed to ``on_unsent`` (the claim task switches its pushes off, in
case the broker took it after all, and gives its tasks back to idle, attempt returned, slots freed);
so is every job handed over after a send failed, the rest of the same cycle's included. ``sending()``
turns False at the first failure, and the claim loop checks it before its next claim write, so no
more claims are written for a broker that is gone; ``close`` raises the first error, so a lost broker
still ends the claim job.
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
#: What to do with a job that could not be sent.
Unsent = Callable[[DispatchJob], None]


class BackgroundPublisher:
    """Hand dispatch jobs over with ``publisher(job)``; ``close()`` waits until every one was sent."""

    def __init__(self, send: Send, producer: ProducerFactory, on_unsent: Unsent = lambda _job: None) -> None:
        self._send = send
        self._producer = producer
        self._on_unsent = on_unsent
        self._jobs: queue.SimpleQueue[DispatchJob | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="elastask-publisher", daemon=True)
        self._thread.start()

    def __call__(self, job: DispatchJob) -> None:
        """Hand a job over; once a send failed, the job is given back at once (``on_unsent``), never dropped."""
        if self._error is not None:
            self._give_back(job)
            return
        self._jobs.put(job)

    def sending(self) -> bool:
        """False once a send failed: write no more claims whose jobs could not go out."""
        return self._error is None

    def close(self) -> None:
        """Send what is queued, stop the thread, and raise the first error it met."""
        self._jobs.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        job: DispatchJob | None = None
        try:
            with self._producer() as producer:
                while (job := self._jobs.get()) is not None:
                    self._send(job, producer)
        except BaseException as e:  # handed to the claim loop's thread, raised there
            self._error = e
            log.error("sending dispatch jobs failed; their tasks are given back: %s", e)
            unsent = [job] if job is not None else []
            while (job := self._jobs.get()) is not None:  # drain: close() must not wait on a dead thread
                unsent.append(job)
            for lost in unsent:
                self._give_back(lost)

    def _give_back(self, job: DispatchJob) -> None:
        try:
            self._on_unsent(job)
        except Exception as e:  # their leases decide
            log.error("giving back the tasks of an unsent dispatch job failed: %s", e)


@contextlib.contextmanager
def background_publisher(
    send: Send, producer: ProducerFactory, on_unsent: Unsent = lambda _job: None
) -> Iterator[BackgroundPublisher]:
    """A publisher for one claim job; every job handed over is sent (or its error raised) on exit."""
    publisher = BackgroundPublisher(send, producer, on_unsent)
    try:
        yield publisher
    finally:
        publisher.close()

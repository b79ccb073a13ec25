"""Pushes a dispatch job leaves for later: one thread per worker process that starts each at its time.

A claim cycle looks up to a polling interval ahead (at most 1 s). The tasks it claims ahead of their
runAt travel in their node's one dispatch job; the job pushes the ones due and hands the others,
in 25 ms steps, to this schedule, which starts each step at its time on this thread, never earlier.
One job per node and cycle instead of one Celery ETA job per node and step: in the mix (most tasks
claimed ahead) a job carried one task or two, and a job costs the worker more than its push.

The thread is made on first use, in the process that uses it (a prefork child, after the fork).
A warm shutdown waits for what is left (``drain``): those tasks are claimed, their jobs acknowledged.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PushSchedule:
    """Actions to run at a ``time.monotonic()`` deadline, in deadline order, on one daemon thread."""

    def __init__(self, name: str = "elastask-push-schedule") -> None:
        self._name = name
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._running = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, deadline: float, action: Callable[[], None]) -> None:
        """Run ``action`` once ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
        with self._changed:
            heapq.heappush(self._due, (deadline, next(self._order), action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def pending(self) -> int:
        """Actions not run yet, or running now."""
        with self._changed:
            return len(self._due) + self._running

    def drain(self, timeout_s: float) -> int:
        """Wait until every action ran (at its time, not sooner), at most ``timeout_s``; returns how many did not."""
        until = time.monotonic() + timeout_s
        with self._changed:
            while self._due or self._running:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return len(self._due) + self._running

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _deadline, _n, action = heapq.heappop(self._due)
                self._running += 1
            try:
                action()
            except Exception:  # one step's failure must not stop the steps after it
                log.exception("a scheduled push step failed; its leases decide")
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()

"""The simulation's steps on a thread of their own, so a process can be killed in the middle of a call.

A SIGKILLed worker stops where it is: no ``finally`` runs, no lock is released, no reply is read. The
world's steps run one at a time on a driver thread while the scheduler's thread waits; a process killed
at a pause (right after an engine, Redis or Kibana call) parks the driver thread there for good, the
step counts as ended, and a new driver thread takes the next steps. Only one thread ever runs at a
time, so a seed still gives the same run. When the run is over, the parked threads are released one
at a time (each unwinds with ``ProcessKilled``; the world ignores what they do then).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import NoReturn


class ProcessKilled(BaseException):
    """Unwinds a process that was killed mid-call, once the run is over (never caught by the loops)."""


class Driver:
    """Runs the world's top-level steps on a driver thread; ``park`` kills the process it is running."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._requests: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._done: queue.Queue[BaseException | None] = queue.Queue()
        self._parked: list[tuple[threading.Thread, threading.Event]] = []

    def run(self, step: Callable[[], None]) -> None:
        """Run one step on the driver thread; returns when it ended or its process was killed mid-call."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="simulation driver", daemon=True)
            self.thread.start()
        self._requests.put(step)
        error = self._done.get()
        if error is not None:
            raise error

    def park(self) -> NoReturn:
        """On the driver thread: the process it runs dies here and never resumes. Raises ProcessKilled
        once the run is over (``close``)."""
        me = threading.current_thread()
        assert me is self.thread, "park() runs on the driver thread"
        release = threading.Event()
        self._parked.append((me, release))
        self.thread = None  # the next step starts a new driver thread
        self._done.put(None)  # for the scheduler, this step ended
        release.wait()
        raise ProcessKilled

    @property
    def parked(self) -> int:
        return len(self._parked)

    def close(self) -> None:
        """Release the parked threads one at a time (each unwinds and ends), then stop the driver."""
        for thread, release in self._parked:
            release.set()
            thread.join(timeout=30)
        self._parked.clear()
        if self.thread is not None:
            self._requests.put(None)
            self.thread.join(timeout=30)
            self.thread = None

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            step = self._requests.get()
            if step is None:
                return
            try:
                step()
            except ProcessKilled:
                return  # a parked thread released at the end
            except BaseException as e:  # the scheduler re-raises it
                if self.thread is me:
                    self._done.put(e)
                    continue
                return
            if self.thread is not me:
                return  # a parked thread released at the end: what it did then is not the world's
            self._done.put(None)

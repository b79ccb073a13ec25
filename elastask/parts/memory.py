"""What one process remembers between its steps: the watchers' turns, what it said, its last reads.

It lives on the runtime (``Runtime.memory``), shared by the process's threads: a test or a simulator
builds a fresh one with its runtime instead of resetting module globals, and two runtimes in one
process (two simulated workers) remember apart, as two processes would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProcessMemory:
    """A process's memory between steps (see the module docstring)."""

    #: Per watcher, when it may next take a step (monotonic ms of the runtime's clock).
    next_step_ms: dict[str, float] = field(default_factory=dict)
    #: Per subject, what was last said of it (logged once per change).
    said: dict[str, str] = field(default_factory=dict)
    #: Per subject, the last read of something and when (monotonic ms): the pauses, read by every job.
    reads: dict[str, tuple[float, Any]] = field(default_factory=dict)
    #: The pauses last seen in Redis, to write back if Redis loses them (parts/pauses.py).
    pauses_seen: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def turn(self, watcher: str, every_ms: float, now_ms: float) -> bool:
        """True when ``watcher`` may take a step at ``now_ms`` (then not again for ``every_ms``)."""
        with self.lock:
            if now_ms < self.next_step_ms.get(watcher, float("-inf")):
                return False
            self.next_step_ms[watcher] = now_ms + every_ms
            return True

    def say_once(self, subject: str, text: str) -> bool:
        """True when ``text`` is new for ``subject`` (remembered: the next call with it answers False)."""
        with self.lock:
            if self.said.get(subject) == text:
                return False
            self.said[subject] = text
            return True

    def forget_said(self, subject: str) -> None:
        with self.lock:
            self.said.pop(subject, None)

    def recent(self, subject: str, max_age_ms: float, now_ms: float) -> Any | None:
        """The last read of ``subject`` if under ``max_age_ms`` old, else None."""
        seen = self.reads.get(subject)
        return seen[1] if seen is not None and now_ms - seen[0] < max_age_ms else None

    def remember_read(self, subject: str, value: Any, now_ms: float) -> None:
        self.reads[subject] = (now_ms, value)

"""The chaos run's workers and beats by role (worker1, beat2, skew), and the exits the harness did not cause.

Each role is played by one ``celery -A elastask worker|beat`` process at a time; a restart starts a
new one with its own log (``worker1-2.log``). A process that exits without the harness killing or
stopping it is recorded (the run's ``no-unexpected-exit`` invariant) and started again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from elastask_bed.chaos.model import ProcessExit
from elastask_bed.errors import TestbedError
from elastask_bed.testbed.bed import SimulatorProcess, Testbed
from elastask_bed.testbed.fleet import PROJECT_ROOT, CeleryFleet
from elastask_bed.testbed.process import ManagedProcess


class ChaosFleet(CeleryFleet):
    """A CeleryFleet whose processes play roles the fault injector kills, pauses and restarts."""

    def __init__(self, workdir: Path, testbed: Testbed, simulator: SimulatorProcess, **options: Any) -> None:
        super().__init__(workdir, testbed, simulator, **options)
        self.roles: dict[str, ManagedProcess] = {}
        self.incarnations: Counter[str] = Counter()
        self.expected: set[int] = set()  # pids the harness killed or stopped
        self.exits: list[ProcessExit] = []
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self.watching = True

    @property
    def started(self) -> int:
        """Processes started so far."""
        return sum(self.incarnations.values())

    def start_role(self, role: str, *, skew: str = "") -> ManagedProcess:
        """Start the role's next process (a worker waits until it consumes); ``skew``: faketime's offset."""
        with self.lock:
            self.incarnations[role] += 1
            name = f"{role}-{self.incarnations[role]}"
        try:
            if role.startswith("beat"):
                process = self.beat(name)
            elif skew:
                process = self._skewed_worker(name, skew)
            else:
                process = self.worker(name)
        except TestbedError as e:  # it died or was slow while starting: keep it if it still runs
            self.errors.append(f"{name}: {e}".splitlines()[0])
            process = self.processes[-1]
        with self.lock:
            self.roles[role] = process
        return process

    def _skewed_worker(self, name: str, skew: str) -> ManagedProcess:
        """A worker whose clock (and its pool's) is ``skew`` off, through Debian's faketime (libfaketime)."""
        argv = ["faketime", "-f", skew, sys.executable, "-m", "celery", "-A", "elastask", "worker", "-l", "info"]
        argv += ["-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        process = ManagedProcess(name, argv, self.workdir / f"{name}.log", env=self.env)
        process.cwd = str(PROJECT_ROOT) if (PROJECT_ROOT / "celeryconfig.py").exists() else None
        process.start()
        self.processes.append(process)
        process.wait_until(lambda: " ready." in process.log_path.read_text(errors="replace"), 60)
        return process

    def _current(self, role: str) -> ManagedProcess:
        with self.lock:
            return self.roles[role]

    def kill(self, role: str) -> None:
        """SIGKILL the role's process and its pool."""
        process = self._current(role)
        if process.pid is not None:
            self.expected.add(process.pid)
        process.kill()

    def stop_role(self, role: str) -> None:
        """Stop the role's process (SIGTERM: a warm shutdown) and leave the role empty."""
        process = self._current(role)
        if process.pid is not None:
            self.expected.add(process.pid)
        process.stop(timeout_s=20)
        with self.lock:
            del self.roles[role]

    def signal(self, role: str, sig: signal.Signals) -> None:
        """Send a signal (SIGSTOP, SIGCONT) to the role's process group: the main process and its pool."""
        pid = self._current(role).pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    def check_started(self) -> None:
        """Fail at once, with the log's tail, when a role's process is not running (before any fault)."""
        with self.lock:
            roles = list(self.roles.items())
        for role, process in roles:
            if not process.running():
                raise TestbedError(f"{role} is not running; its log {process.log_path} ends with:\n{process.tail()}")

    def watch(self, interval_s: float = 0.5) -> None:
        """Until ``watching`` is off: record and restart every process that exited by itself.

        A role that keeps exiting is restarted after a growing pause (1 s, doubling, at most 30 s).
        """
        backoff: Counter[str] = Counter()
        while self.watching:
            with self.lock:
                roles = list(self.roles.items())
            for role, process in roles:
                proc = process.proc
                if proc is None or proc.poll() is None or proc.pid in self.expected:
                    continue
                self.expected.add(proc.pid)
                self.exits.append(ProcessExit(role, proc.pid, time.time(), proc.returncode, process.tail(8)))
                time.sleep(min(30.0, 2.0 ** backoff[role]) if backoff[role] else 0.0)
                backoff[role] += 1
                if self.watching and self.start_role(role).running():
                    backoff[role] = max(0, backoff[role] - 1)
            time.sleep(interval_s)

    def resume_all(self) -> None:
        """SIGCONT every role (a stopped process cannot stop)."""
        with self.lock:
            roles = list(self.roles)
        for role in roles:
            self.signal(role, signal.SIGCONT)

"""A child process of the test bed: started with a log file, waited on until ready, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from elastask_bed.errors import TestbedError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One child process with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        keep_stdin_open: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.keep_stdin_open = keep_stdin_open
        self.proc: subprocess.Popen[bytes] | None = None
        self.cwd: str | None = None

    def start(self) -> None:
        """Start the process in its own process group (so a stop reaches its children too)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if self.keep_stdin_open else subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise TestbedError(f"{self.name}: cannot run {self.argv[0]!r}: {e.strerror}") from e
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``ready`` until it is true; fail with the log's tail if the process dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TestbedError(
                    f"{self.name} exited with status {self.proc.returncode} while starting; "
                    f"its log {self.log_path} ends with:\n{self.tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise TestbedError(f"{self.name} did not become ready in {timeout_s:.0f}s; see {self.log_path}:\n{self.tail()}")

    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the process to stop (stdin closed, then SIGTERM), SIGKILL its group if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            if proc.stdin is not None:
                proc.stdin.close()
            else:
                self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    proc.wait(timeout=5)
        elif proc.stdin is not None:
            proc.stdin.close()
        # Reap anything it left behind in its group.
        self._signal(signal.SIGKILL)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group at once (for fault tests)."""
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

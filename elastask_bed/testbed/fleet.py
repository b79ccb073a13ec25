"""Real ``celery -A elastask worker|beat`` processes pointed at a test bed (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from elastask_bed.testbed.bed import SimulatorProcess, Testbed
from elastask_bed.testbed.process import ManagedProcess, port_open

#: Where celeryconfig.py lives when running from a checkout (celery imports it from the cwd).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class CeleryFleet:
    """Workers and beats configured through ELASTASK_* variables and a generated elastask.yaml."""

    def __init__(
        self,
        workdir: Path,
        testbed: Testbed,
        simulator: SimulatorProcess,
        *,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "elastask.yaml"
        config_path.write_text(yaml.safe_dump(config or {}))
        self.env = {
            **os.environ,
            "ELASTASK_CONFIG": str(config_path),
            "ELASTASK_ELASTICSEARCH_HOST": testbed.es_url,
            "ELASTASK_REDIS_URL": testbed.redis.url,
            "ELASTASK_KIBANA_HOSTS": ",".join(simulator.urls),
            **(env or {}),
        }
        self.processes: list[ManagedProcess] = []

    def _celery(self, name: str, *args: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "celery", "-A", "elastask", *args]
        process = ManagedProcess(name, argv, self.workdir / f"{name}.log", env=self.env)
        process.cwd = str(PROJECT_ROOT) if (PROJECT_ROOT / "celeryconfig.py").exists() else None
        process.start()
        self.processes.append(process)
        return process

    def worker(
        self, name: str = "worker1", *, concurrency: int | None = None, queues: str | None = None, wait: bool = True
    ) -> ManagedProcess:
        """Start a worker (default pool and concurrency from celery_settings) and wait until it consumes
        (``wait=False``: return at once; ``wait_until_ready`` then waits)."""
        level = os.environ.get("ELASTASK_BED_LOG_LEVEL", "info")  # debug: every dispatch job's timing
        args = ["worker", "-l", level, "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        if concurrency is not None:
            args += ["-c", str(concurrency)]
        if queues:
            args += ["-Q", queues]
        process = self._celery(name, *args)
        if wait:
            self.wait_until_ready(process)
        return process

    @staticmethod
    def wait_until_ready(process: ManagedProcess) -> None:
        """Until a worker says it is ready (consuming its queues)."""
        process.wait_until(lambda: " ready." in process.log_path.read_text(errors="replace"), 60)

    def beat(self, name: str = "beat1") -> ManagedProcess:
        """Start a beat with its own schedule file."""
        return self._celery(name, "beat", "-l", "info", "-s", str(self.workdir / f"{name}-schedule"))

    def exporter(self, port: int, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``elastask serve`` (the console, /metrics and /health) on a port and wait until it listens;
        ``env``: more variables for it alone (``ELASTASK_CONSOLE_PASSWORD``)."""
        argv = [sys.executable, "-m", "elastask", "serve", "--port", str(port)]
        process = ManagedProcess("exporter", argv, self.workdir / "exporter.log", env={**self.env, **(env or {})})
        process.start()
        self.processes.append(process)
        process.wait_until(lambda: port_open(port), 30)
        return process

    def pids(self) -> list[int]:
        """The workers' and beats' process ids (their pool children are found from these)."""
        return [p.pid for p in self.processes if p.pid is not None]

    def logs(self) -> str:
        """Everything the workers and beats logged."""
        return "\n".join(p.log_path.read_text(errors="replace") for p in self.processes if p.log_path.exists())

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        for process in self.processes:
            process.stop(timeout_s=20)

"""The whole test bed: engine, compatibility proxy, Redis and simulated Kibana nodes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from elastask_bed.errors import TestbedError
from elastask_bed.testbed.engine import Engine
from elastask_bed.testbed.process import ManagedProcess, free_port, port_open
from elastask_bed.testbed.redis_server import RedisServer

log = logging.getLogger(__name__)

INDEX = ".kibana_task_manager"


def first_json_line(path: Path) -> dict[str, Any] | None:
    """The first line of a log that parses as a JSON object (a child's "ready" announcement)."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
    except OSError:
        return None
    return None


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10) -> Any:
    """A small JSON HTTP call for the control APIs of the proxy and the simulator."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return json.load(answer)


class ProxyProcess:
    """The compatibility proxy as a child process."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "compatibility proxy",
            [sys.executable, "-m", "elastask_bed.testbed.proxy", "--port", str(self.port), "--upstream", upstream],
            workdir / "proxy.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: port_open(self.port), 30)

    def set_faults(self, **faults: Any) -> None:
        """Inject faults (down, latency_ms, status); no arguments clears them."""
        http_json("POST", f"{self.url}/_proxy/faults", faults)

    def stats(self) -> dict[str, Any]:
        return dict(http_json("GET", f"{self.url}/_proxy/stats"))

    def stop(self) -> None:
        self.process.stop()


class SimulatorProcess:
    """``python -m elastask.simulator`` as a child process."""

    def __init__(
        self,
        workdir: Path,
        engine_url: str,
        *,
        nodes: int,
        run_ms: str = "200",
        capacity: int = 10,
        extra_args: list[str] | None = None,
        seed: str = "0",
    ) -> None:
        self.log_path = workdir / f"simulator-{free_port()}.log"
        self.argv = [
            sys.executable,
            "-m",
            "elastask_bed.simulator",
            "--nodes",
            str(nodes),
            "--engine",
            engine_url,
            "--index",
            INDEX,
            "--run-ms",
            str(run_ms),
            "--capacity",
            str(capacity),
            "--seed",
            seed,
            *(extra_args or []),
        ]
        self.process = ManagedProcess("Kibana simulator", self.argv, self.log_path)
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: first_json_line(self.log_path) is not None, 30)
        self.info = first_json_line(self.log_path) or {}

    @property
    def control_url(self) -> str:
        return str(self.info["control"])

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.info["nodes"])

    @property
    def urls(self) -> list[str]:
        return [node["url"] for node in self.nodes]

    def stats(self, *, drifts: bool = False) -> dict[str, Any]:
        return dict(http_json("GET", f"{self.control_url}/_sim/stats" + ("?drifts" if drifts else "")))

    def set_mode(self, index: int, mode: str, delay_s: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if delay_s is not None:
            body["delay_s"] = delay_s
        http_json("POST", f"{self.control_url}/_sim/nodes/{index}/mode", body)

    def reset(self) -> None:
        http_json("POST", f"{self.control_url}/_sim/reset", {})

    def stop(self) -> None:
        self.process.stop()


class Testbed:
    """Starts the real parts on loopback; ``env()`` is what elastask needs to use them."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self, workdir: Path | None = None, *, kibana_nodes: int = 3, run_ms: str = "200", engine_heap_mb: int = 512
    ) -> None:
        self.own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="elastask-testbed-")) if workdir is None else workdir
        self.kibana_nodes = kibana_nodes
        self.run_ms = run_ms
        self.engine = Engine(self.workdir, heap_mb=engine_heap_mb)
        self.redis = RedisServer(self.workdir / "redis")
        self.proxy: ProxyProcess | None = None
        self.simulator: SimulatorProcess | None = None

    @property
    def es_url(self) -> str:
        """The Elasticsearch-compatible URL (the proxy's)."""
        assert self.proxy is not None, "the test bed is not started"
        return self.proxy.url

    def start(self) -> Testbed:
        """Start every part, bootstrap the task index; stop what started if any part fails."""
        try:
            self.redis.start()
            self.engine.start()
            self.proxy = ProxyProcess(self.workdir, self.engine.url)
            self.proxy.start()
            self.bootstrap_index()
            if self.kibana_nodes > 0:
                self.simulator = self.start_simulator(self.kibana_nodes, run_ms=self.run_ms)
        except BaseException:
            self.stop()
            raise
        return self

    def bootstrap_index(self) -> None:
        """Create ``.kibana_task_manager`` with Kibana's mapping (through the real client and proxy)."""
        from elastask.config import ElasticsearchSettings
        from elastask.parts.store import TaskStore, build_client

        client = build_client(ElasticsearchSettings(host=self.es_url))
        try:
            TaskStore(client, INDEX).bootstrap()
        finally:
            client.close()

    def start_simulator(self, nodes: int, *, direct: bool = False, **options: Any) -> SimulatorProcess:
        """Start (another) simulator writing outcomes through the proxy (``direct``: to the engine itself,
        so faults injected in the proxy hit elastask only)."""
        engine = self.engine.url if direct else self.es_url
        simulator = SimulatorProcess(self.workdir, engine, nodes=nodes, **options)
        simulator.start()
        return simulator

    def env(self) -> dict[str, str]:
        """The ``ELASTASK_*`` variables that point elastask at this test bed."""
        env = {
            "ELASTASK_ELASTICSEARCH_HOST": self.es_url,
            "ELASTASK_REDIS_URL": self.redis.url,
            "ELASTASK_INDEX": INDEX,
        }
        if self.simulator is not None:
            env["ELASTASK_KIBANA_HOSTS"] = ",".join(self.simulator.urls)
            env["ELASTASK_TESTBED_SIMULATOR"] = self.simulator.control_url
        env["ELASTASK_TESTBED_PROXY"] = self.es_url
        env["ELASTASK_TESTBED_ENGINE"] = self.engine.url
        return env

    def stop(self) -> None:
        """Stop everything this test bed started (safe to call twice)."""
        for part in (self.simulator, self.proxy):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # keep stopping the rest
                    log.exception("stopping %s failed", part)
        self.engine.stop()
        self.redis.stop()
        if self.own_workdir and not os.environ.get("ELASTASK_KEEP_TESTBED"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Testbed", "TestbedError"]

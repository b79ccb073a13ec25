"""The whole test bed: engine, compatibility proxy, Redis and simulated Kibana nodes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch

from elastask_bed.errors import TestbedError
from elastask_bed.testbed.engine import Engine
from elastask_bed.testbed.process import ManagedProcess, free_port, port_open
from elastask_bed.testbed.redis_server import RedisServer
from elastask_bed.testbed.tls import CertPair, Pki, make_pki

log = logging.getLogger(__name__)

INDEX = ".kibana_task_manager"


def empty_task_index(es: Elasticsearch, tries: int = 10) -> None:
    """Delete every document of the task index, and fail naming the ones a writer kept alive.

    ``_delete_by_query`` deletes what its search saw, each at the version it saw: a document written
    since the last refresh (a stopped simulator's last outcome write) is a version conflict, skipped
    with ``conflicts=proceed``. So: refresh first, and go again until the index is empty.
    """
    for attempt in range(tries):
        es.indices.refresh(index=INDEX)
        es.delete_by_query(index=INDEX, query={"match_all": {}}, refresh=True, conflicts="proceed")
        if int(es.count(index=INDEX)["count"]) == 0:
            return
        time.sleep(0.2 * (attempt + 1))
    left = [hit["_id"] for hit in es.search(index=INDEX, size=10, source=False)["hits"]["hits"]]
    raise TestbedError(f"{INDEX} is not empty after {tries} deletes (something still writes?): first ids {left}")


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


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10, ca: Path | None = None) -> Any:
    """A small JSON HTTP call for the control APIs of the proxy and the simulator (``ca``: for https)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
        return json.load(answer)


class ProxyProcess:
    """The compatibility proxy as a child process."""

    def __init__(
        self,
        workdir: Path,
        upstream: str,
        *,
        tls: CertPair | None = None,
        ca: Path | None = None,
        basic_auth: str = "",
        api_key: str = "",
    ) -> None:
        self.port = free_port()
        self.tls = tls
        self.ca = ca
        argv = [sys.executable, "-m", "elastask_bed.testbed.proxy", "--port", str(self.port), "--upstream", upstream]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        if basic_auth:
            argv += ["--basic-auth", basic_auth]
        if api_key:
            argv += ["--api-key", api_key]
        self.process = ManagedProcess("compatibility proxy", argv, workdir / f"proxy-{self.port}.log")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: port_open(self.port), 30)

    def set_faults(self, **faults: Any) -> None:
        """Inject faults (down, latency_ms, status); no arguments clears them."""
        http_json("POST", f"{self.url}/_proxy/faults", faults, ca=self.ca)

    def stats(self) -> dict[str, Any]:
        return dict(http_json("GET", f"{self.url}/_proxy/stats", ca=self.ca))

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
        # A name of its own: the log is opened for appending, and a reused name (a port number freed
        # and handed out again) let start() read a stopped simulator's first line and its dead URLs.
        self.log_path = workdir / f"simulator-{uuid.uuid4().hex[:12]}.log"
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

    def stats(self, *, drifts: bool = False, recent_s: float | None = None) -> dict[str, Any]:
        """The nodes' statistics; ``drifts``: every raw series too; ``recent_s``: the last seconds' drifts."""
        query = [*(["drifts"] if drifts else []), *([f"recent_s={recent_s:g}"] if recent_s is not None else [])]
        return dict(http_json("GET", f"{self.control_url}/_sim/stats" + ("?" + "&".join(query) if query else "")))

    def set_mode(self, index: int, mode: str, delay_s: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if delay_s is not None:
            body["delay_s"] = delay_s
        http_json("POST", f"{self.control_url}/_sim/nodes/{index}/mode", body)

    def reset(self) -> None:
        http_json("POST", f"{self.control_url}/_sim/reset", {})

    def stop(self) -> None:
        self.process.stop()


#: The throwaway credentials of a TLS test bed (made for it, loopback only).
TLS_CREDENTIALS = {
    "es_user": "elastic",
    "es_password": "testbed-es-password",
    "es_api_key": "elastask-key-id:testbed-api-key",
    "kibana_user": "elastic",
    "kibana_password": "testbed-kibana-password",
    "redis_password": "testbed-redis-password",
}


class Testbed:
    """Starts the real parts on loopback; ``env()`` is what elastask needs to use them."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        kibana_nodes: int = 3,
        run_ms: str = "200",
        engine_heap_mb: int = 512,
        tls: bool = False,
        engine: Engine | None = None,
    ) -> None:
        self.own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="elastask-testbed-")) if workdir is None else workdir
        self.kibana_nodes = kibana_nodes
        self.run_ms = run_ms
        #: Another test bed's engine to share (it is not stopped with this one).
        self.shared_engine = engine is not None
        self.engine = engine or Engine(self.workdir, heap_mb=engine_heap_mb)
        #: TLS and authentication everywhere: a CA made for this bed, HTTPS proxy and Kibana nodes,
        #: Redis on a TLS port with a password, basic auth (or an API key) on the proxy and the nodes.
        self.pki: Pki | None = make_pki(self.workdir / "tls") if tls else None
        self.credentials = TLS_CREDENTIALS if tls else None
        self.redis = RedisServer(
            self.workdir / "redis",
            tls=self.pki.server if self.pki else None,
            ca=self.pki.ca if self.pki else None,
            password=TLS_CREDENTIALS["redis_password"] if tls else None,
        )
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
            if not self.shared_engine:
                self.engine.start()
            self.proxy = self.start_proxy()
            self.proxy.start()
            self.bootstrap_index()
            if self.kibana_nodes > 0:
                self.simulator = self.start_simulator(self.kibana_nodes, run_ms=self.run_ms)
        except BaseException:
            self.stop()
            raise
        return self

    def start_proxy(self, tls: CertPair | None = None) -> ProxyProcess:
        """A compatibility proxy in front of the engine (with this bed's TLS and credentials, if any)."""
        if self.pki is None:
            return ProxyProcess(self.workdir, self.engine.url)
        creds = TLS_CREDENTIALS
        return ProxyProcess(
            self.workdir,
            self.engine.url,
            tls=tls or self.pki.server,
            ca=self.pki.ca,
            basic_auth=f"{creds['es_user']}:{creds['es_password']}",
            api_key=creds["es_api_key"],
        )

    def bootstrap_index(self) -> None:
        """Create ``.kibana_task_manager`` with Kibana's mapping (through the real client and proxy)."""
        from elastask.config import ElasticsearchSettings, Secret
        from elastask.parts.store import TaskStore, build_client

        if self.pki is None:
            settings = ElasticsearchSettings(host=self.es_url)
        else:
            settings = ElasticsearchSettings(
                host=self.es_url,
                ca_certs=str(self.pki.ca),
                username=TLS_CREDENTIALS["es_user"],
                password=Secret(TLS_CREDENTIALS["es_password"]),
            )
        client = build_client(settings)
        try:
            TaskStore(client, INDEX).bootstrap()
        finally:
            client.close()

    def start_simulator(self, nodes: int, *, direct: bool = False, **options: Any) -> SimulatorProcess:
        """Start (another) simulator writing outcomes through the proxy (``direct``: to the engine itself,
        so faults injected in the proxy hit elastask only)."""
        # With TLS, nodes write outcomes to the engine itself (only elastask's way in is secured here).
        engine = self.engine.url if direct or self.pki is not None else self.es_url
        if self.pki is not None:
            creds = TLS_CREDENTIALS
            tls_args = ["--tls-cert", str(self.pki.server.cert), "--tls-key", str(self.pki.server.key)]
            tls_args += ["--basic-auth", f"{creds['kibana_user']}:{creds['kibana_password']}"]
            options["extra_args"] = [*tls_args, *(options.get("extra_args") or [])]
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
        if self.pki is not None:
            creds, ca = TLS_CREDENTIALS, str(self.pki.ca)
            env.update(
                ELASTASK_ELASTICSEARCH_CA_CERTS=ca,
                ELASTASK_ELASTICSEARCH_USERNAME=creds["es_user"],
                ELASTASK_ELASTICSEARCH_PASSWORD=creds["es_password"],
                ELASTASK_REDIS_CA_CERTS=ca,
                ELASTASK_KIBANA_CA_CERTS=ca,
                ELASTASK_KIBANA_USERNAME=creds["kibana_user"],
                ELASTASK_KIBANA_PASSWORD=creds["kibana_password"],
            )
        return env

    def stop(self) -> None:
        """Stop everything this test bed started (safe to call twice)."""
        for part in (self.simulator, self.proxy):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # keep stopping the rest
                    log.exception("stopping %s failed", part)
        if not self.shared_engine:
            self.engine.stop()
        self.redis.stop()
        if self.own_workdir and not os.environ.get("ELASTASK_KEEP_TESTBED"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Testbed", "TestbedError"]

"""The Kibana HTTP client: ``POST /api/task_manager/_run_now``, ``GET /api/status`` and Kibana's
execution pause (``GET /internal/task_manager/execution/_status``).

What a push's answer means (accepted, refused, rejected, ambiguous) is decided in parts/push_outcome.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import certifi
import requests
import urllib3
import urllib3.exceptions

from elastask.config import KibanaNode, KibanaSettings
from elastask.parts.push_outcome import PushOutcome as PushOutcome
from elastask.parts.push_outcome import PushResult as PushResult
from elastask.parts.push_outcome import answered_push, failed_push
from elastask.parts.push_outcome import classify_status as classify_status

log = logging.getLogger(__name__)

RUN_NOW_PATH = "/api/task_manager/_run_now"
STATUS_PATH = "/api/status"
HEALTH_PATH = "/api/task_manager/_health"
#: Kibana's own pause of task execution (elastic/kibana PR #279122): internal, superuser only.
EXECUTION_STATUS_PATH = "/internal/task_manager/execution/_status"
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ExecutionControl:
    """What a node says of Kibana's own execution pause (one state for the whole Kibana: a saved
    object every node reads). ``answer``: ``read``; ``absent``, a Kibana without the route (404);
    ``refused``, it will not tell us (401/403: the route needs a superuser). ``detail`` says why."""

    answer: Literal["read", "absent", "refused"]
    paused: bool = False
    paused_types: tuple[str, ...] = ()
    updated_at: str | None = None
    updated_by: str | None = None
    detail: str = ""

    @property
    def readable(self) -> bool:
        return self.answer == "read"


class _Pusher(NamedTuple):
    """A node's pushes: the pool they go through, their request target, the URL named in errors, the headers."""

    pool: urllib3.PoolManager | urllib3.HTTPConnectionPool
    target: str
    url: str
    headers: dict[str, str]


class KibanaClient:
    """Talks to Kibana nodes over one pooled HTTP session."""

    def __init__(self, settings: KibanaSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        # With trust_env on, requests scans the environment (and ~/.netrc) on every request. The proxies
        # (HTTP(S)_PROXY unless NO_PROXY covers the node) and a CA bundle variable are read once per node
        # instead; credentials come from elastask.yaml only.
        self.session.trust_env = False
        self._proxies: dict[str, dict[str, str]] = {}
        self._env_ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        # Pushes (one per task, the hot path) go straight through urllib3, which requests wraps: its
        # request preparation (settings merged, cookies, hooks) cost more CPU than the request itself;
        # and to the node's own connection pool, its URL parsed and headers built once (``_pusher_for``).
        self._pools: dict[str, urllib3.PoolManager] = {}
        self._pushers: dict[str, _Pusher] = {}
        self._pools_lock = threading.Lock()
        self._push_timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=settings.request_timeout_s)
        adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
        self._pushers.clear()
        for pool in self._pools.values():
            pool.clear()

    def _pool_for(self, node: KibanaNode) -> urllib3.PoolManager:
        """One connection pool manager per node (its proxy and TLS settings), made once."""
        pool = self._pools.get(node.url)
        if pool is not None:
            return pool
        with self._pools_lock:
            pool = self._pools.get(node.url)
            if pool is None:
                options: dict[str, Any] = {"num_pools": 4, "maxsize": 32, "block": False, "retries": False}
                if node.url.startswith("https"):
                    if self.settings.verify_certs:
                        ca = self.settings.ca_certs or self._env_ca_bundle or certifi.where()
                        options.update(cert_reqs="CERT_REQUIRED", ca_certs=str(ca))
                    else:
                        options.update(cert_reqs="CERT_NONE", assert_hostname=False)
                proxy = self._proxies_for(node.url).get(urlsplit(node.url).scheme)
                pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                self._pools[node.url] = pool
        return pool

    def _pusher_for(self, node: KibanaNode) -> _Pusher:
        """Where a node's pushes go: its connection pool and the request target, made once.

        Without a proxy, the host's own pool and the path; through a proxy, the proxy's manager and
        the whole URL (it sends the request to the proxy, with the proxy's headers).
        """
        pusher = self._pushers.get(node.url)
        if pusher is None:
            manager = self._pool_for(node)
            url = node.url + RUN_NOW_PATH
            headers = self._push_headers(node)
            if isinstance(manager, urllib3.ProxyManager):
                pusher = _Pusher(manager, url, url, headers)
            else:
                parts = urlsplit(url)
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                pusher = _Pusher(manager.connection_from_url(url), target, url, headers)
            self._pushers[node.url] = pusher
        return pusher

    def _push_headers(self, node: KibanaNode) -> dict[str, str]:
        return {"kbn-xsrf": "elastask", "Content-Type": "application/json", **self._auth_headers(node)}

    @staticmethod
    def _auth_headers(node: KibanaNode) -> dict[str, str]:
        if node.api_key is not None:
            return {"Authorization": f"ApiKey {node.api_key.reveal()}"}
        if node.username is not None:
            password = node.password.reveal() if node.password else ""
            return dict(urllib3.util.make_headers(basic_auth=f"{node.username}:{password}"))
        return {}

    def _options(self, node: KibanaNode, read_timeout_s: float) -> dict[str, Any]:
        headers = {"kbn-xsrf": "elastask", "Content-Type": "application/json"}
        options: dict[str, Any] = {
            "timeout": (CONNECT_TIMEOUT_S, read_timeout_s),
            "headers": headers,
            "proxies": self._proxies_for(node.url),
        }
        if node.api_key is not None:
            headers["Authorization"] = f"ApiKey {node.api_key.reveal()}"
        elif node.username is not None:
            options["auth"] = (node.username, node.password.reveal() if node.password else "")
        if node.url.startswith("https"):
            ca = self.settings.ca_certs or self._env_ca_bundle or True
            options["verify"] = ca if self.settings.verify_certs else False
        return options

    def _proxies_for(self, url: str) -> dict[str, str]:
        found = self._proxies.get(url)
        if found is None:
            found = self._proxies[url] = dict(requests.utils.get_environ_proxies(url))
        return found

    def push(self, node: KibanaNode, body: Mapping[str, Any]) -> PushResult:
        """POST the task to the node's ``_run_now`` and classify the outcome."""
        pusher = self._pusher_for(node)
        url = pusher.url
        try:
            answer = pusher.pool.urlopen(
                "POST",
                pusher.target,
                body=json.dumps(body if isinstance(body, dict) else dict(body)).encode(),
                headers=pusher.headers,
                timeout=self._push_timeout,
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return failed_push(
                url, e, connect_timeout_s=CONNECT_TIMEOUT_S, read_timeout_s=self.settings.request_timeout_s
            )
        return answered_push(url, answer)

    def status_uuid(self, node: KibanaNode, timeout_s: float = 5.0) -> str:
        """The node's instance uuid from ``GET /api/status``; raises requests exceptions or ValueError."""
        answer = self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))
        answer.raise_for_status()
        uuid = answer.json().get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise ValueError(f"{node.url}{STATUS_PATH} answered without a uuid")
        return uuid

    def status(self, node: KibanaNode, timeout_s: float = 5.0) -> requests.Response:
        """``GET /api/status`` as it answered (``elastask check`` reads the answer); raises requests exceptions."""
        return self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))

    def task_manager_health(self, node: KibanaNode, timeout_s: float = 5.0) -> dict[str, Any]:
        """``GET /api/task_manager/_health``; raises requests exceptions, or ValueError when it is not JSON."""
        answer = self.session.get(node.url + HEALTH_PATH, **self._options(node, timeout_s))
        answer.raise_for_status()
        body = answer.json()
        if not isinstance(body, dict):
            raise ValueError(f"{node.url}{HEALTH_PATH} answered {type(body).__name__}, not an object")
        return body

    def uptime(self, node: KibanaNode, timeout_s: float = 2.0) -> Uptime | None:
        """How long the node's Kibana process has run (``metrics.process.uptime_in_millis`` of
        ``GET /api/status``) and how often Kibana samples it; None when it does not answer or does not
        say (an unauthenticated, redacted status). Asked of every node holding leases once a second
        (loops/retry/node_restarts.py): over its pushes' kept connections, not a requests session (CPU)."""
        try:
            answer = self._pool_for(node).request(
                "GET",
                node.url + STATUS_PATH,
                headers=self._auth_headers(node),
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout_s),
                redirect=False,
                retries=False,
            )
            metrics = json.loads(answer.data).get("metrics", {})
            uptime = metrics.get("process", {}).get("uptime_in_millis")
            every = metrics.get("collection_interval_in_millis", DEFAULT_OPS_INTERVAL_MS)
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError):
            return None
        if answer.status != 200 or not _number(uptime) or uptime < 0:
            return None
        return Uptime(int(uptime), int(every) if _number(every) and every >= 0 else DEFAULT_OPS_INTERVAL_MS)

    def execution_control(self, node: KibanaNode, timeout_s: float = 2.0) -> ExecutionControl | None:
        """Kibana's execution pause as this node reports it; None when it gave no usable answer (no
        connection, a timeout, 5xx, not the expected JSON): what was known before still holds."""
        url = node.url + EXECUTION_STATUS_PATH
        options = self._options(node, timeout_s)
        options["headers"]["x-elastic-internal-origin"] = "kibana"  # internal routes ask for it (9.x)
        try:
            answer = self.session.get(url, allow_redirects=False, **options)
        except requests.RequestException:
            return None
        if answer.status_code in (404, 405):
            return ExecutionControl(
                "absent", detail=f"GET {url} answered {answer.status_code}: this Kibana has no execution pause"
            )
        if answer.status_code in (401, 403):
            return ExecutionControl(
                "refused",
                detail=f"GET {url} answered {answer.status_code}: reading Kibana's execution pause needs a "
                "superuser's credentials (kibana.username / password or api_key in elastask.yaml)",
            )
        try:
            body = answer.json()
        except ValueError:
            return None
        if answer.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("paused"), bool):
            return None
        types = body.get("paused_task_types") or []
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            return None
        updated_at, updated_by = body.get("updated_at"), body.get("updated_by")
        return ExecutionControl(
            "read",
            paused=body["paused"],
            paused_types=tuple(types),
            updated_at=updated_at if isinstance(updated_at, str) else None,
            updated_by=updated_by if isinstance(updated_by, str) else None,
        )

    def is_available(self, node: KibanaNode, timeout_s: float = 2.0) -> bool:
        """True when ``GET /api/status`` answers 200 with overall level available (or degraded)."""
        try:
            answer = self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))
            level = answer.json().get("status", {}).get("overall", {}).get("level")
        except (requests.RequestException, ValueError, AttributeError):
            return False
        return answer.status_code == 200 and level in ("available", "degraded")


#: Kibana's ``ops.interval``: how often it samples the metrics ``/api/status`` shows.
DEFAULT_OPS_INTERVAL_MS = 5000


class Uptime(NamedTuple):
    """A Kibana process's uptime as its status shows it: sampled every ``sampled_every_ms``, so up to that
    old when it answers (the start it gives may be that much late)."""

    ms: int
    sampled_every_ms: int


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""The Kibana HTTP client: ``POST /api/task_manager/_run_now``, ``GET /api/status`` and Kibana's
execution pause (``GET /internal/task_manager/execution/_status``).

A push ends in one of four ways, and the difference decides whether an attempt is burned:

- ``accepted``: Kibana answered 2xx (204): it has the task; the lease is kept until Kibana writes
  the outcome or ``retryAt`` passes;
- ``refused``: it provably never started, for a reason of the node's, not the task's (connection
  refused or not established; 401/403, 404/405 (no such route), 408, 429, 500, 503; a redirect,
  never followed, since a login page answering 200 would look accepted): Kibana answers 204
  *before* it runs anything, so an error answer means no run. No attempt is burned and the node's
  circuit breaker counts it;
- ``rejected``: the node refused *this task* (any other 4xx: 400 a body it will not validate, 413
  a state over its payload limit, 422): it would be refused again, so the attempt is burned (the
  task fails after its maximum) and the node, which answered, stays in rotation;
- ``ambiguous``: the request may have arrived (timeout or connection lost after sending, or a
  gateway's 502/504, which may have forwarded it): the lease is kept until ``retryAt`` so the task
  is never run twice at once.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import ssl
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

log = logging.getLogger(__name__)

RUN_NOW_PATH = "/api/task_manager/_run_now"
STATUS_PATH = "/api/status"
HEALTH_PATH = "/api/task_manager/_health"
#: Kibana's own pause of task execution (elastic/kibana PR #279122): internal, superuser only.
EXECUTION_STATUS_PATH = "/internal/task_manager/execution/_status"
CONNECT_TIMEOUT_S = 3.0


class PushOutcome(enum.Enum):
    """How a push ended (see the module docstring)."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"


#: Answers about the node, not the task: the same push may succeed later or on another node.
NODE_STATUSES = frozenset({401, 403, 404, 405, 408, 429, 500, 501, 503})
#: A gateway in front of Kibana answered: it may have forwarded the push before failing.
GATEWAY_STATUSES = frozenset({502, 504})


def classify_status(status_code: int) -> PushOutcome:
    """The outcome of a push Kibana (or something in front of it) answered with this status."""
    if 200 <= status_code < 300:
        return PushOutcome.ACCEPTED
    if status_code in GATEWAY_STATUSES:
        return PushOutcome.AMBIGUOUS
    if 400 <= status_code < 500 and status_code not in NODE_STATUSES:
        return PushOutcome.REJECTED
    return PushOutcome.REFUSED


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push, with what an operator needs to know."""

    outcome: PushOutcome
    detail: str
    status_code: int | None = None
    connection_refused: bool = False


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
        # With trust_env on, requests reads the proxy variables (and ~/.netrc) from the environment on
        # every request: a scan of every variable per push, about a quarter of a push's CPU here. The
        # proxies (HTTP(S)_PROXY unless NO_PROXY covers the node) and a CA bundle variable are read
        # once per node instead; credentials come from elastask.yaml only.
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
        headers = {"kbn-xsrf": "elastask", "Content-Type": "application/json"}
        if node.api_key is not None:
            headers["Authorization"] = f"ApiKey {node.api_key.reveal()}"
        elif node.username is not None:
            password = node.password.reveal() if node.password else ""
            headers.update(urllib3.util.make_headers(basic_auth=f"{node.username}:{password}"))
        return headers

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
        except urllib3.exceptions.NewConnectionError:  # before ConnectTimeoutError: it subclasses it
            return PushResult(PushOutcome.REFUSED, f"{url}: connection refused", connection_refused=True)
        except urllib3.exceptions.ConnectTimeoutError as e:
            return PushResult(PushOutcome.REFUSED, f"{url}: no connection within {CONNECT_TIMEOUT_S}s ({e})")
        except urllib3.exceptions.ReadTimeoutError:
            return PushResult(
                PushOutcome.AMBIGUOUS, f"{url}: no answer within {self.settings.request_timeout_s}s after sending"
            )
        except urllib3.exceptions.SSLError as e:
            if _in_tls_handshake(e):  # nothing reached Kibana
                return PushResult(PushOutcome.REFUSED, f"{url}: {type(e).__name__}: {_root(e)}")
            # A TLS error while reading the answer: the push was sent, Kibana may run it.
            return PushResult(PushOutcome.AMBIGUOUS, f"{url}: TLS error after sending ({_root(e)})")
        except (urllib3.exceptions.ProxyError, urllib3.exceptions.LocationParseError) as e:
            # The proxy failed, or the URL is wrong: nothing reached Kibana.
            return PushResult(PushOutcome.REFUSED, f"{url}: {type(e).__name__}: {_root(e)}")
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return PushResult(PushOutcome.AMBIGUOUS, f"{url}: connection lost after sending ({_root(e)})")
        code = answer.status
        if 300 <= code < 400:
            return PushResult(
                PushOutcome.REFUSED,
                f"{url}: answered {code}, a redirect to {answer.headers.get('Location')!r} (not followed: point "
                "kibana.hosts at the Kibana node itself, with its base path)",
                code,
            )
        outcome = classify_status(code)
        if outcome is PushOutcome.ACCEPTED:
            return PushResult(outcome, f"{url}: {code}", code)
        hint = {401: " (check kibana credentials)", 403: " (check kibana credentials)"}.get(code, "")
        if code in (404, 405):
            hint = " (no _run_now route: is this node on the external-task-manager branch?)"
        return PushResult(outcome, f"{url}: answered {code} {answer.reason}{hint}{_kibana_message(answer.data)}", code)

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
        say (an unauthenticated, redacted status)."""
        try:
            answer = self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))
            metrics = answer.json().get("metrics", {})
            uptime = metrics.get("process", {}).get("uptime_in_millis")
            every = metrics.get("collection_interval_in_millis", DEFAULT_OPS_INTERVAL_MS)
        except (requests.RequestException, ValueError, AttributeError):
            return None
        if answer.status_code != 200 or not _number(uptime) or uptime < 0:
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


def _kibana_message(data: bytes) -> str:
    """Kibana's own error message, short: never the body as a whole, which may echo the task's params."""
    try:
        body = json.loads(data)
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        return ""
    return f": {message[:MESSAGE_CHARS]}{'...' if len(message) > MESSAGE_CHARS else ''}"


#: How much of Kibana's error message a push result keeps (logs, failure reasons).
MESSAGE_CHARS = 120


#: Kibana's ``ops.interval``: how often it samples the metrics ``/api/status`` shows.
DEFAULT_OPS_INTERVAL_MS = 5000


class Uptime(NamedTuple):
    """A Kibana process's uptime as its status shows it: sampled every ``sampled_every_ms``, so up to that
    old when it answers (the start it gives may be that much late)."""

    ms: int
    sampled_every_ms: int


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_tls_handshake(error: BaseException) -> bool:
    """True when a TLS error came from the handshake (or the certificate checks after it), before any
    byte of the request was sent; False when it came later, while the request or its answer travelled."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError | ssl.CertificateError):
            return True
        frame = current.__traceback__
        while frame is not None:
            if frame.tb_frame.f_code.co_name in ("do_handshake", "_match_hostname", "match_hostname"):
                return True
            frame = frame.tb_next
        current = current.__cause__ or current.__context__
    return False


def _root(error: BaseException) -> str:
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return f"{type(error).__name__}: {error}"

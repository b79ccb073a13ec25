"""The Kibana HTTP client: ``POST /api/task_manager/_run_now`` and ``GET /api/status``.

A push ends in one of three ways, and the difference decides whether an attempt is burned:

- ``accepted``: Kibana answered 2xx (204): it has the task; the lease is kept until Kibana writes
  the outcome or ``retryAt`` passes;
- ``refused``: it provably never started (connection refused or not established, or an HTTP error
  answer — Kibana answers 204 *before* it runs anything, so an error answer means no run);
- ``ambiguous``: the request may have arrived (timeout or connection lost after sending): the lease
  is kept until ``retryAt`` so the task is never run twice at once.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from elastask.config import KibanaNode, KibanaSettings

log = logging.getLogger(__name__)

RUN_NOW_PATH = "/api/task_manager/_run_now"
STATUS_PATH = "/api/status"
CONNECT_TIMEOUT_S = 3.0


class PushOutcome(enum.Enum):
    """How a push ended (see the module docstring)."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push, with what an operator needs to know."""

    outcome: PushOutcome
    detail: str
    status_code: int | None = None
    connection_refused: bool = False


class KibanaClient:
    """Talks to Kibana nodes over one pooled HTTP session."""

    def __init__(self, settings: KibanaSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _options(self, node: KibanaNode, read_timeout_s: float) -> dict[str, Any]:
        headers = {"kbn-xsrf": "elastask", "Content-Type": "application/json"}
        options: dict[str, Any] = {"timeout": (CONNECT_TIMEOUT_S, read_timeout_s), "headers": headers}
        if node.api_key is not None:
            headers["Authorization"] = f"ApiKey {node.api_key.reveal()}"
        elif node.username is not None:
            options["auth"] = (node.username, node.password.reveal() if node.password else "")
        if node.url.startswith("https"):
            options["verify"] = (self.settings.ca_certs or True) if self.settings.verify_certs else False
        return options

    def push(self, node: KibanaNode, body: Mapping[str, Any]) -> PushResult:
        """POST the task to the node's ``_run_now`` and classify the outcome."""
        url = node.url + RUN_NOW_PATH
        try:
            answer = self.session.post(url, json=dict(body), **self._options(node, self.settings.request_timeout_s))
        except requests.exceptions.ConnectTimeout as e:
            return PushResult(PushOutcome.REFUSED, f"{url}: no connection within {CONNECT_TIMEOUT_S}s ({e})")
        except requests.exceptions.ReadTimeout:
            return PushResult(
                PushOutcome.AMBIGUOUS, f"{url}: no answer within {self.settings.request_timeout_s}s after sending"
            )
        except requests.exceptions.ConnectionError as e:
            if _never_connected(e):
                return PushResult(PushOutcome.REFUSED, f"{url}: connection refused", connection_refused=True)
            return PushResult(PushOutcome.AMBIGUOUS, f"{url}: connection lost after sending ({_root(e)})")
        except requests.RequestException as e:
            return PushResult(PushOutcome.AMBIGUOUS, f"{url}: {type(e).__name__}: {_root(e)}")
        if 200 <= answer.status_code < 300:
            return PushResult(PushOutcome.ACCEPTED, f"{url}: {answer.status_code}", answer.status_code)
        hint = " (check kibana credentials)" if answer.status_code in (401, 403) else ""
        return PushResult(
            PushOutcome.REFUSED,
            f"{url}: answered {answer.status_code} {answer.reason}{hint}: {answer.text[:200]!r}",
            answer.status_code,
        )

    def status_uuid(self, node: KibanaNode, timeout_s: float = 5.0) -> str:
        """The node's instance uuid from ``GET /api/status``; raises requests exceptions or ValueError."""
        answer = self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))
        answer.raise_for_status()
        uuid = answer.json().get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise ValueError(f"{node.url}{STATUS_PATH} answered without a uuid")
        return uuid

    def is_available(self, node: KibanaNode, timeout_s: float = 2.0) -> bool:
        """True when ``GET /api/status`` answers 200 with overall level available (or degraded)."""
        try:
            answer = self.session.get(node.url + STATUS_PATH, **self._options(node, timeout_s))
            level = answer.json().get("status", {}).get("overall", {}).get("level")
        except (requests.RequestException, ValueError, AttributeError):
            return False
        return answer.status_code == 200 and level in ("available", "degraded")


def _root(error: BaseException) -> str:
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return f"{type(error).__name__}: {error}"


def _never_connected(error: requests.exceptions.ConnectionError) -> bool:
    """True when the TCP connection was never established (refused, unreachable, DNS)."""
    reason: Any = error.args[0] if error.args else None
    inner = getattr(reason, "reason", reason)
    return isinstance(
        inner, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError)
    )

"""What a Kibana node's answer to a push means: its outcome, and what an operator is told of it.

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
import ssl
from dataclasses import dataclass

import urllib3
import urllib3.exceptions


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

    @property
    def known(self) -> bool:
        """Whether it is known if Kibana runs the task (every outcome but ambiguous)."""
        return self.outcome is not PushOutcome.AMBIGUOUS


def failed_push(
    url: str, error: urllib3.exceptions.HTTPError | OSError, *, connect_timeout_s: float, read_timeout_s: float
) -> PushResult:
    """The outcome of a push whose request raised: refused where nothing can have reached Kibana, else ambiguous."""
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # before ConnectTimeoutError: it subclasses it
        return PushResult(PushOutcome.REFUSED, f"{url}: connection refused", connection_refused=True)
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return PushResult(PushOutcome.REFUSED, f"{url}: no connection within {connect_timeout_s}s ({error})")
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return PushResult(PushOutcome.AMBIGUOUS, f"{url}: no answer within {read_timeout_s}s after sending")
    if isinstance(error, urllib3.exceptions.SSLError):
        if in_tls_handshake(error):  # nothing reached Kibana
            return PushResult(PushOutcome.REFUSED, f"{url}: {type(error).__name__}: {root_cause(error)}")
        # A TLS error while reading the answer: the push was sent, Kibana may run it.
        return PushResult(PushOutcome.AMBIGUOUS, f"{url}: TLS error after sending ({root_cause(error)})")
    if isinstance(error, urllib3.exceptions.ProxyError | urllib3.exceptions.LocationParseError):
        # The proxy failed, or the URL is wrong: nothing reached Kibana.
        return PushResult(PushOutcome.REFUSED, f"{url}: {type(error).__name__}: {root_cause(error)}")
    return PushResult(PushOutcome.AMBIGUOUS, f"{url}: connection lost after sending ({root_cause(error)})")


def answered_push(url: str, answer: urllib3.BaseHTTPResponse) -> PushResult:
    """The outcome of a push Kibana (or something in front of it) answered, with a hint for the usual mistakes."""
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
    return PushResult(outcome, f"{url}: answered {code} {answer.reason}{hint}{kibana_message(answer.data)}", code)


def kibana_message(data: bytes) -> str:
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


def in_tls_handshake(error: BaseException) -> bool:
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


def root_cause(error: BaseException) -> str:
    """The innermost error of a chain, named with its type."""
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return f"{type(error).__name__}: {error}"

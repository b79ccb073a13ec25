"""What went wrong reaching a server, in words a person can act on: TLS, credentials, wrong scheme.

The clients (elasticsearch, requests, redis) wrap the ``ssl`` error several layers deep; this walks
the chain and reads the ssl error's own fields (``verify_code``, ``reason``), never the message text
of elastask's own errors. Used by ``elastask check``, one row per server.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

#: OpenSSL verify codes (x509_vfy.h).
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}  # issuer not found, self-signed (in chain), unable to verify leaf
_EXPIRED = {10}
_NOT_YET_VALID = {9}
_HOSTNAME_MISMATCH = {62, 64}
#: OpenSSL reasons when a TLS client reaches a port that does not speak TLS.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}


@dataclass(frozen=True)
class Explanation:
    """What is wrong, and what to change."""

    detail: str
    fix: str


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and every error it wraps (cause, context, ``reason``, ``errors``, exception arguments)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested: list[object] = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += list(getattr(current, "errors", ()) or ())
        nested += list(current.args)
        todo += [e for e in nested if isinstance(e, BaseException)]


def explain(error: BaseException, url: str, prefix: str) -> Explanation | None:
    """An explanation for a TLS or scheme failure reaching ``url`` (settings under ``prefix``), else None."""
    errors = list(_chain(error))
    for e in errors:
        if isinstance(e, ssl.SSLCertVerificationError):
            code = e.verify_code
            if code in _UNKNOWN_ISSUER:
                return Explanation(
                    f"{url}: its TLS certificate is signed by a CA elastask does not trust ({e.verify_message})",
                    f"give the CA that signed it as {prefix}.ca_certs (verification stays on)",
                )
            if code in _EXPIRED or code in _NOT_YET_VALID:
                return Explanation(
                    f"{url}: its TLS certificate is {'expired' if code in _EXPIRED else 'not valid yet'}",
                    "renew the server's certificate (and check the clocks)",
                )
            if code in _HOSTNAME_MISMATCH:
                return Explanation(
                    f"{url}: its TLS certificate is not for this host name ({e.verify_message})",
                    "use the host name the certificate names, or add this one to its subjectAltName",
                )
            return Explanation(f"{url}: TLS certificate rejected ({e.verify_message})", f"check {prefix}.ca_certs")
    for e in errors:
        # urllib3 checks host names itself (IP addresses): its own CertificateError, a ValueError.
        if type(e).__name__ == "CertificateError" or isinstance(e, ssl.CertificateError):
            return Explanation(
                f"{url}: its TLS certificate is not for this host name ({e})",
                "use the host name the certificate names, or add this one to its subjectAltName",
            )
    for e in errors:
        if isinstance(e, ssl.SSLError) and (e.reason or "") in _NOT_TLS:
            return Explanation(
                f"{url}: the port does not speak TLS ({e.reason})",
                f"use {'http://' if url.startswith('https') else 'redis://'} for it, or enable TLS on the server",
            )
    plain = url.startswith(("http://", "redis://"))
    if plain and any(isinstance(e, (ConnectionResetError, ConnectionAbortedError)) or _closed(e) for e in errors):
        return Explanation(
            f"{url}: the server closed the connection at once (does the port speak TLS?)",
            f"use {'https://' if url.startswith('http://') else 'rediss://'} and {prefix}.ca_certs",
        )
    return None


def _closed(error: BaseException) -> bool:
    name = type(error).__name__
    return name in ("RemoteDisconnected", "ProtocolError") or "Connection closed by server" in str(error)

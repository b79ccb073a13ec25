"""The Elasticsearch compatibility proxy in front of the test bed's OpenSearch, with fault injection.

The official ``elasticsearch`` 8.x client sends ``application/vnd.elasticsearch+json;
compatible-with=8`` media types and refuses any answer without ``X-Elastic-Product:
Elasticsearch``. This proxy rewrites the first to plain JSON / NDJSON and adds the second; the
wire protocol is otherwise the same. Faults are set at run time through ``/_proxy/faults``:

    POST /_proxy/faults {"down": true}             every request's connection is dropped
    POST /_proxy/faults {"latency_ms": 2000}       every request waits first
    POST /_proxy/faults {"status": 429}            every request answers 429 (or 503, ...)
    POST /_proxy/faults {}                         back to normal

``GET /_proxy/stats`` counts the requests forwarded, by kind (search, get, bulk, ...), and those delayed
by an injected latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import ssl
import sys
from collections import Counter
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

_MEDIA = re.compile(r"application/vnd\.elasticsearch\+(json|x-ndjson)\s*;\s*compatible-with=\d+")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=8`` -> ``application/json`` (and NDJSON)."""
    return _MEDIA.sub(lambda m: "application/" + m.group(1), value)


def request_kind(method: str, path: str) -> str:
    """The engine operation a request is, for the stats: search, get, mget, bulk, update, ..."""
    parts = [p for p in path.split("/") if p]
    for part in reversed(parts):
        if part.startswith("_"):
            name = part[1:]
            if name in ("doc", "create") and method == "DELETE":
                return "delete"
            if name in ("doc", "create"):
                return "get" if method in ("GET", "HEAD") else "index"
            return name
    return "other" if parts else "root"


class CompatibilityProxy:
    """Forwards every request to ``upstream`` with the rewrites, unless a fault is set."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.delayed = 0
        self.session: ClientSession | None = None

    async def startup(self, _app: web.Application) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=256), timeout=ClientTimeout(total=300), auto_decompress=False
        )

    async def cleanup(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def set_faults(self, request: web.Request) -> web.Response:
        self.faults = await request.json() if request.can_read_body else {}
        return web.json_response({"faults": self.faults})

    async def stats(self, _request: web.Request) -> web.Response:
        counts = {"requests": dict(self.counts), "total": sum(self.counts.values()), "delayed": self.delayed}
        return web.json_response(counts)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        if faults.get("down"):
            # Drop the connection without an answer: the client sees a connection error.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        if faults.get("latency_ms"):
            self.delayed += 1
            await asyncio.sleep(float(faults["latency_ms"]) / 1000)
        if faults.get("status"):
            status = int(faults["status"])
            body = {
                "error": {"type": "injected_fault", "reason": f"fault injected by the test bed: {status}"},
                "status": status,
            }
            return web.json_response(body, status=status, headers={"X-Elastic-Product": "Elasticsearch"})
        self.counts[request_kind(request.method, request.path)] += 1
        headers = {k: plain_media_type(v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        # aiohttp would otherwise ask for gzip on the caller's behalf and pass it back undecoded.
        headers.setdefault("Accept-Encoding", request.headers.get("Accept-Encoding", "identity"))
        request_body = await request.read()
        assert self.session is not None
        async with self.session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers, data=request_body or None
        ) as answer:
            payload = await answer.read()
            out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            if "Content-Encoding" in answer.headers:
                out_headers["Content-Encoding"] = answer.headers["Content-Encoding"]
            out_headers["X-Elastic-Product"] = "Elasticsearch"
            return web.Response(status=answer.status, body=payload, headers=out_headers)


def require_credentials(accepted: set[str]) -> Any:
    """Elasticsearch's security: every request but the proxy's own control API needs accepted credentials."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        guarded = accepted and not request.path.startswith("/_proxy/")
        if guarded and request.headers.get("Authorization", "") not in accepted:
            body = {
                "error": {
                    "type": "security_exception",
                    "reason": "unable to authenticate user for REST request [" + request.path + "]",
                },
                "status": 401,
            }
            headers = {"WWW-Authenticate": 'Basic realm="security", ApiKey', "X-Elastic-Product": "Elasticsearch"}
            return web.json_response(body, status=401, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    return check


def accepted_credentials(basic_auth: str, api_key: str) -> set[str]:
    """The Authorization headers the proxy accepts: ``Basic`` for user:password, ``ApiKey`` for id:key."""
    accepted = set()
    if basic_auth:
        accepted.add("Basic " + base64.b64encode(basic_auth.encode()).decode())
    if api_key:
        accepted.add("ApiKey " + base64.b64encode(api_key.encode()).decode())
    return accepted


def build_app(upstream: str, accepted: set[str] | None = None) -> web.Application:
    """The proxy as an aiohttp application."""
    proxy = CompatibilityProxy(upstream)
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[require_credentials(accepted or set())])
    app.on_startup.append(proxy.startup)
    app.on_cleanup.append(proxy.cleanup)
    app.router.add_post("/_proxy/faults", proxy.set_faults)
    app.router.add_get("/_proxy/stats", proxy.stats)
    app.router.add_route("*", "/{tail:.*}", proxy.forward)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m elastask_bed.testbed.proxy --port P --upstream URL``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="... and this key")
    parser.add_argument("--basic-auth", default="", metavar="USER:PASSWORD", help="require these credentials")
    parser.add_argument("--api-key", default="", metavar="ID:KEY", help="or this API key (Authorization: ApiKey)")
    args = parser.parse_args(argv)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    scheme = "https" if context else "http"
    print(json.dumps({"proxy": f"{scheme}://127.0.0.1:{args.port}", "upstream": args.upstream}), flush=True)
    app = build_app(args.upstream, accepted_credentials(args.basic_auth, args.api_key))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, ssl_context=context)


if __name__ == "__main__":
    main(sys.argv[1:])

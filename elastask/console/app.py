"""``elastask serve``: the console (``/console``), Prometheus ``/metrics`` and ``/health``, on Tornado.

One process, one port. The page and its script are shipped in the package (console/static: no CDN,
air-gapped clusters included). Reads need no login, as ``/metrics`` and ``/health``; every control
needs a login (console/access.py), Tornado's CSRF token (``xsrf_cookies``) and a same-origin request,
and is off entirely when the console is read-only. Redis, engine and Kibana calls run on a thread
pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from prometheus_client import CollectorRegistry, generate_latest

from elastask.console.access import Access
from elastask.console.controls import audited
from elastask.console.state import ConsoleState
from elastask.ops import admin
from elastask.ops.exporter import ElastaskCollector
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
USER_COOKIE = "elastask_console_user"
#: A login lasts this long (days; Tornado's signed-cookie age).
LOGIN_DAYS = 1

T = TypeVar("T")


class Base(tornado.web.RequestHandler):
    @property
    def rt(self) -> Runtime:
        return self.application.settings["elastask_runtime"]  # type: ignore[no-any-return]

    @property
    def state(self) -> ConsoleState:
        return self.application.settings["elastask_state"]  # type: ignore[no-any-return]

    @property
    def access(self) -> Access:
        return self.application.settings["elastask_access"]  # type: ignore[no-any-return]

    async def off_loop(self, fn: Callable[[], T]) -> T:
        pool: ThreadPoolExecutor = self.application.settings["elastask_pool"]
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    def get_current_user(self) -> str | None:
        if self.access.why_read_only() is not None:
            return None
        value = self.get_signed_cookie(USER_COOKIE, max_age_days=LOGIN_DAYS)
        return None if value is None else value.decode()

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        )

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.write_json({"ok": False, "message": self._reason}, status_code)


class Page(Base):
    def get(self) -> None:
        self.xsrf_token  # noqa: B018 - sets the _xsrf cookie the page's controls send back
        self.set_header("Cache-Control", "no-store")
        self.render(
            "console.html",
            user=self.current_user,
            read_only=self.access.why_read_only(),
            xsrf=self.xsrf_token.decode(),
        )


class Login(Base):
    def get(self) -> None:
        self.xsrf_token  # noqa: B018
        self.render("login.html", error=None, read_only=self.access.why_read_only(), username="")

    async def post(self) -> None:
        username, password = self.get_body_argument("username", ""), self.get_body_argument("password", "")
        if not self.access.admits(username, password):
            log.warning("console: failed login as %r from %s", username, self.request.remote_ip)
            await asyncio.sleep(1)  # a guesser gets one try a second per connection
            self.set_status(403)
            error = self.access.why_read_only() or "wrong username or password"
            self.render("login.html", error=error, read_only=self.access.why_read_only(), username=username)
            return
        log.info("console: %s logged in from %s", username, self.request.remote_ip)
        self.set_signed_cookie(
            USER_COOKIE, username, expires_days=LOGIN_DAYS, httponly=True, samesite="Strict", path="/console"
        )
        self.redirect("/console")


class Logout(Base):
    def post(self) -> None:
        if self.current_user:
            log.info("console: %s logged out", self.current_user)
        self.clear_cookie(USER_COOKIE, path="/console")
        self.redirect("/console")


class State(Base):
    async def get(self) -> None:
        snapshot = await self.off_loop(self.state.snapshot)
        self.write_json(
            {
                **snapshot,
                "user": self.current_user,
                "read_only": self.access.why_read_only(),
                "controls": bool(self.current_user),
            }
        )


class Failed(Base):
    async def get(self) -> None:
        rows = await self.off_loop(lambda: admin.failed_tasks(self.rt, size=1000))
        self.write_json({"failed": rows})


class Action(Base):
    async def post(self) -> None:
        # Tornado has checked the CSRF token (header X-XSRFToken against the _xsrf cookie) before this.
        why = self.access.why_read_only()
        if why is not None:
            self.write_json({"ok": False, "message": why}, 403)
            return
        if not self.current_user:
            self.write_json({"ok": False, "message": "log in first (/console/login)"}, 401)
            return
        try:
            request = json.loads(self.request.body or b"{}")
        except ValueError:
            self.write_json({"ok": False, "message": "the body must be JSON: {action, target}"}, 400)
            return
        if not isinstance(request, dict):
            self.write_json({"ok": False, "message": "the body must be a JSON object: {action, target}"}, 400)
            return
        who, source = str(self.current_user), str(self.request.remote_ip)
        result = await self.off_loop(lambda: audited(self.rt, request, who, source))
        self.state.invalidate()
        self.write_json(result, 200 if result["ok"] else 409)


class Metrics(Base):
    async def get(self) -> None:
        registry: CollectorRegistry = self.application.settings["elastask_registry"]
        body = await self.off_loop(lambda: generate_latest(registry))
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(body)


class Health(Base):
    async def get(self) -> None:
        report = await self.off_loop(self.state.health)
        self.set_status(503 if report["status"] == "error" else 200)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(report, indent=2))


class NotFound(Base):
    def prepare(self) -> None:
        self.write_json({"error": "try /console, /metrics or /health"}, 404)


def make_app(rt: Runtime, access: Access | None = None, cookie_secret: bytes | None = None) -> tornado.web.Application:
    """The application; ``cookie_secret`` signs logins (a new random one per process by default:
    a restart of ``elastask serve`` logs everyone out)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ElastaskCollector(rt))
    return tornado.web.Application(
        [
            (r"/", tornado.web.RedirectHandler, {"url": "/console"}),
            (r"/console/?", Page),
            (r"/console/login", Login),
            (r"/console/logout", Logout),
            (r"/console/api/state", State),
            (r"/console/api/failed", Failed),
            (r"/console/api/action", Action),
            (r"/metrics", Metrics),
            (r"/health", Health),
        ],
        default_handler_class=NotFound,
        template_path=str(STATIC),
        static_path=str(STATIC),
        static_url_prefix="/console/static/",
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Strict", "httponly": False},
        cookie_secret=cookie_secret or secrets.token_bytes(32),
        login_url="/console/login",
        elastask_runtime=rt,
        elastask_state=ConsoleState(rt),
        elastask_access=access or Access.from_settings(rt.settings),
        elastask_registry=registry,
        elastask_pool=ThreadPoolExecutor(max_workers=8, thread_name_prefix="elastask-serve"),
        log_function=_log_request,
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log.log(level, "%d %s %.0fms", status, handler._request_summary(), 1000 * handler.request.request_time())


def serve(rt: Runtime, host: str, port: int) -> None:
    """Serve until interrupted."""

    async def main() -> None:
        app = make_app(rt)
        app.listen(port, address=host)
        log.info("serving /console, /metrics and /health on http://%s:%d", host, port)
        await asyncio.Event().wait()

    asyncio.run(main())

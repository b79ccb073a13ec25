"""Kibana's execution pause on a simulated node (elastic/kibana PR #279122), one state per simulator.

``GET /internal/task_manager/execution/_status``, ``POST .../_pause`` and ``POST .../_resume`` with
the body and answer Kibana's routes have (``task_manager/server/routes/execution_control.ts``):
``{"task_types": [...]}`` optional (absent: everything), answered with ``paused``,
``paused_task_types``, ``updated_at`` and ``updated_by``. A pause without types sets ``paused`` and
keeps the types; a resume without types clears both. Like Kibana's (a saved object every node
reads), the state is one for every node of the simulator. Internal routes: a request without
``x-elastic-internal-origin`` is refused (400), as Kibana 9 refuses it. The simulator's own
claimers and ``_run_now`` do not look at it: it is what elastask must honour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from elastask.core.intervals import format_date

BASE = "/internal/task_manager/execution"


@dataclass
class ExecutionControlState:
    paused: bool = False
    paused_task_types: list[str] = field(default_factory=list)
    updated_at: str = "1970-01-01T00:00:00.000Z"
    updated_by: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "paused_task_types": list(self.paused_task_types),
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def add_routes(app: web.Application, state: ExecutionControlState) -> None:
    async def status(request: web.Request) -> web.Response:
        return _refused(request) or web.json_response(state.body())

    async def pause(request: web.Request) -> web.Response:
        refused = _refused(request)
        if refused:
            return refused
        types = await _task_types(request)
        if types is None:
            state.paused = True
        else:
            state.paused_task_types = sorted({*state.paused_task_types, *types})
        _changed(state)
        return web.json_response(state.body())

    async def resume(request: web.Request) -> web.Response:
        refused = _refused(request)
        if refused:
            return refused
        types = await _task_types(request)
        if types is None:
            state.paused, state.paused_task_types = False, []
        else:
            state.paused_task_types = [t for t in state.paused_task_types if t not in types]
        _changed(state)
        return web.json_response(state.body())

    app.router.add_get(f"{BASE}/_status", status)
    app.router.add_post(f"{BASE}/_pause", pause)
    app.router.add_post(f"{BASE}/_resume", resume)


def _refused(request: web.Request) -> web.Response | None:
    if request.headers.get("x-elastic-internal-origin"):
        return None
    message = f"uri [{request.path}] with method [{request.method.lower()}] exists but is not available"
    return web.json_response({"statusCode": 400, "error": "Bad Request", "message": message}, status=400)


async def _task_types(request: web.Request) -> list[str] | None:
    text = await request.text()
    body = json.loads(text) if text.strip() else None
    types = body.get("task_types") if isinstance(body, dict) else None
    return [str(t) for t in types] if types else None


def _changed(state: ExecutionControlState) -> None:
    state.updated_at = format_date(datetime.now(UTC))
    state.updated_by = "elastic"

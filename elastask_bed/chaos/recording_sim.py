"""The chaos run's simulated Kibana nodes: the simulator, with every run recorded and nodes that can crash.

``python -m elastask_bed.chaos.recording_sim`` takes the simulator's options (server.py) and adds to
its control API:

    GET  /_chaos/runs               every run each node started: task, node, times, outcome
    POST /_chaos/nodes/{i}/crash    the node dies mid-run: its port closes, its runs stop without an
                                    outcome, its buffered outcome writes are lost
                                    (POST /_sim/nodes/{i}/mode {"mode": "ok"} brings it back as a
                                    new process: its uptime in GET /api/status starts again)
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from contextvars import ContextVar
from datetime import datetime
from typing import Any, cast
from urllib.parse import quote

from aiohttp import web

from elastask.core.intervals import parse_date
from elastask_bed.simulator import server
from elastask_bed.simulator.node import Outcome, SimulatedNode
from elastask_bed.simulator.outcomes import Operation, write_outcomes

log = logging.getLogger(__name__)

#: The record of the run the current asyncio task is running (each run is a task of its own).
_RUN: ContextVar[dict[str, Any] | None] = ContextVar("chaos_run", default=None)


def _epoch(text: Any) -> float | None:
    try:
        return parse_date(text).timestamp()
    except (ValueError, TypeError):
        return None


def _task_id(operation: Operation) -> str:
    return str(operation.get("remove") or operation.get("update"))


class RecordingNode(SimulatedNode):
    """A simulated node that keeps a record of every run it starts and can crash."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[dict[str, Any]] = []
        #: Crashed and not back yet: coming back is a new Kibana process (its uptime starts again).
        self.down = False
        #: Task id -> the record of its finished run whose outcome write is not answered yet.
        self.awaiting_outcome: dict[str, dict[str, Any]] = {}

    async def run(self, body: dict[str, Any], received: datetime, outcome: Outcome | None = None) -> None:
        record: dict[str, Any] = {
            "task": body["id"],
            "node": self.index,
            "type": str(body.get("taskType")),
            "recurring": isinstance(body.get("schedule"), dict),
            "attempts": body.get("attempts"),
            "run_at": _epoch(body.get("runAt")),
            "received": received.timestamp(),
            "started": time.time(),
            "end": None,
            "ok": None,
            "outcome_ok": None,
            "crashed": False,
        }
        self.runs.append(record)
        _RUN.set(record)
        try:
            await super().run(body, received, outcome)
        except asyncio.CancelledError:
            record["crashed"] = True
            if record["end"] is None:  # cut off mid-run: the node's counters never saw it end
                record["end"] = time.time()
                kind = (self.shared.group_of(record["type"]), self.shared.cost_of(record["type"]))
                self.stats.run_ended(failed=True, kind=kind)
            raise

    async def _execute(self, task_id: str, task_type: str) -> bool:
        ok = await super()._execute(task_id, task_type)
        record = _RUN.get()
        if record is not None:
            record.update(end=time.time(), ok=ok)
            if ok:
                self.awaiting_outcome[task_id] = record
        return ok

    async def _write_outcomes(self, operations: list[Operation]) -> None:
        """The simulator's outcome write, noting for each run whether the engine acknowledged it."""
        index_url = f"{self.shared.engine_url}/{quote(self.shared.index, safe='')}"
        try:
            results = await write_outcomes(self.shared.session, index_url, operations)
        except Exception:
            self._note_outcomes(operations, [False] * len(operations))
            raise  # the buffered store counts and logs it
        self._note_outcomes(operations, results)
        for ok in results:
            if ok:
                self.stats.outcomes_written += 1
            else:
                self.stats.outcome_write_errors += 1
                log.error("%s: an outcome write was not acknowledged (document gone, or refused)", self.name)

    def _note_outcomes(self, operations: list[Operation], results: list[bool]) -> None:
        for operation, ok in zip(operations, results, strict=True):
            record = self.awaiting_outcome.pop(_task_id(operation), None)
            if record is not None:
                record.update(outcome_ok=ok, outcome_at=time.time())

    async def set_mode(self, mode: str, delay_s: float | None = None) -> None:
        """As the simulator's, and leaving the refusal of a crash starts a new process."""
        if self.down and mode != "refuse":
            self.down = False
            self.process_started = time.time()
        await super().set_mode(mode, delay_s)

    async def crash(self) -> int:
        """Die as a Kibana process does: port closed, runs cut off, buffered outcomes lost; the runs cut."""
        await self.set_mode("refuse")
        self.down = True
        running = list(self.tasks)
        for task in running:
            task.cancel()
        dropped, self.outcomes.pending = self.outcomes.pending, []
        self._note_outcomes([op for op, _ in dropped], [False] * len(dropped))
        log.warning(
            "%s: crashed with %d run(s) in progress, %d outcome(s) unwritten", self.name, len(running), len(dropped)
        )
        return len(running)


class ChaosSimulator(server.Simulator):
    """The simulator's control API plus the run records and the crash."""

    def build_control_app(self) -> web.Application:
        app = super().build_control_app()
        app.router.add_get("/_chaos/runs", self.list_runs)
        app.router.add_post("/_chaos/nodes/{index}/crash", self.crash)
        return app

    def recording_nodes(self) -> list[RecordingNode]:
        return cast(list[RecordingNode], self.nodes)

    async def list_runs(self, _request: web.Request) -> web.Response:
        runs = [record for node in self.recording_nodes() for record in node.runs]
        return web.json_response({"runs": runs, "now": time.time()})

    async def crash(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        if not 0 <= index < len(self.nodes):
            return web.json_response({"error": "no such node"}, status=400)
        cut = await self.recording_nodes()[index].crash()
        return web.json_response({"node": index, "runs_cut": cut})


def main(argv: list[str] | None = None) -> None:
    """The simulator's entry point, with recording nodes and the chaos control API."""
    # serve() builds its nodes and control API from these two names when it runs.
    server.SimulatedNode = RecordingNode  # type: ignore[attr-defined]
    server.Simulator = ChaosSimulator  # type: ignore[misc]
    server.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

"""``elastask demo``: the whole thing on one machine, with a live view, until Ctrl-C.

Starts the test bed (OpenSearch, proxy, Redis, simulated Kibana nodes), a worker, a beat, Flower
and the /metrics + /health exporter; seeds recurring and one-shot tasks and keeps adding one-shot
ones; shows per node in flight / capacity, pushes and failures, and overall due, overdue,
claimed per second and start drift. Stops everything it started on exit.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from elastask.config import parse_settings
from elastask.core import queries
from elastask.core.documents import new_task
from elastask.core.percentiles import percentile
from elastask.ops.health import health
from elastask.parts.store import build_client
from elastask.runtime import build_runtime
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import INDEX
from elastask_bed.testbed.fleet import CeleryFleet
from elastask_bed.testbed.process import free_port, port_open

RECURRING = (("5s", 8), ("10s", 8), ("30s", 4))
#: The live view's start drift covers the runs of the last minute.
DRIFT_WINDOW_S = 60.0


def seed_demo_tasks(es: Any, now: datetime, one_shot: int, prefix: str) -> int:
    """Recurring tasks (first call only, prefix "init") and one-shot tasks due over the next seconds."""
    operations: list[dict[str, Any]] = []
    docs = []
    if prefix == "init":
        for interval, count in RECURRING:
            docs += [
                new_task(f"demo-every-{interval}-{i}", "demo:recurring", now=now, interval=interval, state={"runs": 0})
                for i in range(count)
            ]
    docs += [
        new_task(f"demo-{prefix}-{i}", "demo:one-shot", now=now, run_at=now + timedelta(milliseconds=50 * i))
        for i in range(one_shot)
    ]
    for doc in docs:
        operations += [{"create": {"_index": INDEX, "_id": doc.id}}, doc.to_source()]
    es.bulk(operations=operations)
    return len(docs)


def run_demo(kibana_nodes: int, duration_s: float | None, as_json: bool, echo: Callable[[str], None]) -> None:
    """Run until Ctrl-C (or ``duration_s``), printing the live view every second."""
    # A closed terminal (SIGHUP) or a kill (SIGTERM) stops everything too, as Ctrl-C does: the demo's
    # servers and Celery processes must not outlive it.
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="elastask-demo-"))
    bed = Testbed(workdir / "testbed", kibana_nodes=kibana_nodes, run_ms="200-1500")
    echo(f"elastask demo: starting the test bed and {kibana_nodes} simulated Kibana nodes (logs in {workdir})")
    bed.start()
    fleet: CeleryFleet | None = None
    try:
        assert bed.simulator is not None
        env = {"ELASTASK_POLLING_INTERVAL": "500", "ELASTASK_RETRY_INTERVAL": "1000", "ELASTASK_RETRY_DELAY": "2s"}
        fleet = CeleryFleet(workdir / "elastask", bed, bed.simulator, env=env)
        fleet.worker("demo-worker", concurrency=4)
        fleet.beat("demo-beat")
        flower_port, metrics_port = free_port(), free_port()
        password = secrets.token_urlsafe(12)
        flower = fleet._celery(
            "flower", "flower", f"--port={flower_port}", "--address=127.0.0.1", f"--basic-auth=demo:{password}"
        )
        fleet.exporter(metrics_port, env={"ELASTASK_CONSOLE_USERNAME": "demo", "ELASTASK_CONSOLE_PASSWORD": password})
        flower.wait_until(lambda: port_open(flower_port), 60)
        echo(f"Console: http://127.0.0.1:{metrics_port}/console  (user demo, password {password})")
        echo(f"Flower:  http://127.0.0.1:{flower_port}  (user demo, password {password})")
        echo(f"Metrics: http://127.0.0.1:{metrics_port}/metrics   Health: http://127.0.0.1:{metrics_port}/health")
        settings = parse_settings({}, source="<demo>", env=fleet.env)
        rt = build_runtime(settings)
        es = build_client(settings.elasticsearch)  # the demo's own client: it writes documents as Kibana would
        seeded = seed_demo_tasks(es, datetime.now(UTC), 100, "init")
        started = last_seed = time.monotonic()
        previous_claimed, previous_at, batch = 0, started, 0
        screen = LiveScreen(redraw=sys.stdout.isatty() and not as_json)
        while duration_s is None or time.monotonic() - started < duration_s:
            time.sleep(1)
            now_mono = time.monotonic()
            if now_mono - last_seed >= 3:  # keep one-shot work coming
                batch += 1
                seeded += seed_demo_tasks(es, datetime.now(UTC), 15, f"b{batch}")
                last_seed = now_mono
            view = live_view(rt, bed, settings)
            rate = (view["claimed_total"] - previous_claimed) / max(1e-6, now_mono - previous_at)
            previous_claimed, previous_at = view["claimed_total"], now_mono
            view["claimed_per_s"] = round(rate, 1)
            view["seeded"] = seeded
            echo(json.dumps(view) if as_json else screen.frame(render(view)))
    except KeyboardInterrupt:
        echo("elastask demo: stopping")
    finally:
        if fleet is not None:
            fleet.stop()
        bed.stop()


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def live_view(rt: Any, bed: Testbed, settings: Any) -> dict[str, Any]:
    """One snapshot: per node from the ledger and the simulator, overall from the engine and /health."""
    now = datetime.now(UTC)
    report = health(rt, now)
    assert bed.simulator is not None
    sim = bed.simulator.stats(recent_s=DRIFT_WINDOW_S)["nodes"]
    nodes = []
    for node in bed.simulator.nodes:
        owner = node["owner_id"]
        nodes.append(
            {
                "owner_id": owner,
                "load_percent": report.get("load_percent", {}).get(owner),
                "in_flight_runs": sim[owner]["current"],
                "capacity": sim[owner]["capacity"],
                "pushed": sim[owner]["pushes"],
                "failures": sim[owner]["runs_failed"] + sim[owner]["answered_5xx"],
            }
        )
    due_body = queries.due_tasks(now, size=0, default_max_attempts=settings.max_attempts, max_attempts_by_type={})
    due = rt.store.count(due_body["query"], "counting due tasks")
    in_index = rt.store.count({"term": {"type": "task"}}, "counting task documents")
    return {
        "at": now.isoformat(timespec="seconds"),
        "nodes": nodes,
        "due": due,
        "tasks_in_index": in_index,
        "overdue": report.get("overdue"),
        "claimed_total": report.get("claimed_total", 0),
        # Start drift of the runs of the last minute, as the nodes saw it: the start-up ages out of it.
        "drift_ms": _drift_summary([d for node in sim.values() for d in node.get("recent_drifts", [])]),
        "status": report.get("status"),
    }


def _drift_summary(drifts: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(drifts, 0.5), "p99": percentile(drifts, 0.99), "count": len(drifts)}


def render(view: dict[str, Any]) -> list[str]:
    """The live view as the lines of a small table."""
    lines = [f"{view['at']}  status {view['status']}"]
    lines.append(f"{'Kibana node':<48} {'in flight':>10} {'pushed':>8} {'failures':>9}")
    for node in view["nodes"]:
        lines.append(
            f"{node['owner_id']:<48} {node['in_flight_runs']:>4}/{node['capacity']:<5} "
            f"{node['pushed']:>8} {node['failures']:>9}"
        )
    drift = view.get("drift_ms") or {}
    lines.append(
        f"due {view['due']}  overdue {_count(view['overdue'])}  claimed/s {view['claimed_per_s']}  "
        f"drift (last minute) p50 {_ms(drift.get('p50'))}  p99 {_ms(drift.get('p99'))}"
    )
    lines.append("(Ctrl-C stops everything)")
    return lines


class LiveScreen:
    """Draws each frame over the previous one on a terminal (the lines above it stay); plain lines otherwise.

    Lines are cut to the terminal's width: a wrapped line would throw off the count of lines to go back.
    """

    def __init__(self, *, redraw: bool) -> None:
        self.redraw = redraw
        self.height = 0

    def frame(self, lines: list[str]) -> str:
        """The text to print (with its trailing newline added by the caller) for this frame."""
        if not self.redraw:
            return "\n".join(lines)
        width = max(20, shutil.get_terminal_size().columns - 1)
        up = f"\r\x1b[{self.height}A" if self.height else ""  # back to the first line of the last frame
        self.height = len(lines)
        # Each line erases what is left of the old one; the last code erases old lines below.
        return up + "\n".join(f"{line[:width]}\x1b[K" for line in lines) + "\x1b[J"


def _ms(value: Any) -> str:
    """A duration for a person: '-' before the first run, never 'None'."""
    return "-" if value is None else f"{float(value):,.0f} ms"


def _count(value: Any) -> str:
    """A count for a person: '-' when it could not be read, never 'None'."""
    return "-" if value is None else str(value)

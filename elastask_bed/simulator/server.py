"""Many simulated Kibana nodes in one asyncio process, plus a control API.

Control API (on ``--control-port``):

    GET  /_sim/stats[?drifts]           per-node statistics and totals
    GET  /_sim/nodes                    the nodes: url, uuid, ownerId, mode
    POST /_sim/nodes/{i}/mode           {"mode": "ok|error|hang|slow|5xx|refuse", "delay_s": 10}
    POST /_sim/reset                    zero the statistics
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import signal
import ssl
import sys
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from elastask_bed.simulator.node import MODES, RunTimes, SharedState, SimulatedNode, node_uuid
from elastask_bed.simulator.pull import PullClaimer, fixed_or_kibana
from elastask_bed.simulator.stats import NodeStats

log = logging.getLogger(__name__)


class Simulator:
    """The nodes and the control API."""

    def __init__(self, nodes: list[SimulatedNode], shared: SharedState) -> None:
        self.nodes = nodes
        self.shared = shared

    def build_control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_sim/stats", self.stats)
        app.router.add_get("/_sim/nodes", self.list_nodes)
        app.router.add_post("/_sim/nodes/{index}/mode", self.set_mode)
        app.router.add_post("/_sim/reset", self.reset)
        return app

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"index": n.index, "url": n.url, "uuid": n.uuid, "owner_id": n.owner_id, "mode": n.mode} for n in self.nodes
        ]

    async def list_nodes(self, _request: web.Request) -> web.Response:
        return web.json_response({"nodes": self.describe()})

    async def stats(self, request: web.Request) -> web.Response:
        with_drifts = "drifts" in request.query
        recent_s = float(request.query["recent_s"]) if "recent_s" in request.query else None
        nodes = {n.owner_id: n.snapshot(with_drifts=with_drifts, recent_s=recent_s) for n in self.nodes}
        totals = {
            key: sum(int(data[key]) for data in nodes.values())
            for key in (
                "pushes",
                "runs_started",
                "runs_finished",
                "runs_failed",
                "rejected_over_capacity",
                "answered_5xx",
                "current",
                "overlapping_runs",
                "outcome_write_errors",
                "outcomes_written",
                "outcomes_pending",
                "claim_conflicts",
                "self_claimed",
                "claim_stale",
                "claim_missing",
            )
        }
        totals["max_concurrency"] = max((int(d["max_concurrency"]) for d in nodes.values()), default=0)
        return web.json_response({"nodes": nodes, "totals": totals})

    async def set_mode(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        body = await request.json()
        if not 0 <= index < len(self.nodes) or body.get("mode") not in MODES:
            return web.json_response({"error": f"expected a node index and a mode in {MODES}"}, status=400)
        delay = body.get("delay_s")
        await self.nodes[index].set_mode(body["mode"], float(delay) if delay is not None else None)
        return web.json_response(self.describe()[index])

    async def reset(self, _request: web.Request) -> web.Response:
        for node in self.nodes:
            current = node.stats.current
            node.stats = NodeStats(current=current, max_concurrency=current)
        return web.json_response({"reset": True})


def bound_port(site: web.TCPSite) -> int:
    """The port a site listens on (when it was started on port 0)."""
    server: Any = site._server
    return int(server.sockets[0].getsockname()[1])


def _authorization(basic_auth: str) -> str | None:
    if not basic_auth:
        return None
    return "Basic " + base64.b64encode(basic_auth.encode()).decode()


def _server_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _limit(item: str) -> tuple[str, tuple[str, int]]:
    """``TYPE=N`` or ``TYPE=N:GROUP`` -> (type, (group, N)); a type without a group is its own."""
    name, value = item.rsplit("=", 1)
    limit, _, group = value.partition(":")
    return name, (group or name, int(limit))


def _parse_by_type(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        name, _, spec = item.rpartition("=")
        if not name or not spec:
            raise SystemExit(f"--run-ms-by-type expects TYPE=MS, TYPE=LOW-HIGH or TYPE=logn:P50:P99, got {item!r}")
        result[name] = spec
    return result


async def serve(args: argparse.Namespace) -> None:
    """Start the nodes and the control API, print where they are, run until SIGTERM/SIGINT."""
    session = ClientSession(connector=TCPConnector(limit=512), timeout=ClientTimeout(total=60))
    shared = SharedState(
        engine_url=args.engine.rstrip("/"),
        index=args.index,
        session=session,
        run_times=RunTimes(default=args.run_ms, by_type=_parse_by_type(args.run_ms_by_type)),
        rng=random.Random(args.seed),
        authorization=_authorization(args.basic_auth),
        ssl_context=_server_context(args.tls_cert, args.tls_key),
        costs={name: int(n) for name, n in (item.rsplit("=", 1) for item in args.type_cost)},
        limits=dict(_limit(item) for item in args.type_concurrency),
    )
    ports = [int(p) for p in args.ports.split(",")] if args.ports else []
    if ports and len(ports) != args.nodes:
        raise SystemExit(f"--ports lists {len(ports)} ports for {args.nodes} nodes")
    nodes = []
    pull_ms, adaptive = fixed_or_kibana(args.pull) if args.pull else (500, True)
    for index in range(args.nodes):
        port = ports[index] if ports else 0
        claiming = bool(args.pull) or index < args.claiming_nodes
        nodes.append(
            SimulatedNode(
                index,
                port,
                shared,
                capacity=args.capacity,
                node_uuid=node_uuid(args.seed, index),
                host=args.host,
                ephemeral_capacity=args.ephemeral_capacity,
                claiming=claiming,
                poll_interval_ms=pull_ms if claiming else 0,
            )
        )
    for node in nodes:
        await node.start()
        if node.port == 0:  # learn the port the OS chose
            assert node.site is not None
            node.port = bound_port(node.site)
    pollers = []
    pods = [node.owner_id for node in nodes]
    task_types = [t.strip() for t in args.task_types.split(",") if t.strip()]
    for node in nodes:
        if not node.claiming:
            continue
        claimer = PullClaimer(
            node,
            poll_interval_ms=pull_ms,
            timeout_ms=args.timeout_ms,
            pods=pods,
            adaptive=adaptive,
            task_types=task_types,
            priorities={name: int(n) for name, n in (item.rsplit("=", 1) for item in args.type_priority)},
        )
        loop = asyncio.get_running_loop()
        pollers += [loop.create_task(claimer.loop()), loop.create_task(claimer.discovery_loop())]
    simulator = Simulator(nodes, shared)
    control = web.AppRunner(simulator.build_control_app(), access_log=None)
    await control.setup()
    site = web.TCPSite(control, args.host, args.control_port)
    await site.start()
    control_port = bound_port(site)
    print(json.dumps({"control": f"http://127.0.0.1:{control_port}", "nodes": simulator.describe()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for poller in pollers:
        poller.cancel()
    for node in nodes:
        await node.stop()
    await control.cleanup()
    await session.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastask sim", description="Serve simulated Kibana nodes.")
    parser.add_argument("--nodes", type=int, default=3, help="number of Kibana nodes (default 3)")
    parser.add_argument("--engine", required=True, help="search engine URL the nodes write outcomes to")
    parser.add_argument("--index", default=".kibana_task_manager")
    parser.add_argument("--capacity", type=int, default=10, help="ephemeral request capacity per node")
    parser.add_argument(
        "--run-ms", default="200", help="run time: MS, LOW-HIGH (uniform) or logn:P50:P99 (long-tailed)"
    )
    parser.add_argument(
        "--run-ms-by-type",
        action="append",
        default=[],
        metavar="TYPE=MS",
        help="run time of one task type (repeatable)",
    )
    parser.add_argument("--seed", default="0", help="seed of node uuids and run times")
    parser.add_argument("--ports", default="", help="comma-separated node ports (default: free ports)")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument(
        "--pull",
        default="",
        metavar="kibana|MS",
        help="pull mode: each node claims for itself like Kibana's mget claimer: 'kibana' as Kibana ships "
        "(500 ms, 3000 ms while load < 25 %%, backpressure), or a fixed poll interval in ms",
    )
    parser.add_argument(
        "--pull-interval-ms", type=int, default=0, help="the same as --pull MS (kept for older scripts)"
    )
    parser.add_argument(
        "--task-types", default="", help="pull mode: the task types the nodes claim (Kibana's registered types)"
    )
    parser.add_argument("--timeout-ms", type=int, default=300_000, help="pull mode: task timeout (sets retryAt)")
    parser.add_argument(
        "--type-cost",
        action="append",
        default=[],
        metavar="TYPE=UNITS",
        help="a task type's cost in capacity units (Kibana's TaskCost: tiny 1, normal 2, large 4, "
        "extra-large 10); counted per node in the stats (max_units), and by the pull model (repeatable)",
    )
    parser.add_argument(
        "--type-concurrency",
        action="append",
        default=[],
        metavar="TYPE=N[:GROUP]",
        help="a task type's maxConcurrency per node, types naming one GROUP share it; runs at once per "
        "type or group are counted in the stats (max_by_type), and the pull model holds the limit (repeatable)",
    )
    parser.add_argument(
        "--type-priority",
        action="append",
        default=[],
        metavar="TYPE=N",
        help="pull mode: a task type's priority, as Kibana's task definitions give it (repeatable)",
    )
    parser.add_argument(
        "--claiming-nodes",
        type=int,
        default=0,
        help="push mode: the first N nodes leave task claiming on and also pull on their own, as Kibana ships",
    )
    parser.add_argument(
        "--ephemeral-capacity",
        type=int,
        default=None,
        help="runs a push may start at once per node (default --capacity); beyond it pushes are accepted and dropped",
    )
    parser.add_argument(
        "--basic-auth",
        default="",
        metavar="USER:PASSWORD",
        help="require these credentials on /api requests (401 otherwise)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="... and this key")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m elastask.simulator`` and ``elastask sim``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.pull_interval_ms and not args.pull:
        args.pull = str(args.pull_interval_ms)
    asyncio.run(serve(args))

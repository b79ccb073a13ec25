"""How the dispatcher and what it depends on are doing, as the ``elastask`` command reports it: ``check``,
``status`` and ``serve`` (the exporter). Registered on the command group by cli.py; each is a thin wrapper
over ops/."""

from __future__ import annotations

import sys

import click

from elastask.core.capacity_estimate import describe
from elastask.entry.cli_context import Context, dumps, now


@click.command("check")
@click.pass_obj
def check_cmd(obj: Context) -> None:
    """Validate the config and reach the engine, the index, Redis and every Kibana node."""
    from elastask.ops import checks

    rt = obj.runtime()
    rows = checks.check(obj.settings, rt)
    width = max(len(r.name) for r in rows)
    for row in rows:
        mark = ("WARNING" if row.warning else "ok     ") if row.ok else "PROBLEM"
        line = f"{mark}  {row.name:<{width}}  {row.detail}"
        click.echo(line + (f"\n         {'':<{width}}  fix: {row.fix}" if row.fix and not row.ok else ""))
    sys.exit(0 if all(r.ok for r in rows) else 1)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=9808, show_default=True)
@click.pass_obj
def serve_cmd(obj: Context, host: str, port: int) -> None:
    """Serve the console (/console), Prometheus /metrics and the /health report over HTTP."""
    import logging

    from elastask.console.access import Access
    from elastask.console.app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    why = Access.from_settings(obj.settings).why_read_only()
    click.echo(f"elastask: console on http://{host}:{port}/console ({why or 'controls after logging in'})", err=True)
    click.echo(f"elastask: /metrics and /health on http://{host}:{port}", err=True)
    serve(obj.runtime(), host, port)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--health", "as_health", is_flag=True, help="the health report (as GET /health of elastask serve)")
@click.pass_obj
def status_cmd(obj: Context, as_json: bool, as_health: bool) -> None:
    """Per Kibana node: tasks in flight against capacity, rotation; task counts by status."""
    from elastask.ops import admin

    rt = obj.runtime()
    if as_health:
        from elastask.ops.health import health

        report = health(rt, now())
        click.echo(dumps(report))
        sys.exit({"OK": 0, "warn": 0}.get(report["status"], 1))
    data = admin.status(rt, now())
    if as_json:
        click.echo(dumps(data))
        return
    window = data["capacity_estimation"].get("window_seconds", 0)
    click.echo(
        f"{'node':<40} {'ownerId':<46} {'in flight':>10} {'load':>7} {f'runs/min ({window}s)':>16} "
        f"{'avg load':>9}  rotation"
    )
    for row in data["nodes"]:
        flight = f"{row['in_flight_units']}/{row['capacity_units']}"
        rotation = "in" if row["in_rotation"] else f"out ({row['failures']} failures)"
        average = "-" if row.get("average_load_percent") is None else f"{row['average_load_percent']}%"
        click.echo(
            f"{row['url']:<40} {row['owner_id']:<46} {flight:>10} {row['load_percent']:>6}% "
            f"{row.get('throughput_per_minute', 0):>16} {average:>9}  {rotation}"
        )
    for problem in data["unresolved"]:
        click.echo(f"unresolved: {problem}")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(data["tasks_by_status"].items())) or "none"
    click.echo(f"tasks by status: {counts}; due now: {data['due_now']}  (in flight counted in cost units)")
    for pause in data["paused"]:
        since = f" since {pause['since']}" if pause["since"] else ""
        click.echo(f"paused: {pause['pause']}{since} ({pause['source']})")
    if data.get("pauses_restored_at"):
        click.echo(f"warning: Redis lost the pauses; a worker wrote them back at {data['pauses_restored_at']}")
    for line in describe(data["capacity_estimation"]):
        click.echo(line)

"""The ``elastask`` command: configuration, checks, status, tasks and the exporter (the test bed plugs in its own).

Longer than most modules: one click command per documented command, each a thin wrapper over ops/.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from elastask.config import Settings, load_settings
from elastask.core.capacity_estimate import describe
from elastask.errors import ElastaskError


class Context:
    """What every subcommand shares: the --config path, settings loaded on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    def runtime(self) -> Any:
        """The clients of this command (engine, Redis, Kibana), from the settings."""
        from elastask.runtime import build_runtime

        return build_runtime(self.settings)


def fail(error: Exception) -> NoReturn:
    """Print one line naming what is wrong and exit non-zero."""
    click.echo(f"elastask: {error}", err=True)
    sys.exit(2)


class _Commands(click.Group):
    """The elastask command: any command's ElastaskError ends it with one line naming what is wrong (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ElastaskError as e:
            fail(e)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="elastask.yaml to read (default: $ELASTASK_CONFIG or ./elastask.yaml)",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """elastask: push Kibana Task Manager tasks to Kibana nodes, with Celery.

    Run the dispatcher with `celery -A elastask worker` and `celery -A elastask beat`.
    """
    if config_path:
        # celery and child processes read the same file.
        os.environ["ELASTASK_CONFIG"] = config_path
    ctx.obj = Context(config_path)


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.pass_obj
def config_show(obj: Context) -> None:
    """Print the effective settings (file + ELASTASK_* overrides), secrets masked."""
    settings = obj.settings
    click.echo(_describe(settings))
    click.echo(_describe_task_types(settings))


def _describe_task_types(settings: Settings) -> str:
    """Every task type elastask.yaml or the catalogue has a rule for: the effective rule, field by field,
    with where each value came from (elastask.yaml, the catalogue's Kibana file, or the defaults)."""
    catalogue = settings.catalogue
    lines = [
        f"task types (elastask.yaml over Kibana's catalogue, {len(catalogue.rules)} entries read from Kibana "
        f"{catalogue.kibana_version or '(version unknown)'}, over the defaults):"
    ]
    for name in settings.known_types():
        rule = settings.for_type(name)
        parts = [
            f"timeout {rule.timeout_ms // 1000}s [{rule.sources['timeout_ms']}]",
            f"max_attempts {rule.max_attempts} [{rule.sources['max_attempts']}]",
            f"cost {rule.cost} [{rule.sources['cost']}]",
        ]
        if rule.priority is not None:
            parts.append(f"priority {rule.priority} [{rule.sources['priority']}]")
        if rule.max_concurrency is not None:
            parts.append(
                f"max_concurrency {rule.max_concurrency} per node, group {rule.concurrency_group} "
                f"[{rule.sources['max_concurrency']}]"
            )
        lines.append(f"  {name}: " + "; ".join(parts))
    if catalogue.removed:
        lines.append(f"  removed by Kibana, never claimed: {', '.join(sorted(catalogue.removed))}")
    return "\n".join(lines)


def _describe(value: Any, indent: int = 0) -> str:
    from dataclasses import fields, is_dataclass

    pad = "  " * indent
    if is_dataclass(value) and not isinstance(value, type):
        lines = []
        for f in fields(value):
            if f.name.startswith("_") or f.name in ("catalogue", "task_types"):
                continue  # the task types are shown apart, with where each rule came from
            item = getattr(value, f.name)
            if is_dataclass(item) or (isinstance(item, tuple) and item and is_dataclass(item[0])):
                lines.append(f"{pad}{f.name}:")
                lines.append(_describe(item, indent + 1))
            else:
                lines.append(f"{pad}{f.name}: {item}")
        return "\n".join(lines)
    if isinstance(value, tuple):
        return "\n".join(f"{pad}- \n{_describe(v, indent + 1)}" for v in value)
    return f"{pad}{value}"


@cli.group()
def index() -> None:
    """The task index (.kibana_task_manager)."""


@index.command("create")
@click.pass_obj
def index_create(obj: Context) -> None:
    """Create the index and alias with Kibana's mapping, for dev and test clusters.

    In production Kibana creates and owns the index; do not run this there.
    """
    from elastask.parts.store import TaskStore, build_client

    settings = obj.settings
    client = build_client(settings.elasticsearch)
    created = TaskStore(client, settings.index).bootstrap()
    click.echo(f"{'created' if created else 'already exists:'} {settings.index}")


@index.command("check")
@click.pass_obj
def index_check(obj: Context) -> None:
    """Check that the index exists and indexes every field elastask queries."""
    from elastask.parts.store import TaskStore, build_client

    settings = obj.settings
    warnings = TaskStore(build_client(settings.elasticsearch), settings.index).check_index()
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{settings.index}: ok" if not warnings else f"{settings.index}: {len(warnings)} problem(s)")
    sys.exit(1 if warnings else 0)


def _runtime(obj: Context) -> Any:
    return obj.runtime()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@cli.command("check")
@click.pass_obj
def check_cmd(obj: Context) -> None:
    """Validate the config and reach the engine, the index, Redis and every Kibana node."""
    from elastask.ops import checks

    rt = _runtime(obj)
    rows = checks.check(obj.settings, rt)
    width = max(len(r.name) for r in rows)
    for row in rows:
        mark = ("WARNING" if row.warning else "ok     ") if row.ok else "PROBLEM"
        line = f"{mark}  {row.name:<{width}}  {row.detail}"
        click.echo(line + (f"\n         {'':<{width}}  fix: {row.fix}" if row.fix and not row.ok else ""))
    sys.exit(0 if all(r.ok for r in rows) else 1)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=9808, show_default=True)
@click.pass_obj
def serve_cmd(obj: Context, host: str, port: int) -> None:
    """Serve Prometheus /metrics and the /health report over HTTP."""
    import logging

    from elastask.ops.exporter import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    click.echo(f"elastask: /metrics and /health on http://{host}:{port}", err=True)
    serve(_runtime(obj), host, port)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--health", "as_health", is_flag=True, help="the health report (as GET /health of elastask serve)")
@click.pass_obj
def status_cmd(obj: Context, as_json: bool, as_health: bool) -> None:
    """Per Kibana node: tasks in flight against capacity, rotation; task counts by status."""
    from elastask.ops import admin

    rt = _runtime(obj)
    if as_health:
        from elastask.ops.health import health

        report = health(rt, _now())
        click.echo(dumps(report))
        sys.exit({"OK": 0, "warn": 0}.get(report["status"], 1))
    data = admin.status(rt, _now())
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


@cli.group()
def tasks() -> None:
    """Inspect and requeue task documents."""


@tasks.command("failed")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tasks_failed(obj: Context, as_json: bool) -> None:
    """List failed tasks with the reason elastask failed them."""
    from elastask.ops import admin

    rows = admin.failed_tasks(_runtime(obj))
    if as_json:
        click.echo(dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['id']}  {row['task_type']}  attempts={row['attempts']}  {row['reason'] or ''}")
    click.echo(f"{len(rows)} failed task(s)", err=True)


@tasks.command("show")
@click.argument("task_id")
@click.pass_obj
def tasks_show(obj: Context, task_id: str) -> None:
    """Print one task document (id with or without the task: prefix)."""
    from elastask.errors import DocumentMissingError
    from elastask.ops import admin

    try:
        click.echo(dumps(admin.show(_runtime(obj), task_id)))
    except DocumentMissingError:
        fail(ElastaskError(f"task {task_id!r} not found in {obj.settings.index}"))


@tasks.command("requeue")
@click.argument("task_id")
@click.option("--force", is_flag=True, help="requeue a running task before its lease ran out (it may run twice)")
@click.pass_obj
def tasks_requeue(obj: Context, task_id: str, force: bool) -> None:
    """Send a failed or stuck task back to idle now, attempts reset (a conditional write)."""
    from elastask.ops import admin

    doc = admin.requeue(_runtime(obj), task_id, _now(), force=force)
    click.echo(f"requeued {doc.id}: idle, attempts 0, due now")


@cli.command("schedule")
@click.option("--type", "task_type", required=True, help="taskType, e.g. actions:.server-log")
@click.option("--id", "task_id", default=None, help="task id (default: a new uuid)")
@click.option("--params", default="{}", help="params as a JSON object")
@click.option("--interval", default=None, help="recurring: 10s, 5m, 1h ...")
@click.option("--in", "delay", default=None, help="run after this interval instead of now (e.g. 30s)")
@click.pass_obj
def schedule_cmd(
    obj: Context, task_type: str, task_id: str | None, params: str, interval: str | None, delay: str | None
) -> None:
    """Create a task document as Kibana's taskManager.schedule would (testing and operations)."""
    import uuid
    from datetime import timedelta

    from elastask.core.intervals import parse_interval_ms
    from elastask.ops import admin

    try:
        decoded = json.loads(params)
    except ValueError as e:
        fail(ElastaskError(f"--params: not valid JSON ({e})"))
    if not isinstance(decoded, dict):
        fail(ElastaskError("--params: expected a JSON object"))
    now = _now()
    try:
        run_at = now + timedelta(milliseconds=parse_interval_ms(delay)) if delay else None
    except ValueError as e:
        fail(ElastaskError(f"--in: {e}"))
    doc = admin.schedule(
        _runtime(obj),
        task_type,
        now,
        task_id=task_id or str(uuid.uuid4()),
        params=decoded,
        interval=interval,
        run_at=run_at,
    )
    click.echo(doc.id)


def add_plugin_commands() -> None:
    """Commands other packages plug in (group ``elastask.commands``): the test bed's demo, bench, testbed, sim."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="elastask.commands"):
        try:
            command = entry.load()
        except ImportError as e:
            command = _missing_extra(entry.name, e)
        cli.add_command(command, entry.name)


def _missing_extra(name: str, error: ImportError) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        fail(ElastaskError(f"`elastask {name}` needs the test bed's packages ({error}): pip install 'elastask[bed]'"))

    return missing


def _add_controls() -> None:
    """The operator's controls (pause, resume, nodes drain/undrain) live in cli_controls.py."""
    from elastask.entry import cli_controls

    for command in (cli_controls.pause_cmd, cli_controls.resume_cmd, cli_controls.nodes):
        cli.add_command(command)


_add_controls()


def main() -> None:
    """Console entry point."""
    add_plugin_commands()
    cli(prog_name="elastask")


def dumps(value: Any) -> str:
    """JSON for --json outputs."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)

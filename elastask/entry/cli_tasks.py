"""Task documents, as the ``elastask`` command lists, shows, requeues and schedules them: ``tasks failed``,
``tasks show``, ``tasks requeue`` and ``schedule``. Registered on the command group by cli.py; each is a thin
wrapper over ops/admin.py."""

from __future__ import annotations

import json

import click

from elastask.entry.cli_context import Context, dumps, fail, now
from elastask.errors import ElastaskError


@click.group()
def tasks() -> None:
    """Inspect and requeue task documents."""


@tasks.command("failed")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tasks_failed(obj: Context, as_json: bool) -> None:
    """List failed tasks with the reason elastask failed them."""
    from elastask.ops import admin

    rows = admin.failed_tasks(obj.runtime())
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
        click.echo(dumps(admin.show(obj.runtime(), task_id)))
    except DocumentMissingError:
        fail(ElastaskError(f"task {task_id!r} not found in {obj.settings.index}"))


@tasks.command("requeue")
@click.argument("task_id")
@click.option("--force", is_flag=True, help="requeue a running task before its lease ran out (it may run twice)")
@click.pass_obj
def tasks_requeue(obj: Context, task_id: str, force: bool) -> None:
    """Send a failed or stuck task back to idle now, attempts reset (a conditional write)."""
    from elastask.ops import admin

    doc = admin.requeue(obj.runtime(), task_id, now(), force=force)
    click.echo(f"requeued {doc.id}: idle, attempts 0, due now")


@click.command("schedule")
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
    moment = now()
    try:
        run_at = moment + timedelta(milliseconds=parse_interval_ms(delay)) if delay else None
    except ValueError as e:
        fail(ElastaskError(f"--in: {e}"))
    doc = admin.schedule(
        obj.runtime(),
        task_type,
        moment,
        task_id=task_id or str(uuid.uuid4()),
        params=decoded,
        interval=interval,
        run_at=run_at,
    )
    click.echo(doc.id)

"""The configuration and the task index, as the ``elastask`` command shows and sets them up: ``config show``,
``index create`` and ``index check``. Registered on the command group by cli.py."""

from __future__ import annotations

import sys
from typing import Any

import click

from elastask.config import Settings
from elastask.entry.cli_context import Context


@click.group()
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


@click.group()
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

"""The operator's controls of the ``elastask`` command: pause, resume, and draining a Kibana node.

Registered on the command group by cli.py; each is a thin wrapper over ops/pausing.py and ops/draining.py.
"""

from __future__ import annotations

import sys

import click

from elastask.entry.cli_context import Context


@click.command("pause")
@click.option("--type", "types", multiple=True, help="a task type (prefix* too); repeat for more")
@click.option("--node", "nodes", multiple=True, help="a Kibana node: ownerId, URL or configured id; repeat for more")
@click.pass_obj
def pause_cmd(obj: Context, types: tuple[str, ...], nodes: tuple[str, ...]) -> None:
    """Stop claiming and pushing: everything, or these task types or nodes (for every worker, until resume).

    Running tasks finish; due tasks wait and keep their attempts.
    """
    from elastask.ops import pausing

    for line in pausing.lines(pausing.pause(obj.runtime(), pausing.entries(types, nodes))):
        click.echo(line)


@click.command("resume")
@click.option("--type", "types", multiple=True, help="a task type paused with --type")
@click.option("--node", "nodes", multiple=True, help="a node paused with --node")
@click.pass_obj
def resume_cmd(obj: Context, types: tuple[str, ...], nodes: tuple[str, ...]) -> None:
    """Resume what elastask pause paused: everything, or these task types or nodes."""
    from elastask.ops import pausing

    resumed, left = pausing.resume(obj.runtime(), pausing.entries(types, nodes))
    click.echo(f"resumed: {', '.join(resumed)}" if resumed else "resumed: nothing (it was not paused)")
    for line in pausing.lines(left):
        click.echo(line)


@click.group()
def nodes() -> None:
    """Take a Kibana node out of rotation for a restart (drain), and back (undrain)."""


@nodes.command("drain")
@click.argument("node")
@click.option("--wait", is_flag=True, help="return once the node has nothing in flight (its runs finished)")
@click.option("--timeout", default="10m", show_default=True, help="with --wait: give up after this long (exit 1)")
@click.pass_obj
def nodes_drain(obj: Context, node: str, wait: bool, timeout: str) -> None:
    """No new pushes to NODE (ownerId, URL or configured id) from any worker; running tasks finish."""
    from elastask.core.intervals import parse_interval_ms
    from elastask.ops import draining

    rt = obj.runtime()
    drained = draining.drain(rt, node)
    click.echo(f"draining {drained.url} ({drained.owner_id}): no new pushes")
    if not wait:
        return

    def progress(units: int, leases: int) -> None:
        click.echo(f"{drained.owner_id}: {leases} task(s) in flight ({units} units)")

    if not draining.wait_until_empty(rt, drained, parse_interval_ms(timeout) / 1000, progress):
        click.echo(f"elastask: {drained.owner_id} still has tasks in flight after {timeout}", err=True)
        sys.exit(1)
    click.echo(f"{drained.owner_id}: drained; restart it, then: elastask nodes undrain {node}")


@nodes.command("undrain")
@click.argument("node")
@click.pass_obj
def nodes_undrain(obj: Context, node: str) -> None:
    """NODE gets pushes again (what elastask nodes drain NODE stopped)."""
    from elastask.ops import draining

    resumed = draining.undrain(obj.runtime(), node)
    click.echo(f"{node}: back in rotation" if resumed else f"{node}: was not drained")

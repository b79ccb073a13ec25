"""The ``elastask`` command: its group and entry point; the test bed plugs in its own commands.

The commands live beside it, one module per concern: cli_config.py (config, index), cli_status.py (check,
status, serve), cli_tasks.py (tasks, schedule) and cli_controls.py (pause, resume, nodes); cli_context.py
holds what they share.
"""

from __future__ import annotations

import os
from typing import Any

import click

from elastask.entry import cli_config, cli_controls, cli_status, cli_tasks
from elastask.entry.cli_context import Context as Context
from elastask.entry.cli_context import dumps as dumps
from elastask.entry.cli_context import fail as fail
from elastask.errors import ElastaskError


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


for _command in (
    cli_config.config,
    cli_config.index,
    cli_status.check_cmd,
    cli_status.serve_cmd,
    cli_status.status_cmd,
    cli_tasks.tasks,
    cli_tasks.schedule_cmd,
    cli_controls.pause_cmd,
    cli_controls.resume_cmd,
    cli_controls.nodes,
):
    cli.add_command(_command)


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


def main() -> None:
    """Console entry point."""
    add_plugin_commands()
    cli(prog_name="elastask")

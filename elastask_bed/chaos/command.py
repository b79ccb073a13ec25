"""``elastask bench chaos``: the randomized fault run, as a subcommand of ``elastask bench``."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import click

from elastask.core.intervals import parse_interval_ms
from elastask.entry.cli import fail
from elastask.errors import ElastaskError


def seconds(_ctx: click.Context, param: click.Parameter, value: str) -> float:
    """An option's duration: ``30m``, ``90s``, ``1h`` or plain seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_interval_ms(value) / 1000
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


@click.command("chaos")
@click.option(
    "--plan",
    type=click.Choice(["random", "operators"]),
    default="random",
    show_default=True,
    help="random: faults from the seed; operators: a node restart without and with a drain, then a rolling "
    "restart of every worker and beat, under the same load (the duration is then the plan's)",
)
@click.option("--duration", callback=seconds, default="30m", show_default=True, help="the whole run, quiet included")
@click.option("--quiet", callback=seconds, default="60s", show_default=True, help="the fault-free phase at the end")
@click.option("--seed", type=int, default=None, help="the faults' and workload's seed (default: a random one, printed)")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option("--check-liveness", is_flag=True, help="also fail (exit 3) when a liveness figure is past its bound")
@click.option("--max-stall", callback=seconds, default="5s", show_default=True, help="liveness: longest stall")
@click.option("--max-drift-p99", callback=seconds, default="2s", show_default=True, help="liveness: drift p99")
@click.option("--max-heal", callback=seconds, default="6s", show_default=True, help="liveness: heal-to-push")
@click.option("--nodes", type=int, default=4, show_default=True, help="simulated Kibana nodes")
@click.option("--recurring", type=int, default=150, show_default=True, help="recurring tasks")
@click.option("--one-shots-per-s", type=float, default=1.5, show_default=True, help="one-shot tasks created per s")
@click.option("--skew/--no-skew", default=True, show_default=True, help="clock-skewed workers (libfaketime)")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="logs here (default: a temp dir)")
def chaos(
    plan: str,
    duration: float,
    quiet: float,
    seed: int | None,
    as_json: bool,
    check_liveness: bool,
    max_stall: float,
    max_drift_p99: float,
    max_heal: float,
    nodes: int,
    recurring: int,
    one_shots_per_s: float,
    skew: bool,
    workdir: str | None,
) -> None:
    """A randomized fault run: overlapping faults from a seed, then the invariants.

    Exit status: 0 all held, 1 a safety invariant broken, 3 a liveness bound missed (--check-liveness).
    """
    from elastask_bed.chaos.liveness import Thresholds
    from elastask_bed.chaos.runner import ChaosOptions, ChaosRun

    if plan == "operators":
        from elastask_bed.chaos.operators import FAULT_PHASE_S

        duration = FAULT_PHASE_S + quiet
    if duration - quiet < 30:
        fail(ElastaskError(f"--duration must leave at least 30 s of faults before the {quiet:g} s quiet phase"))
    options = ChaosOptions(
        seed=random.SystemRandom().randrange(2**31) if seed is None else seed,
        duration_s=duration,
        quiet_s=quiet,
        nodes=nodes,
        recurring=recurring,
        one_shots_per_s=one_shots_per_s,
        skew=skew,
        check_liveness=check_liveness,
        thresholds=Thresholds(max_stall_s=max_stall, max_drift_p99_s=max_drift_p99, max_heal_s=max_heal),
        workdir=Path(workdir) if workdir else None,
        plan=plan,
    )
    try:
        result = ChaosRun(options, lambda line: click.echo(line, err=True)).run()
    except ElastaskError as e:
        fail(e)
    if as_json:
        click.echo(result.to_json())
    else:
        for line in result.lines():
            click.echo(line)
    sys.exit(result.exit_status)


class BenchOrChaos(click.Command):
    """``elastask bench SCENARIO`` as before, and ``elastask bench chaos`` with options of its own."""

    def __init__(self, bench: click.Command, chaos: click.Command) -> None:
        super().__init__(
            bench.name,
            context_settings=bench.context_settings,
            callback=bench.callback,
            params=bench.params,
            help=(bench.help or "") + "\n\nelastask bench chaos [--duration 30m] [--seed N] [--json]: "
            "the randomized fault run (elastask bench chaos --help).",
            short_help=bench.short_help,
        )
        self.chaos = chaos

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        if args and args[0] == "chaos":
            return self.chaos.make_context(f"{info_name or 'bench'} chaos", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def with_chaos(bench: click.Command) -> click.Command:
    """``bench`` with the ``chaos`` subcommand."""
    return BenchOrChaos(bench, chaos)

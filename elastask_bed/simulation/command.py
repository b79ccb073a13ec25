"""``elastask simulate``: run the deterministic simulation over some seeds; non-zero exit on a violation."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click


@click.command("simulate")
@click.option("--seed", type=int, default=1, show_default=True, help="the first seed")
@click.option("--seeds", type=int, default=10, show_default=True, help="how many seeds, from --seed on")
@click.option("--steps", type=int, default=1500, show_default=True, help="steps with faults per seed (then a drain)")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="every seed's summary, written after each",
)
@click.option("--trace", is_flag=True, help="print the last steps of a seed that found a violation")
def simulate(seed: int, seeds: int, steps: int, json_path: str | None, trace: bool) -> None:
    """Run elastask's claim, dispatch and retry loops in a deterministic simulation with faults.

    Two claimers, two dispatchers and a retry loop on one stub engine and one fakeredis server (the
    real Lua scripts), three simulated Kibana nodes, a virtual clock; processes killed (also mid-call) and frozen,
    Redis flushed or failed over to a replica that missed the last writes, Redis replies lost after
    the command applied, nodes restarted, pushes refused, their answers lost or accepted and never
    run, engine writes that apply and answer 503, jobs sent and reported unsent, and other processes
    run between any engine, Redis or Kibana call and its answer. One line per seed; a seed that
    breaks an invariant prints it and exits 1 (--trace: the steps that led to it).
    """
    from elastask_bed.simulation.world import World

    logging.basicConfig(level=logging.CRITICAL)  # the loops' own warnings are the faults' echo
    summaries, failed, started = [], 0, time.monotonic()
    for s in range(seed, seed + seeds):
        world = World(s)
        violations = world.run(steps)
        summary = world.summary()
        summaries.append(summary)
        line = (
            f"seed {s}: {summary['steps']} steps, {summary['virtual_s']} s simulated, {summary['pushes']} runs, "
            f"faults {sum(summary['faults'].values())}, pauses {sum(summary['pauses'].values())}: "
        )
        if violations:
            failed += 1
            click.echo(line + f"VIOLATION at step {violations[0].step}: {violations[0].what}")
            if trace:
                upto = [t for t in world.trace if int(t.split(":", 1)[0]) <= violations[0].step]
                click.echo("\n".join(f"  {t}" for t in upto[-60:]))
        else:
            click.echo(line + "every invariant held")
        if json_path:  # after every seed: a long run stopped midway keeps what it ran
            Path(json_path).write_text(json.dumps({"command": " ".join(sys.argv), "seeds": summaries}, indent=2))
    total = sum(s["steps"] for s in summaries)
    click.echo(f"{seeds} seed(s), {total} steps in {time.monotonic() - started:.0f} s: {failed} with a violation")
    sys.exit(1 if failed else 0)

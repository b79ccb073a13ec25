"""The test bed's commands, plugged into ``elastask`` (entry points ``elastask.commands``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from elastask.entry.cli import fail
from elastask.errors import ElastaskError
from elastask_bed.chaos.command import with_chaos

if TYPE_CHECKING:
    from elastask_bed.bench.scenarios import Scenario
    from elastask_bed.testbed import Testbed


@click.command("demo")
@click.option("--kibana-nodes", type=int, default=3, show_default=True)
@click.option("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
@click.option("--json", "as_json", is_flag=True, help="print the live view as one JSON line per second")
def demo_cmd(kibana_nodes: int, duration: float | None, as_json: bool) -> None:
    """Run the test bed, a worker, a beat, Flower and the exporter with demo tasks and a live view."""
    from elastask_bed.demo import run_demo

    try:
        run_demo(kibana_nodes, duration, as_json, lambda line: click.echo(line))
    except ElastaskError as e:
        fail(e)


@click.group()
def testbed() -> None:
    """The local test bed: OpenSearch, compatibility proxy, Redis and simulated Kibana nodes."""


@testbed.command("prepare")
def testbed_prepare() -> None:
    """Check Java, Maven and redis-server, and fetch the search engine from Maven Central."""
    import shutil

    from elastask_bed.testbed.engine import find_java, resolve_classpath
    from elastask_bed.testbed.redis_server import REDIS_HINT

    try:
        java = find_java()
        classpath = resolve_classpath()
    except ElastaskError as e:
        fail(e)
    if shutil.which("redis-server") is None:
        fail(ElastaskError(f"redis-server not found: {REDIS_HINT}"))
    click.echo(
        f"elastask testbed: java {java}, engine classpath of {len(classpath.split(os.pathsep))} jars, "
        "redis-server found"
    )


@testbed.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--kibana-nodes", type=int, default=3, show_default=True, help="simulated Kibana nodes")
@click.option("--run-ms", default="200", show_default=True, help="simulated run time: MS or LOW-HIGH")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="keep data and logs here")
@click.option(
    "--tls", is_flag=True, help="TLS and authentication everywhere: a throwaway CA, HTTPS proxy and nodes, Redis on TLS"
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def testbed_run(kibana_nodes: int, run_ms: str, workdir: str | None, tls: bool, command: tuple[str, ...]) -> None:
    """Start the test bed, run COMMAND with ELASTASK_* pointing at it, stop everything.

    Exits with COMMAND's status. Example: elastask testbed run -- celery -A elastask worker
    """
    from pathlib import Path

    from elastask_bed.testbed import Testbed

    bed = Testbed(Path(workdir) if workdir else None, kibana_nodes=kibana_nodes, run_ms=run_ms, tls=tls)
    click.echo(
        f"elastask testbed: starting the search engine, proxy, Redis and {kibana_nodes} simulated Kibana node(s)...",
        err=True,
    )
    try:
        bed.start()
    except ElastaskError as e:
        fail(e)
    try:
        env = {**os.environ, **bed.env()}
        for key, value in bed.env().items():
            shown = "********" if "PASSWORD" in key or "API_KEY" in key else re.sub(r"//:[^@]*@", "//:********@", value)
            click.echo(f"elastask testbed: {key}={shown}", err=True)
        try:
            status = subprocess.call(list(command), env=env)
        except FileNotFoundError:
            click.echo(f"elastask testbed: command not found: {command[0]}", err=True)
            status = 127
        except KeyboardInterrupt:
            status = 130
    finally:
        bed.stop()
    sys.exit(status)


@click.command("bench")
@click.argument("scenario", type=click.Choice(["backlog", "burst", "steady", "idle", "scale", "mix", "fleet", "all"]))
@click.option("--mode", type=click.Choice(["push", "pull", "both"]), default="both", show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="write every run as JSON here (default bench-results/<scenario>.json)",
)
@click.option(
    "--chart", "chart_path", type=click.Path(dir_okay=False), default=None, help="PNG chart (default next to the JSON)"
)
@click.option("--nodes", type=int, default=None, help="simulated Kibana nodes")
@click.option(
    "--sizes",
    default=None,
    help="fleet: the fleet sizes to run, comma-separated (default 10,30,50 nodes of capacity 10)",
)
@click.option("--tasks", type=int, default=None, help="one-shot tasks (backlog, scale) or recurring tasks (steady)")
@click.option("--docs", type=int, default=None, help="scale: task documents in the index in all")
@click.option("--run-ms", type=int, default=None, help="run time of every task")
@click.option("--interval", default=None, help="steady: the recurring tasks' interval (e.g. 5s)")
@click.option("--duration", type=float, default=None, help="steady and idle: seconds to measure")
@click.option(
    "--push-interval", type=int, default=None, help="elastask's polling_interval (ms; default: the shipped default)"
)
@click.option(
    "--pull-intervals",
    default="kibana",
    show_default=True,
    help="Kibana pull modes to run: 'kibana' (as shipped: 500 ms, 3000 ms while load < 25 %, backpressure) "
    "and/or fixed poll intervals in ms, comma-separated",
)
@click.option("--workers", type=int, default=1, show_default=True, help="celery workers in push mode")
@click.option(
    "--concurrency", type=int, default=None, help="processes per worker (default: none given, as users run a worker)"
)
@click.option(
    "--engine-latency-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="every engine request through the proxy waits this long while tasks are due, in both modes "
    "(a real Elasticsearch is a network hop away; not in idle)",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the push workers of the measured runs write CPU profiles of every thread here (several times slower; "
    "read them with python -m elastask_bed.bench.profiling.report DIR)",
)
@click.option(
    "--warm-up/--no-warm-up",
    default=True,
    show_default=True,
    help="first run a small backlog in each mode, unmeasured, until the engine's JIT compiler is quiet",
)
def bench(
    scenario: str,
    mode: str,
    json_path: str | None,
    chart_path: str | None,
    nodes: int | None,
    sizes: str | None,
    tasks: int | None,
    docs: int | None,
    run_ms: int | None,
    interval: str | None,
    duration: float | None,
    push_interval: int | None,
    pull_intervals: str,
    workers: int,
    concurrency: int | None,
    engine_latency_ms: int,
    profile_dir: Path | None,
    warm_up: bool,
) -> None:
    """Benchmark push (elastask) against Kibana's pull model, side by side on one test bed."""
    import shlex
    import tempfile

    from elastask_bed.bench import report, timeline
    from elastask_bed.bench.runner import run_idle
    from elastask_bed.bench.scenarios import FLEET_SIZES, IDLE_FLEETS, SCENARIOS, fleet
    from elastask_bed.testbed import Testbed

    modes = (["push"] if mode in ("push", "both") else []) + (
        [f"pull-{ms.strip()}" for ms in pull_intervals.split(",") if ms.strip()] if mode in ("pull", "both") else []
    )
    names = ["backlog", "burst", "steady", "idle", "scale", "mix"] if scenario == "all" else [scenario]
    out = Path(json_path or f"bench-results/{scenario}.json")
    command = "elastask bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    workdir = Path(tempfile.mkdtemp(prefix="elastask-bench-"))
    bar_state: dict[str, float] = {}

    interactive = sys.stderr.isatty()

    def progress(done: int, total: int, label: str) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {label:<40}"
        if interactive:
            click.echo(f"\r  {bar}", nl=False, err=True)
        elif time.monotonic() - bar_state.get("last_line", 0.0) >= 10:  # a log file: a line every 10 s
            click.echo(f"  {bar}", err=True)
            bar_state["last_line"] = time.monotonic()

    results: list[dict[str, Any]] = []
    bed = Testbed(workdir / "testbed", kibana_nodes=0, engine_heap_mb=1024)

    def run_modes(scenario: Scenario) -> list[dict[str, Any]]:
        """One scenario in every mode, with this invocation's options."""
        options = (push_interval, workers, concurrency, engine_latency_ms, progress, profile_dir)
        return _run_modes(bed, scenario, modes, workdir, *options)

    click.echo("elastask bench: starting the test bed...", err=True)
    try:
        bed.start()
        if warm_up and names != ["idle"]:
            _warm_up(bed, modes, workdir, workers, concurrency)
        for name in names:
            if name == "fleet":
                fleet_sizes = tuple(int(n) for n in sizes.split(",")) if sizes else FLEET_SIZES
                for sized_run in fleet(fleet_sizes, tasks=tasks, run_ms=run_ms, duration_s=duration):
                    results += run_modes(sized_run)
                continue
            base = SCENARIOS[name]
            if name == "idle":
                click.echo(f"{name}: {base.description}", err=True)
                fleets = (nodes,) if nodes else IDLE_FLEETS
                results += run_idle(bed, fleets, modes, workdir, duration or base.duration_s, push_interval, progress)
                click.echo("", err=True)
                continue
            sized = base.sized(nodes=nodes, run_ms=run_ms, duration_s=duration, interval=interval)
            if tasks is not None:
                sized = sized.sized(**({"recurring_tasks": tasks} if name == "steady" else {"one_shot_tasks": tasks}))
            if docs is not None and name == "scale":
                sized = sized.sized(idle_docs=max(0, docs - sized.one_shot_tasks))
            results += run_modes(sized)
    except ElastaskError as e:
        fail(e)
    finally:
        bed.stop()
    report.write_json(out, command, results)
    drawn = report.chart(Path(chart_path) if chart_path else out.with_suffix(".png"), results)
    timeline_path = out.with_name(out.stem + "-timeline.png")
    timelines = timeline.chart(timeline_path, results)
    table = report.markdown_table(results)
    out.with_suffix(".md").write_text(table)
    click.echo(table)
    chart_note = f", chart: {chart_path or out.with_suffix('.png')}" if drawn else ""
    chart_note += f", over time: {timeline_path}" if timelines else ""
    click.echo(f"results: {out}, table: {out.with_suffix('.md')}{chart_note}", err=True)


#: ``elastask bench chaos``: the randomized fault run (elastask_bed/chaos/), beside the scenarios.
bench = with_chaos(bench)


def _run_modes(
    bed: Testbed,
    scenario: Scenario,
    modes: list[str],
    workdir: Path,
    push_interval: int | None,
    workers: int,
    concurrency: int | None,
    engine_latency_ms: int,
    progress: Callable[[int, int, str], None],
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One scenario in every mode, side by side on the same bed."""
    from elastask_bed.bench.runner import BenchRun

    click.echo(f"{scenario.name}: {scenario.description}", err=True)
    results = []
    for run_mode in modes:
        run = BenchRun(
            bed,
            scenario,
            run_mode,
            workdir,
            push_interval_ms=push_interval,
            workers=workers,
            concurrency=concurrency,
            engine_latency_ms=engine_latency_ms,
            progress=progress,
            profile_dir=profile_dir / f"{scenario.name}-{scenario.nodes}" if profile_dir is not None else None,
        )
        results.append(run.run())
        click.echo("", err=True)
    return results


def _warm_up(bed: Testbed, modes: list[str], workdir: Path, workers: int, concurrency: int | None) -> None:
    """Rounds of a backlog in each mode, unmeasured, until the engine's JIT compiler is quiet (bench/warmup.py)."""
    from elastask_bed.bench.runner import BenchRun
    from elastask_bed.bench.scenarios import SCENARIOS
    from elastask_bed.bench.warmup import wait_for_quiet_compiler, warm_until_quiet

    pid = bed.engine.process.pid if bed.engine.process is not None else None
    if pid is None:
        return
    click.echo("elastask bench: warming the engine up (backlogs in each mode, not measured)...", err=True)
    warm = SCENARIOS["backlog"].sized(nodes=10, one_shot_tasks=6000, run_ms=100)

    def one_round() -> None:
        for mode in modes:
            BenchRun(bed, warm, mode, workdir / "warm-up", workers=workers, concurrency=concurrency).run()

    shares = warm_until_quiet(one_round, pid)
    _waited, share = wait_for_quiet_compiler(pid)
    rounds = ", ".join(f"{s:.0%}" for s in shares)
    click.echo(f"elastask bench: engine JIT compiler per warm-up round {rounds} of a core; then {share:.0%}", err=True)


@click.command("sim", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim(args: tuple[str, ...]) -> None:
    """Serve simulated Kibana nodes (see `elastask sim --help`)."""
    from elastask_bed.simulator.server import main as sim_main

    sim_main(list(args))

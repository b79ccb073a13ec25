"""Benchmark output: JSON, a Markdown table and a PNG chart of push against pull. Only measured numbers."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(path: Path, command: str, results: Sequence[dict[str, Any]]) -> None:
    """One JSON file: the command, the machine and every run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "machine": machine(), "runs": list(results)}, indent=2))


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}" if abs(value) >= 10 else f"{value:.2f}{suffix}"
    return f"{value}{suffix}"


def _elapsed(r: dict[str, Any]) -> str:
    """The run's time; a cold start's is its first run's start to its last run's end, after the start-up."""
    if r.get("first_run_after_start_s") is None:
        return f"{_fmt(r.get('elapsed_s'))} s"
    after = f"first run {_fmt(r['first_run_after_start_s'])} s after start"
    if r.get("first_run_after_ready_s") is not None and r["mode"] == "push":
        after += f", {_fmt(r['first_run_after_ready_s'])} s after the worker was ready"
    return f"{_fmt(r.get('burst_s'))} s ({after})"


def _bed_cpu(per_task: dict[str, float]) -> str:
    """Every part's CPU per task, and the simulated nodes' and the engine's of it."""
    if not per_task:
        return "-"
    return f"{_fmt(per_task.get('all'))} ({_fmt(per_task.get('simulator'))} / {_fmt(per_task.get('engine'))})"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """A table of every run, side by side."""
    head = (
        "| scenario | mode | nodes | claim interval | completed | elapsed | utilisation | drift p50 / p95 / p99 / max "
        "| claim cycle p50 / p99 | busy cycle p50 / p99 | outcome write p50 / p99 | refill p50 / p99 | engine ops/s "
        "| engine ops/task | CPU ms/task | bed CPU ms/task: all (nodes / engine) | machine busy "
        "| cap viol. | overlaps | lost | early | workers | claim path busy |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        latency = r.get("engine_latency_ms")
        drift = r.get("drift_ms") or {}
        cycle = r.get("claim_cycle_ms") or {}
        busy = r.get("busy_claim_cycle_ms") or {}
        refill = r.get("refill_ms") or {}
        writes = r.get("outcome_write_ms") or {}
        engine = r.get("engine", {})
        util = r.get("utilisation")
        rows.append(
            "| {scenario} | {mode} | {nodes} | {interval} | {completed} | {elapsed} | {util} | {drift} | {cycle} "
            "| {busy} | {writes} | {refill} | {ops_s} | {ops_task} | {cpu} | {bed_cpu} | {machine} "
            "| {viol} | {overlaps} | {lost} | {early} | {workers} | {share} |".format(
                scenario=r["scenario"] + (f" (+{latency} ms engine)" if latency else ""),
                mode=r["mode"],
                nodes=r["nodes"],
                interval=r.get("claim_interval") or f"{r.get('claim_interval_ms', '-')} ms",
                completed=_fmt(r.get("completed")),
                elapsed=_elapsed(r),
                util="-" if util is None else f"{util * 100:.1f} %",
                drift=" / ".join(_fmt(drift.get(k)) for k in ("p50", "p95", "p99", "max")) + " ms" if drift else "-",
                cycle=" / ".join(_fmt(cycle.get(k)) for k in ("p50", "p99")) + " ms" if cycle else "-",
                ops_s=_fmt(engine.get("operations_per_s")),
                ops_task=_fmt(engine.get("operations_per_task")),
                busy=" / ".join(_fmt(busy.get(k)) for k in ("p50", "p99")) + " ms" if busy.get("count") else "-",
                refill=" / ".join(_fmt(refill.get(k)) for k in ("p50", "p99")) + " ms" if refill.get("count") else "-",
                writes=" / ".join(_fmt(writes.get(k)) for k in ("p50", "p99")) + " ms" if writes.get("count") else "-",
                cpu=_fmt(r.get("dispatcher_cpu_ms_per_task")),
                bed_cpu=_bed_cpu(r.get("cpu_ms_per_task") or {}),
                machine="-" if r.get("machine_busy_share") is None else f"{r['machine_busy_share'] * 100:.0f} %",
                viol=r.get("cap_violations", "-"),
                overlaps=r.get("overlapping_runs", "-"),
                lost=r.get("lost", "-"),
                early=r.get("early_starts", "-"),
                workers=r.get("workers") or "-",
                share="-" if r.get("claim_path_share") is None else f"{r['claim_path_share'] * 100:.0f} %",
            )
        )
    return head + "\n".join(rows) + "\n"


def chart(path: Path, results: Sequence[dict[str, Any]]) -> bool:
    """A PNG with one panel per measure that has data; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("utilisation of the ceiling (%)", lambda r: (r.get("utilisation") or 0) * 100, lambda r: r.get("utilisation")),
        (
            "start drift p99 (ms)",
            lambda r: (r.get("drift_ms") or {}).get("p99") or 0,
            lambda r: (r.get("drift_ms") or {}).get("p99"),
        ),
        (
            "engine operations per second",
            lambda r: r["engine"]["operations_per_s"] or 0,
            lambda r: r.get("engine", {}).get("operations_per_s"),
        ),
        (
            "engine operations per completed task",
            lambda r: r["engine"].get("operations_per_task") or 0,
            lambda r: r.get("engine", {}).get("operations_per_task"),
        ),
    ]
    used = [(title, get) for title, get, has in panels if any(has(r) is not None for r in results)]
    if not used:
        return False
    fig, axes = plt.subplots(len(used), 1, figsize=(10, 3.2 * len(used)), squeeze=False)
    labels = [f"{r['scenario']}\n{r['nodes']} nodes\n{r['mode']}" for r in results]
    colours = ["#2b7bba" if r["mode"] == "push" else "#d95f02" for r in results]
    for axis, (title, get) in zip(axes[:, 0], used, strict=True):
        values = [get(r) for r in results]
        axis.bar(range(len(results)), values, color=colours)
        axis.set_title(title)
        axis.set_xticks(range(len(results)), labels, fontsize=7)
    fig.suptitle("elastask push (blue) vs Kibana pull model (orange), measured side by side")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

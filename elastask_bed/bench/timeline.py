"""Charts over time of benchmark runs: throughput, in flight per node, and the start-drift CDF.

The bar charts (report.py) compare one figure per run; these show how a run went: how fast runs
started second by second, how full each node was, and the whole distribution of start drift of
every mode of a scenario on one axis. The series are computed here (pure), drawn with matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Span = Sequence[float]  # (start, end) in seconds from the measured start


def runs_started_per_s(spans: Sequence[Span], bucket_s: float = 1.0) -> tuple[list[float], list[float]]:
    """(bucket start times, runs started per second in each bucket) over every node's spans."""
    if not spans:
        return [], []
    last = max(start for start, _ in spans)
    buckets = [0] * (int(max(0.0, last) // bucket_s) + 1)
    for start, _ in spans:
        buckets[int(max(0.0, start) // bucket_s)] += 1
    return [i * bucket_s for i in range(len(buckets))], [count / bucket_s for count in buckets]


def in_flight(spans: Sequence[Span]) -> tuple[list[float], list[int]]:
    """The runs in flight on one node as a step series: (times, count from each time on)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    times: list[float] = []
    counts: list[int] = []
    current = 0
    for at, change in events:
        current += change
        if times and times[-1] == at:
            counts[-1] = current
        else:
            times.append(at)
            counts.append(current)
    return times, counts


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """(sorted values, the share of values at or below each)."""
    ordered = sorted(values)
    return ordered, [(i + 1) / len(ordered) for i in range(len(ordered))]


def chart(path: Path, results: Sequence[dict[str, Any]]) -> bool:
    """One row per run (throughput over time, in flight per node), then one drift CDF per scenario with
    every mode on it. False when matplotlib is missing or no run has a timeline."""
    runs = [r for r in results if any(r.get("timeline", {}).values())]
    if not runs:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = sorted({r["scenario"] for r in runs})
    rows = len(runs) + len(scenarios)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2.8 * rows), squeeze=False)
    for row, r in enumerate(runs):
        label = f"{r['scenario']} / {r['mode']}"
        spans = [span for node in r["timeline"].values() for span in node]
        times, rates = runs_started_per_s(spans)
        throughput, filled = axes[row, 0], axes[row, 1]
        throughput.step(times, rates, where="post", color="#2b7bba" if r["mode"] == "push" else "#d95f02")
        throughput.axhline(r.get("ceiling_per_s") or 0, color="grey", linestyle=":", linewidth=1)
        throughput.set_title(f"{label}: runs started per second (dotted: the ceiling)", fontsize=9)
        for name, node_spans in sorted(r["timeline"].items()):
            steps, counts = in_flight(node_spans)
            filled.step(steps, counts, where="post", linewidth=0.8, label=name)
        filled.axhline(r.get("capacity") or 0, color="grey", linestyle=":", linewidth=1)
        filled.set_title(f"{label}: runs in flight per node (dotted: the capacity)", fontsize=9)
        for axis in (throughput, filled):
            axis.set_xlabel("s from the start", fontsize=8)
    for offset, scenario in enumerate(scenarios):
        axis = axes[len(runs) + offset, 0]
        for r in runs:
            drifts = r.get("drifts_ms") or []
            if r["scenario"] == scenario and drifts:
                xs, ys = cdf(drifts)
                axis.plot(xs, ys, label=r["mode"])
        axis.set_title(f"{scenario}: start drift, share of runs at or below (ms)", fontsize=9)
        axis.set_xscale("symlog")
        axis.legend(fontsize=8)
        axes[len(runs) + offset, 1].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

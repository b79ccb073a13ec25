"""A smoke-sized benchmark proves the harness works: the report's shape and the zero-violation invariants.

It never asserts a speed: timings on a shared machine are noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.slow]


def test_a_tiny_backlog_benchmark_runs_push_and_pull_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "backlog.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "elastask",
            "bench",
            "backlog",
            "--mode",
            "both",
            "--nodes",
            "2",
            "--tasks",
            "40",
            "--run-ms",
            "100",
            "--pull-intervals",
            "kibana,500",
            "--no-warm-up",  # the warm-up's rounds are unit-tested (test_warmup.py); this test checks the harness
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "ELASTASK_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"].startswith("elastask bench backlog")
    assert report["machine"]["cpus"]
    modes = [run["mode"] for run in report["runs"]]
    assert modes == ["push", "pull-kibana", "pull-500"]
    for run in report["runs"]:
        assert run["completed"] == 40 and run["completed_in_time"]
        assert run["cap_violations"] == 0 and run["overlapping_runs"] == 0 and run["lost"] == 0
        assert run["early_starts"] == 0  # never pushed (push) or claimed (pull) before runAt
        assert 0 < run["utilisation"] <= 1.5
        assert run["drift_ms"]["count"] == 40 and run["drift_ms"]["p50"] is not None
        assert run["engine"]["operations"] > 0 and run["engine"]["by_kind"]["delete"] == 40
        assert run["outcome_write_ms"]["count"] == 40  # every run's outcome, through Kibana's buffered store
        assert run["claim_cycle_ms"]["count"] > 0
        assert run["busy_claim_cycle_ms"]["count"] > 0  # cycles that claimed something, apart
    assert report["runs"][0]["dispatcher_cpu_ms_per_task"] > 0  # worker and beat CPU over completed tasks
    for run in report["runs"]:
        # Every part of the bed's CPU per task, and how busy the machine was: what limits the run.
        parts = run["cpu_ms_per_task"]
        assert parts["engine"] > 0 and parts["simulator"] > 0 and parts["redis"] >= 0
        assert ("dispatcher" in parts) == (run["mode"] == "push")
        assert parts["all"] == pytest.approx(sum(v for k, v in parts.items() if k != "all"), abs=0.05)
        assert 0 < run["machine_busy_share"] <= 1
    for mode in ("push", "pull-kibana", "pull-500"):
        assert f"| backlog | {mode} |" in result.stdout
    assert out.with_suffix(".md").read_text() in result.stdout  # the table is kept beside the JSON
    assert (tmp_path / "backlog.png").stat().st_size > 1000


def test_a_tiny_burst_benchmark_measures_the_start_up_and_the_burst_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    argv = ["bench", "burst", "--nodes", "2", "--tasks", "30", "--run-ms", "100", "--no-warm-up", "--json", str(out)]
    argv += ["--engine-latency-ms", "50"]  # the engine a network hop away, in both modes
    result = subprocess.run(
        [sys.executable, "-m", "elastask", *argv],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "ELASTASK_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [run["mode"] for run in report["runs"]] == ["push", "pull-kibana"]
    for run in report["runs"]:
        assert run["completed"] == 30 and run["completed_in_time"]
        assert run["cap_violations"] == 0 and run["overlapping_runs"] == 0 and run["lost"] == 0
        # Measured from the dispatcher's start: the first run comes after it, the burst after that.
        assert run["first_run_after_start_s"] > 0 and run["burst_s"] > 0
        assert run["throughput_per_s"] > 0
        assert sum(len(spans) for spans in run["timeline"].values()) == 30  # each run's start and end
        assert len(run["drifts_ms"]) == 30
        # The mode's engine requests waited in the proxy (its claims, and the outcome writes of both).
        assert run["engine_latency_ms"] == 50 and run["engine_requests_delayed"] > 0
        assert run["outcome_write_ms"]["min"] >= 50
    assert report["runs"][0]["dispatcher_cpu_ms_per_task"] is not None
    assert "| burst (+50 ms engine) | push |" in result.stdout
    assert "first run" in result.stdout and "after start" in result.stdout
    assert (tmp_path / "burst-timeline.png").stat().st_size > 1000  # throughput, in flight, drift CDF


def test_the_celery_hop_micro_benchmark_reports_its_cost_per_job() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "elastask_bed.bench.celery_costs", "40"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 1") and "ms" in line]
    assert [row[0].strip() for row in rows] == ["1", "10"]  # one queue, then one per node of ten
    for row in rows:
        publishing, worker, both = (float(cell.strip().removesuffix(" ms")) for cell in row[1:])
        assert publishing > 0 and worker > 0 and both == pytest.approx(publishing + worker, abs=0.02)


def test_a_tiny_fleet_benchmark_runs_its_backlog_and_steady_load_per_size_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "elastask", "bench", "fleet", "--sizes", "2", "--tasks", "40"),
            *("--run-ms", "100", "--duration", "5", "--no-warm-up", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "ELASTASK_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["scenario"], r["mode"]) for r in runs] == [
        ("fleet-backlog", "push"),
        ("fleet-backlog", "pull-kibana"),
        ("fleet-steady", "push"),
        ("fleet-steady", "pull-kibana"),
    ]
    for run in runs:
        assert run["cap_violations"] == 0 and run["overlapping_runs"] == 0 and run["lost"] == 0
        assert run["early_starts"] == 0 and run["nodes"] == 2
    assert runs[0]["completed"] == 40 and runs[1]["completed"] == 40
    assert runs[0]["workers"] == 1 and runs[0]["claim_path_share"] > 0  # how busy the one claim path was
    assert runs[1]["claim_path_share"] is None  # pull: every node claims for itself
    assert runs[2]["drift_ms"]["count"] > 0 and runs[3]["drift_ms"]["count"] > 0
    assert "| fleet-backlog | push |" in result.stdout and "| fleet-steady | pull-kibana |" in result.stdout

"""The README's demo command, driven for a few seconds: its live view agrees with the engine and the nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_demo_runs_and_its_live_view_adds_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "elastask", "demo", "--duration", "15", "--json"],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "ELASTASK_CONFIG": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert "Flower:  http://127.0.0.1:" in result.stdout and "password" in result.stdout
    views = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(views) >= 10
    last = views[-1]
    assert len(last["nodes"]) == 3
    pushed = sum(node["pushed"] for node in last["nodes"])
    assert pushed > 0 and last["claimed_total"] > 0
    # Every one-shot task gone from the index was run by a node; nothing appears from nowhere.
    assert last["tasks_in_index"] <= last["seeded"]
    assert last["seeded"] - last["tasks_in_index"] <= pushed
    # Pushes seen by the nodes and claims counted by elastask move together (jobs in flight aside).
    assert abs(pushed - last["claimed_total"]) <= 40
    assert all(node["in_flight_runs"] <= node["capacity"] for view in views for node in view["nodes"])
    assert last["status"] in ("OK", "warn") and last["drift_ms"]["p50"] is not None
    assert [v["claimed_total"] for v in views] == sorted(v["claimed_total"] for v in views)

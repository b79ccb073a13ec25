"""The README's demo command, driven for a few seconds: its live view agrees with the engine and the nodes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.harness import console_login

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.slow]

#: The live view's table header.
HEADER = re.compile(r"^Kibana node +in flight +pushed +failures", re.MULTILINE)


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


def test_on_a_terminal_the_live_view_redraws_in_place() -> None:
    # Given the demo on a real terminal (a tmux pane 160 x 40, its own tmux server and environment).
    tmux, marker = demo_in_tmux("live", "--kibana-nodes 2 --duration 40; sleep 120")
    try:
        screens: dict[str, str] = {}  # the view's timestamp -> the pane as shown then
        deadline = time.monotonic() + 200
        while len(screens) < 3 and time.monotonic() < deadline:
            pane = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            stamp = re.search(r"^(\S+)  status ", pane, re.MULTILINE)
            if stamp and "Ctrl-C stops everything" in pane:  # a whole frame
                screens[stamp.group(1)] = pane
            time.sleep(0.3)
        # Then: frame after frame, the pane shows one view, with the lines printed before it kept above it.
        assert len(screens) >= 3, f"fewer than 3 frames seen: {list(screens)}"
        for pane in screens.values():
            assert len(HEADER.findall(pane)) == 1, pane
            assert pane.index("Flower:  http://127.0.0.1:") < pane.index("in flight   pushed"), pane
            assert "None" not in pane, pane
        # And the console it prints lets a new user in with the printed password: the demo's nodes and
        # backlog on the page, a type paused and a node drained from it.
        printed = re.search(r"Console: (http://127\.0\.0\.1:\d+)/console  \(user demo, password (\S+)\)", pane)
        assert printed, pane
        try_the_console(printed.group(1), printed.group(2))
        # And the view was redrawn over itself, never scrolled: the pane's whole history holds one.
        history = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-"], capture_output=True, text=True).stdout
        assert len(HEADER.findall(history)) == 1, history[-3000:]
        # And Ctrl-C stops the demo and everything it started (servers, worker, beat, Flower, exporter).
        assert demo_processes(marker), "the marker does not reach the demo's processes"
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        wait_until_gone(marker, 90)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def try_the_console(base: str, password: str) -> None:
    """Log in to the demo's console as the demo prints it, and use two of its controls."""
    with requests.Session() as browser:
        login, token = console_login(browser, base, "demo", password)
        assert login.status_code == 302, login.text
        state = browser.get(base + "/console/api/state").json()
        assert state["controls"] and len(state["nodes"]) == 2 and state["backlog"] is not None, state
        headers = {"X-XSRFToken": token}
        paused = browser.post(
            base + "/console/api/action", json={"action": "pause", "target": "type:demo:one-shot"}, headers=headers
        )
        assert paused.json() == {"ok": True, "message": "paused type:demo:one-shot"}
        node = state["nodes"][0]["owner_id"]
        drained = browser.post(base + "/console/api/action", json={"action": "drain", "target": node}, headers=headers)
        assert drained.json()["ok"], drained.text
        state = browser.get(base + "/console/api/state").json()
        assert [row["drained"] for row in state["nodes"]] == [True, False], state["nodes"]
        assert {p["pause"] for p in state["pauses"]["paused"]} == {"type:demo:one-shot", f"node:{node}"}


def demo_in_tmux(name: str, demo_args: str) -> tuple[list[str], str]:
    """Start ``elastask demo DEMO_ARGS`` in a 160 x 40 pane of a tmux server of its own.

    Returns the tmux command prefix and the environment marker every process the demo starts inherits.
    """
    tmux = ["tmux", "-L", f"elastask-test-{name}-{os.getpid()}"]
    marker = f"ELASTASK_DEMO_TEST={uuid.uuid4()}"
    env = {**os.environ, "ELASTASK_CONFIG": "", "TERM": "xterm-256color", **dict([marker.split("=", 1)])}
    command = f"{shlex.quote(sys.executable)} -m elastask demo {demo_args}"
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "40", command], env=env, check=True)
    return tmux, marker


def demo_processes(marker: str) -> list[str]:
    """Processes (not the terminal's tmux, shell or sleep) whose environment holds ``marker``.

    Everything the demo starts inherits its environment, so this finds orphans too, whatever
    their command line.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if marker.encode() in environ.split(b"\0") and not comm.startswith(("tmux", "sleep", "sh", "bash")):
            found.append(f"{entry.name} {comm}")
    return found


def wait_until_gone(marker: str, timeout_s: float) -> None:
    """Wait until no process started by the demo is left."""
    deadline = time.monotonic() + timeout_s
    while left := demo_processes(marker):
        assert time.monotonic() < deadline, f"still running after the demo stopped: {left}"
        time.sleep(1)


def test_a_closed_terminal_stops_the_demo_and_everything_it_started() -> None:
    # Given the demo in a tmux pane; when the terminal goes away (tmux kills the pane: SIGHUP).
    tmux, marker = demo_in_tmux("hup", "--kibana-nodes 1 --duration 120")
    try:
        deadline = time.monotonic() + 200
        workdir = None
        while time.monotonic() < deadline:
            pane = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            found = re.search(r"logs in (\S+?)\)", pane)
            if found and HEADER.search(pane):
                workdir = found.group(1)
                break
            time.sleep(0.5)
        assert workdir, "the demo never showed its live view"
        assert demo_processes(marker), "the marker does not reach the demo's processes"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    # Then nothing it started is left running.
    wait_until_gone(marker, 90)

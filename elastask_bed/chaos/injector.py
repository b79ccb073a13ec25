"""Applies a planned fault to the test bed and heals it, recording its window (when it really began and ended).

The simulator it drives is the recording one (recording_sim.py), started as a process of its own.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elastask_bed.chaos.fleet import ChaosFleet
from elastask_bed.chaos.model import ENGINE, KILL, NODE, PAUSE, REDIS, RESTART, ROLL, SKEW, Fault, Window
from elastask_bed.testbed.bed import SimulatorProcess, Testbed, http_json


class RecordingSimulator(SimulatorProcess):
    """The simulator started as ``elastask_bed.chaos.recording_sim``: run records and node crashes."""

    def __init__(self, workdir: Path, engine_url: str, *, nodes: int, extra_args: list[str], seed: str) -> None:
        super().__init__(workdir, engine_url, nodes=nodes, extra_args=extra_args, seed=seed)
        self.argv[self.argv.index("elastask_bed.simulator")] = "elastask_bed.chaos.recording_sim"
        self.process.argv = list(self.argv)

    def runs(self) -> list[dict[str, Any]]:
        """Every run every node started so far."""
        return list(http_json("GET", f"{self.control_url}/_chaos/runs", timeout_s=120)["runs"])

    def crash(self, index: int) -> None:
        """Kill a node mid-run (port closed, runs cut off without outcome)."""
        http_json("POST", f"{self.control_url}/_chaos/nodes/{index}/crash", {})


class Injector:
    """Begins and ends faults on the bed, the simulator and the fleet; keeps the windows."""

    def __init__(
        self,
        bed: Testbed,
        simulator: RecordingSimulator,
        fleet: ChaosFleet,
        *,
        hang_s: float,
        say: Callable[[str], None],
    ) -> None:
        self.bed = bed
        self.simulator = simulator
        self.fleet = fleet
        self.hang_s = hang_s
        self.say = say
        self.windows: list[Window] = []
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.t0 = time.time()

    def launch(self, fault: Fault) -> None:
        """Run the fault in a thread of its own: begin now, heal after its duration."""
        thread = threading.Thread(target=self._run, args=(fault,), name=f"fault-{fault.describe()}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait(self, timeout_s: float = 120) -> None:
        """Until every fault launched so far has healed."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, fault: Fault) -> None:
        window = Window(fault.kind, fault.target, fault.detail, time.time())
        self.windows.append(window)
        self.say(f"+{window.start - self.t0:6.1f}s  begin {fault.describe()} ({fault.duration_s:.1f} s)")
        try:
            self.begin(fault)
        except Exception as e:  # an injection that failed is reported; its heal still runs
            self.errors.append(f"begin {fault.describe()}: {e}")
        # A restart's duration is the node's downtime, from when it went down (after its drain).
        began = time.time() if fault.kind == RESTART else window.start
        time.sleep(max(0.0, began + fault.duration_s - time.time()))
        try:
            self.end(fault)
        except Exception as e:
            self.errors.append(f"heal {fault.describe()}: {e}")
        window.end = time.time()
        self.say(f"+{window.end - self.t0:6.1f}s  healed {fault.describe()}")

    def begin(self, fault: Fault) -> None:
        """Inject the fault."""
        if fault.kind == KILL:
            self.fleet.kill(fault.target)
        elif fault.kind == PAUSE:
            self.fleet.signal(fault.target, signal.SIGSTOP)
        elif fault.kind == REDIS:
            assert self.bed.redis.process is not None
            self.bed.redis.process.kill()
        elif fault.kind == ENGINE:
            assert self.bed.proxy is not None
            name, _, value = fault.detail.partition(":")
            if name == "latency":
                self.bed.proxy.set_faults(latency_ms=int(value))
            elif name == "status":
                self.bed.proxy.set_faults(status=int(value))
            else:
                self.bed.proxy.set_faults(down=True)
        elif fault.kind == NODE:
            index = int(fault.target.removeprefix("node"))
            if fault.detail == "crash":
                self.simulator.crash(index)
            else:
                # A hung run ends without an outcome after hang_s, as Kibana cancels a run at its timeout.
                self.simulator.set_mode(index, fault.detail, delay_s=self.hang_s if fault.detail == "hang" else None)
        elif fault.kind == SKEW:
            self.fleet.start_role("skew", skew=fault.detail)
        elif fault.kind == RESTART:
            index = int(fault.target.removeprefix("node"))
            if fault.detail == "drained":
                self._elastask("nodes", "drain", self.simulator.urls[index], "--wait", "--timeout", "60s")
            self.simulator.crash(index)
        elif fault.kind == ROLL:
            for role in [r for r in self.fleet.roles if r.startswith("worker")] + sorted(
                r for r in self.fleet.roles if r.startswith("beat")
            ):
                self.say(f"+{time.time() - self.t0:6.1f}s  rolling restart: {role} (SIGTERM, then started again)")
                self.fleet.stop_role(role)
                self.fleet.start_role(role)

    def end(self, fault: Fault) -> None:
        """Heal the fault."""
        if fault.kind == KILL:
            self.fleet.start_role(fault.target)
        elif fault.kind == PAUSE:
            self.fleet.signal(fault.target, signal.SIGCONT)
        elif fault.kind == REDIS:
            self.bed.redis.start()  # the same port, an empty dataset
        elif fault.kind == ENGINE:
            assert self.bed.proxy is not None
            self.bed.proxy.set_faults()
        elif fault.kind == NODE:
            self.simulator.set_mode(int(fault.target.removeprefix("node")), "ok")
        elif fault.kind == SKEW:
            self.fleet.stop_role("skew")
        elif fault.kind == RESTART:
            index = int(fault.target.removeprefix("node"))
            self.simulator.set_mode(index, "ok")
            if fault.detail == "drained":
                self._elastask("nodes", "undrain", self.simulator.urls[index])

    def _elastask(self, *args: str) -> None:
        """Run an ``elastask`` command as an operator would, with the fleet's settings; fail on its exit."""
        done = subprocess.run(
            [sys.executable, "-m", "elastask", *args], env=self.fleet.env, capture_output=True, text=True, timeout=120
        )
        for line in done.stdout.splitlines()[-3:]:
            self.say(f"+{time.time() - self.t0:6.1f}s  elastask {args[0]} {args[1]}: {line}")
        if done.returncode != 0:
            raise RuntimeError(f"elastask {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-300:]}")

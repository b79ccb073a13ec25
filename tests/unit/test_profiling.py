"""The benchmark's CPU profiles (``elastask bench --profile``): a process with the hook writes one profile per
thread by CPU time, and the report reads them (a plain process stands in for a worker: the hook needs only
``worker`` in its arguments)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from elastask_bed.bench.profiling import profiling_env
from elastask_bed.bench.profiling.report import by_library, load

PROGRAM = """
import threading, time

def spin():
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        sum(range(1000))

def idle():
    time.sleep(0.5)

threads = [threading.Thread(target=spin, name="spinner"), threading.Thread(target=idle, name="sleeper")]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_a_profiled_process_writes_each_threads_cpu_and_the_report_reads_it(tmp_path: Path) -> None:
    env = {**os.environ, **profiling_env(tmp_path / "profiles")}
    subprocess.run([sys.executable, "-c", PROGRAM, "worker"], env=env, check=True, timeout=60)
    files = sorted(p.name.split("-", 3)[-1] for p in (tmp_path / "profiles").glob("main-*.prof"))
    assert files == ["main.prof", "thread-sleeper.prof", "thread-spinner.prof"]
    spinner = load(list((tmp_path / "profiles").glob("*spinner.prof")))
    sleeper = load(list((tmp_path / "profiles").glob("*sleeper.prof")))
    # CPU time, not wall time: the thread that slept 0.5 s cost next to nothing, the one that spun ~0.2 s.
    assert sum(by_library(spinner).values()) > 0.1
    assert sum(by_library(sleeper).values()) < 0.05
    report = subprocess.run(
        [sys.executable, "-m", "elastask_bed.bench.profiling.report", str(tmp_path / "profiles")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "== main: 1 process(es)" in report.stdout


def test_without_the_variable_nothing_is_profiled(tmp_path: Path) -> None:
    env = {**os.environ, **profiling_env(tmp_path / "profiles")}
    env.pop("ELASTASK_PROFILE_DIR")
    subprocess.run([sys.executable, "-c", "pass", "worker"], env=env, check=True, timeout=60)
    assert list((tmp_path / "profiles").glob("*.prof")) == []

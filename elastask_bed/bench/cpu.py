"""CPU time of a set of processes and all their descendants, from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of one process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds one process used so far (0.0 when it is gone)."""
    stat = _stat(pid)
    return stat[1] if stat is not None else 0.0


def tree_cpu_seconds(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds used so far by every live process under ``roots`` (the roots included), by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)], cpu[int(entry.name)] = stat
    wanted = set(roots)
    result = {}
    for pid in cpu:
        walk = pid
        while walk and walk not in wanted and walk in parents:
            walk = parents[walk] if parents[walk] != walk else 0
        if walk in wanted:
            result[pid] = cpu[pid]
    return result


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots (processes born in between count from zero)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, summed over its CPUs (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is in user)
    return (total - idle) / _TICKS, total / _TICKS


class CpuMeter:
    """CPU used by each part of the bed (a process tree each) and by the machine, between ``start`` and ``stop``.

    What limits a run shows here: a machine busy near 100 % is CPU-bound whatever the design; below it,
    the run waits on something (a round trip, a pacing, a queue).
    """

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = {name: pids for name, pids in parts.items() if pids}
        self._before: dict[str, dict[int, float]] = {}
        self._machine_before = (0.0, 0.0)
        self.seconds: dict[str, float] = {}
        #: Each part's CPU seconds by process (a worker's main process and its pool's, apart).
        self.by_process: dict[str, dict[int, float]] = {}
        self.machine_busy_share: float | None = None

    def start(self) -> None:
        self._before = {name: tree_cpu_seconds(pids) for name, pids in self.parts.items()}
        self._machine_before = machine_cpu_seconds()

    def stop(self) -> None:
        busy, total = machine_cpu_seconds()
        after = {name: tree_cpu_seconds(pids) for name, pids in self.parts.items()}
        self.seconds = {name: cpu_between(self._before.get(name, {}), now) for name, now in after.items()}
        self.by_process = {
            name: {pid: seconds - self._before.get(name, {}).get(pid, 0.0) for pid, seconds in now.items()}
            for name, now in after.items()
        }
        spent = total - self._machine_before[1]
        self.machine_busy_share = round((busy - self._machine_before[0]) / spent, 3) if spent > 0 else None

    def processes_ms_per_task(self, name: str, completed: int) -> list[tuple[str, float]]:
        """One part's CPU milliseconds per completed task by process, the busiest first: ("main", ms) for a
        process the part was started as (a worker's main process, the beat), ("child", ms) for one it forked
        (a worker's pool processes)."""
        if not completed:
            return []
        roots = set(self.parts.get(name, []))
        spent = [
            ("main" if pid in roots else "child", round(1000 * seconds / completed, 2))
            for pid, seconds in self.by_process.get(name, {}).items()
        ]
        return sorted(spent, key=lambda item: -item[1])

    def ms_per_task(self, completed: int) -> dict[str, float]:
        """Each part's CPU milliseconds per completed task (and their sum, ``all``)."""
        if not completed:
            return {}
        per_task = {name: round(1000 * seconds / completed, 2) for name, seconds in self.seconds.items()}
        per_task["all"] = round(sum(per_task.values()), 2)
        return per_task

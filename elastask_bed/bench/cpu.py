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

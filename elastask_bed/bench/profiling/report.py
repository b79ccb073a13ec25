"""What a benchmark's workers spent their CPU on, from the profiles ``elastask bench --profile DIR`` wrote.

``python -m elastask_bed.bench.profiling.report DIR [--top N]``: per process role (the worker's main
process, its pool children together), the CPU seconds by library (time in C functions counted to the
library that called them) and the elastask functions with the most CPU below them. A directory holds
the warm-up rounds' workers too; the measured run's are the last started (``--last``, default 1 worker).
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
from pathlib import Path

#: C functions that block (a lock, a queue, a socket, a pipe, a sleep): their time is waiting, left out. The
#: thread-time timer should make it ~0; in celery's processes it does not always (seen: a lock's acquire).
BLOCKING = (
    "acquire",
    "wait",
    "get' of '_queue",
    "select",
    "poll",
    "sleep",
    "recv",
    "read",
    "accept",
    "connect",
    "getaddrinfo",
    "settimeout",
    "sendall",
    "send'",
)


def _blocking(filename: str, name: str) -> bool:
    return filename.startswith("~") and any(word in name for word in BLOCKING)


def _library(filename: str) -> str:
    parts = filename.split("/")
    if filename.startswith("~"):
        return "C"
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "elastask" in parts:
        at = len(parts) - 1 - parts[::-1].index("elastask")
        return "elastask/" + (parts[at + 1] if at + 2 < len(parts) else "")
    return "stdlib/" + os.path.basename(filename)


def load(files: list[Path]) -> pstats.Stats:
    stats = pstats.Stats(str(files[0]))
    for path in files[1:]:
        stats.add(str(path))
    return stats


def by_library(stats: pstats.Stats) -> collections.Counter[str]:
    """CPU seconds per library; a C function's time goes to its callers' libraries, by calls."""
    spent: collections.Counter[str] = collections.Counter()
    for (filename, _line, name), (_cc, _nc, own, _cum, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if _blocking(filename, name):
            continue
        library = _library(filename)
        if library != "C" or not callers:
            spent[library] += own
            continue
        calls = sum(c[1] for c in callers.values()) or 1
        for (caller, _l, _n), c in callers.items():
            spent[_library(caller)] += own * c[1] / calls
    return spent


def top_functions(stats: pstats.Stats, count: int) -> list[tuple[float, int, str]]:
    """The elastask functions with the most CPU below them (cumulative seconds, calls, where); a function that
    waits (a thread's loop) counts its waiting too: read these beside the libraries."""
    rows = []
    for (filename, line, name), (_cc, calls, _own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/elastask/" in filename and "site-packages" not in filename:
            rows.append((cumulative, calls, f"{'/'.join(filename.split('/')[-2:])}:{line} {name}"))
    return sorted(rows, reverse=True)[:count]


def measured_files(files: list[Path], last: int) -> dict[str, list[Path]]:
    """The profiles of the last ``last`` workers: their main processes', and their pool children's (written
    as each child ends, so after the previous worker's main process wrote its own at exit; pids may wrap)."""
    written: dict[int, float] = {}
    for path in files:
        if path.name.startswith("main-"):
            pid = int(path.name.split("-")[1])
            written[pid] = max(written.get(pid, 0.0), path.stat().st_mtime)
    order = sorted(written, key=written.__getitem__)
    measured, before = set(order[-last:]), order[:-last]
    after = written[before[-1]] if before else 0.0
    return {
        "main": [p for p in files if p.name.startswith("main-") and int(p.name.split("-")[1]) in measured],
        "children": [p for p in files if p.name.startswith("child-") and p.stat().st_mtime > after],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--last", type=int, default=1, help="the last N workers started (the measured run's)")
    args = parser.parse_args()
    groups = measured_files(sorted(args.directory.glob("*.prof")), args.last)
    for role, chosen in groups.items():
        if not chosen:
            continue
        stats = load(chosen)
        spent = by_library(stats)
        total = sum(spent.values())
        print(f"== {role}: {len({p.name.split('-')[1] for p in chosen})} process(es), {total:.1f} s CPU (profiled)")
        for library, seconds in spent.most_common(args.top):
            print(f"  {seconds:8.2f} s {100 * seconds / total:5.1f} %  {library}")
        print("  -- elastask functions, CPU below them (s, calls):")
        for cumulative, calls, where in top_functions(stats, args.top):
            print(f"  {cumulative:8.2f} s {calls:8d}  {where}")


if __name__ == "__main__":
    main()
